"""`nerbatch annotate --engine ray`: the annotate stage on a Ray cluster, through Ray Data.

The driver (this process) does what the local engine does up front, with the same functions:
check the bundle, expand the inputs, take the output's lock, read or start its manifest. Ray Data
then runs

    input files ──▶ read (tasks) ──▶ tag (actor pool, one ONNX Runtime session per actor) ──▶ driver

and the driver writes what comes back, in input order, through the Committer (remote.py holds
what Ray and Spark share). Reading calls `readers.read_file` and tagging the bundle's `Tagger`,
so the fp32 rows are the local engine's (quantised variants scale each batch as a whole, and Ray
Data forms its own batches: their rows differ slightly, and the output is bound to the engine).
A part is named in the manifest only once it is on disk, `_SUCCESS` comes last, and an fp32
output started by one engine can be resumed by another: all record where the committed
documents end (input file and item in it) and start reading there.

Failures: Ray restarts an actor whose process dies and retries its batch (a few times, not
forever: a document that kills every actor must stop the run, not loop); a failure that outlives
those retries, or a crash of the driver, ends the run with the output resumable from its last
committed part, like the local engine.

Deliberately not used: Ray Data's `write_parquet` (its files are not committed together with our
manifest) and `max_errored_blocks` (it drops the documents of failed blocks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict

import pyarrow as pa

from .committer import Committer
from .errors import Interrupted, MissingExtraError, NerbatchError
from .plan import RunPlan
from .readers import ReadOptions
from .remote import (
    DOCUMENTS,
    consume,
    document_rows,
    errors_translated,
    file_specs,
    open_worker_tagger,
    tag_table,
    tagger_spec,
)
from .run import AnnotateConfig, StopFlag

log = logging.getLogger(__name__)

# Ray's own fault tolerance for the tagging actors: restart a dead actor, retry its batch.
ACTOR_RESTARTS = 3
BATCH_RETRIES = 3
# Documents per block out of a read task (fewer when they are long).
READ_BLOCK_DOCS = 512
READ_BLOCK_CHARS = 8_000_000


class RayEngine:
    """`annotate` on Ray: the same output, manifest and summary as the local engine. The plan
    (plan.py) is made on the driver; each actor opens its own tagger (and for `auto` chooses
    the runtime on its node)."""

    tags_here = False

    def __init__(self, config: AnnotateConfig):
        self.ray = _import_ray()  # before the bundle loads: a missing extra fails at once

    def stop_flag(self) -> StopFlag:
        return RayStopFlag()

    def run(self, plan: RunPlan, committer: Committer, stop: StopFlag) -> None:
        config = plan.config
        with _connected(self.ray, config.ray.address), _quiet_ray_data():
            stop.install()  # ray.init replaces the SIGTERM handler
            drop = plan.resume[2]
            workers = _workers(self.ray, config, config.gpus_per_worker)
            dataset = _pipeline(self.ray, plan, workers)
            with contextlib.closing(_tagged_batches(dataset)) as batches:
                consume(committer, batches, drop, stop)


class RayStopFlag(StopFlag):
    """The first SIGTERM / SIGINT stops after the batch that is on its way, which is committed;
    a second one stops at once (the driver may be waiting for a cluster that cannot place the
    actors)."""

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise Interrupted(
                f"stopped by a second {signal.Signals(signum).name}; run the same command again "
                "to resume from the last committed part"
            )
        super()._handle(signum, frame)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra: pandas, pyarrow, fsspec
    except ImportError as e:
        raise MissingExtraError("ray", "ray") from e
    return ray


@contextlib.contextmanager
def _connected(ray, address: str | None) -> Iterator[None]:
    """The Ray the caller started, or a connection (or a new local cluster) for this run only."""
    if ray.is_initialized():
        yield
        return
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it for good: restore it after
    extra = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **extra)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"connect to the Ray cluster at {address}" if address else "start or find Ray"
        raise NerbatchError(f"cannot {where}: {e}") from e
    try:
        yield
    finally:
        ray.shutdown()
        if main_thread:
            signal.signal(signal.SIGTERM, sigterm)


class _RayDataConsole(logging.Filter):
    """Ray Data's console lines during a run: warnings only (its full log stays in the Ray
    session's logs), and not the notice that its progress bars are off (ours are on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "Progress bars" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    handlers = [
        h
        for h in logging.getLogger("ray.data").handlers
        if not type(h).__name__.startswith("SessionFile")
    ]
    console = _RayDataConsole()
    for handler in handlers:
        handler.addFilter(console)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console)


def _workers(ray, config: AnnotateConfig, gpus: float) -> int:
    """--num-workers, or as many actors as the cluster's CPUs (and GPUs) fit now."""
    cpus = config.ray.cpus_per_worker
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 0) // cpus)
    if gpus:
        fit = min(fit, int(resources.get("GPU", 0) // gpus))
    workers = config.ray.num_workers or max(1, fit)
    if workers > fit:
        log.warning(
            "the Ray cluster has %g CPUs and %g GPUs: %d workers of %d CPUs and %g GPUs wait for "
            "more nodes (an autoscaling cluster adds them)",
            resources.get("CPU", 0),
            resources.get("GPU", 0),
            workers,
            cpus,
            gpus,
            extra={"event": "ray_resources"},
        )
    log.info(
        "annotating on Ray with %d workers (%d CPUs, %g GPUs each)",
        workers,
        cpus,
        gpus,
        extra={"event": "ray", "workers": workers},
    )
    return workers


def _pipeline(ray, plan: RunPlan, workers: int):
    """The Ray Data pipeline of the inputs left to do (`plan.resume`)."""
    config = plan.config
    gpus = config.gpus_per_worker
    todo = file_specs(plan)
    dataset = ray.data.from_items(todo).map_batches(
        read_documents,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"read": asdict(config.read), "cwd": os.getcwd()},
        # No CPU reserved: reading is light next to the model, and read tasks that need a CPU
        # wait forever once the actor pool holds every CPU (Ray Data does not see it).
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=min(workers, len(todo))),
    )
    gpu_args = {"num_gpus": gpus} if gpus else {}
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options such as max_restarts this way, and has no
        # other; its default (restart and retry forever) would loop on a batch that kills actors.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        dataset = dataset.map_batches(
            TaggerActor,
            batch_size=config.chunk_docs,
            batch_format="pyarrow",
            fn_constructor_kwargs={
                "spec": tagger_spec(plan, threads=config.ray.cpus_per_worker),
                "chunk_docs": config.chunk_docs,
                "chunk_chars": config.chunk_chars,
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=config.ray.cpus_per_worker,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=BATCH_RETRIES,
            **gpu_args,
        )
    dataset.context.execution_options.preserve_order = True  # the driver commits in input order
    # An actor that dies while it loads the model (a lost node, the OOM killer) is replaced a
    # few times too; Ray Data's default fails the run at the first such death.
    dataset.context.max_consecutive_actor_init_deaths = ACTOR_RESTARTS
    dataset.context.enable_progress_bars = False  # the driver shows its own
    return dataset


def _tagged_batches(dataset) -> Iterator[pa.Table]:
    """The pipeline's output in input order, with Ray's failures turned into our errors."""
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        yield from errors_translated(batches, _ray_error)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the execution when the driver stops early


def _ray_error(error: BaseException) -> NerbatchError:
    """Our own error raised in a worker (a bad bundle, an unusable input), or one line for a
    failure of Ray's. Ray wraps a worker's exception (`RayTaskError.cause`), and Ray Data wraps
    that again."""
    seen: set[int] = set()
    current: BaseException | None = error
    root = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        root = current
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            current = cause
        elif isinstance(current, NerbatchError):
            return current
        else:
            current = current.__cause__ or current.__context__
    message = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return NerbatchError(
        f"the Ray job failed: {type(root).__name__}: {message}; the output stays resumable from "
        "its last committed part (--debug shows the traceback)"
    )


# --- in the Ray workers --------------------------------------------------------------------------


def read_documents(files: pa.Table, read: dict, cwd: str) -> Iterator[pa.Table]:
    """Ray task: the documents and rejects of input files, as DOCUMENTS tables of bounded size."""
    options = ReadOptions(**read)
    rows: list[dict] = []
    chars = 0
    for spec in files.to_pylist():
        for row in document_rows(spec, options, cwd, f"Ray node {socket.gethostname()}"):
            rows.append(row)
            chars += len(row.get("text") or "")
            if len(rows) >= READ_BLOCK_DOCS or chars >= READ_BLOCK_CHARS:
                yield pa.Table.from_pylist(rows, schema=DOCUMENTS)
                rows, chars = [], 0
    if rows:
        yield pa.Table.from_pylist(rows, schema=DOCUMENTS)


class TaggerActor:
    """Ray actor: tags DOCUMENTS batches into TAGGED ones, with one tagger (remote.py)."""

    def __init__(self, spec: dict, chunk_docs: int, chunk_chars: int):
        self.tagger = open_worker_tagger(spec, f"Ray node {socket.gethostname()}")
        self.chunk_docs = chunk_docs
        self.chunk_chars = chunk_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        return tag_table(self.tagger, batch, self.chunk_docs, self.chunk_chars)


# --- in the driver -------------------------------------------------------------------------------
