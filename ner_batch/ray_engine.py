"""`nerbatch annotate --engine ray`: the annotate stage on a Ray cluster, through Ray Data.

The driver (this process) does what the local engine does up front, with the same functions:
check the bundle, expand the inputs, take the output's lock, read or start its manifest. Ray Data
then runs

    input files ──▶ read (tasks) ──▶ tag (actor pool, one ONNX Runtime session per actor) ──▶ driver

and the driver writes what comes back, in input order, with the local engine's part writer and
manifest. Reading calls `readers.read_file` and tagging the bundle's `Tagger`, so the fp32 rows
are the local engine's (quantised variants scale each batch as a whole, and Ray Data forms its
own batches: their rows differ slightly, and the output is bound to the engine); committing
through the run core's `Committer` (run.py) keeps its contract (a part is named in the manifest
only once it is on disk; `_SUCCESS` last), and an fp32 output started by one engine can be
resumed by the other: both record where the committed documents end (input file and item in it)
and start reading there.

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
import pickle
import re
import signal
import socket
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .bundle import load_bundle
from .committer import Committer
from .errors import BundleError, InputError, Interrupted, MissingExtraError, NerbatchError
from .output import REJECT_SCHEMA, SPAN_STRUCT, span_columns
from .plan import RunPlan, log_runtime
from .readers import Document, InputFile, ReadOptions, Reject, printable, read_file
from .run import AnnotateConfig, StopFlag, tag_in_chunks
from .runtimes import open_tagger
from .storage import is_uri, local_path
from .tagger import TaggerOptions

log = logging.getLogger(__name__)

# Ray's own fault tolerance for the tagging actors: restart a dead actor, retry its batch.
ACTOR_RESTARTS = 3
BATCH_RETRIES = 3
# Documents per block out of a read task (fewer when they are long).
READ_BLOCK_DOCS = 512
READ_BLOCK_CHARS = 8_000_000

# Between the stages, one row per input document: `input` is its file's index in the run's
# inputs and `item` its position in that file (documents and rejects alike), for order and resume.
DOCUMENTS = pa.schema(
    [
        ("input", pa.int64()),
        ("item", pa.int64()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),  # null for a reject
        ("line", pa.int64()),  # a reject's line, if any
        ("reason", pa.string()),  # a reject's reason
        ("fatal", pa.string()),  # an error that stops the run (as the local engine's would)
    ]
)
TAGGED = pa.schema(
    [
        *(f for f in DOCUMENTS if f.name != "text"),
        ("tokens", pa.int64()),
        ("spans", pa.list_(SPAN_STRUCT)),
    ]
)


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
            first, skip, drop = plan.resume
            workers = _workers(self.ray, config, config.gpus_per_worker)
            dataset = _pipeline(self.ray, plan, first, skip, workers)
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


def _pipeline(ray, plan: RunPlan, first: int, skip: int, workers: int):
    """The Ray Data pipeline from input `first` (its first `skip` documents done) to the end."""
    config, files = plan.config, plan.files
    gpus = config.gpus_per_worker
    todo = [
        {
            "input": index,
            # bytes: a file name that is not UTF-8 (surrogate escapes) is no Arrow string
            "path": f.path.encode("utf-8", "surrogateescape"),
            "format": f.format,
            "size": f.size,
            "mtime": f.mtime,
            "error": f.error,
            # An object-store input's filesystem, as the driver opened it (pyarrow's pickle).
            "remote": pickle.dumps(f.remote) if f.remote is not None else None,
            "skip": skip if index == first else 0,
        }
        for index, f in enumerate(files)
        if index >= first
    ]
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
    model = str(config.model)
    model = model if is_uri(model) else os.path.abspath(local_path(model))
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
                "model": str(model),
                "variant": plan.variant,
                "runtime": plan.runtime["runtime"],
                "device": config.device,
                "max_length": plan.window[0],
                "stride": plan.window[1],
                "threads": config.ray.cpus_per_worker,
                "options": asdict(config.tagger_options()),
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
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # anything a worker or Ray raised: see _ray_error
                raise _ray_error(e) from e
            yield batch
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
        for row in _file_rows(spec, options, cwd):
            rows.append(row)
            chars += len(row.get("text") or "")
            if len(rows) >= READ_BLOCK_DOCS or chars >= READ_BLOCK_CHARS:
                yield pa.Table.from_pylist(rows, schema=DOCUMENTS)
                rows, chars = [], 0
    if rows:
        yield pa.Table.from_pylist(rows, schema=DOCUMENTS)


def _file_rows(spec: dict, options: ReadOptions, cwd: str) -> Iterator[dict]:
    given = spec["path"].decode("utf-8", "surrogateescape")
    remote = pickle.loads(spec["remote"]) if spec["remote"] is not None else None
    # A worker's working directory is not the driver's: read relative paths from the driver's,
    # and write ids, sources and messages with the path as given, as the local engine does.
    local = given if remote or os.path.isabs(given) else os.path.join(cwd, given)
    # Readers show paths in their printable form (a name that is not UTF-8 has \xNN escapes).
    shown, shown_local = printable(given), printable(local)

    def row(item: int, doc_id=None, text=None, line=None, reason=None, fatal=None) -> dict:
        if local != given:
            if doc_id == shown_local or re.fullmatch(
                re.escape(shown_local) + r":\d+", doc_id or ""
            ):
                doc_id = shown + doc_id[len(shown_local) :]  # <file> or <file>:<line>
            reason = reason and reason.replace(shown_local, shown)
            fatal = fatal and fatal.replace(shown_local, shown)
        return {
            "input": spec["input"],
            "item": item,
            "doc_id": doc_id,
            "source": shown,
            "text": text,
            "line": line,
            "reason": reason,
            "fatal": fatal,
        }

    if not spec["error"] and not remote and not os.path.exists(local):
        yield row(
            spec["skip"],
            fatal=f"{shown}: not found on Ray node {socket.gethostname()}; every node must "
            "read the inputs at the same path (a shared filesystem) or from an object store",
        )
        return
    file = InputFile(local, spec["format"], spec["size"], spec["mtime"], spec["error"], remote)
    skip = item = spec["skip"]
    try:
        for item, document in enumerate(read_file(file, options, skip), skip):
            if isinstance(document, Document):
                yield row(item, doc_id=document.doc_id, text=document.text)
            else:
                yield row(item, doc_id=document.doc_id, line=document.line, reason=document.reason)
    except NerbatchError as e:  # e.g. a Parquet file without the text column: the run stops
        yield row(item, fatal=str(e))


class TaggerActor:
    """Ray actor: tags DOCUMENTS batches into TAGGED ones, with one ONNX Runtime session."""

    def __init__(
        self,
        model: str,
        variant: str,
        runtime: str,
        device: str,
        max_length: int,
        stride: int,
        threads: int,
        options: dict,
        chunk_docs: int,
        chunk_chars: int,
    ):
        try:
            bundle = load_bundle(model)
        except BundleError as e:
            raise BundleError(
                f"on Ray node {socket.gethostname()}: {e}; every node must read the bundle at the "
                "same path (a shared filesystem) or from an object store"
            ) from e
        self.tagger = open_tagger(
            bundle,
            variant,
            device,
            runtime=runtime,
            max_length=max_length,
            stride=stride,
            threads=threads,
            options=TaggerOptions(**options),
        )
        self.chunk_docs = chunk_docs
        self.chunk_chars = chunk_chars
        log_runtime(self.tagger.runtime)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t for t in batch.column("text").to_pylist() if t is not None]
        tagged = list(tag_in_chunks(self.tagger, texts, self.chunk_docs, self.chunk_chars))
        columns, counts = span_columns(texts, [spans for _, spans in tagged])
        is_text = pc.is_valid(batch.column("text")).to_numpy(zero_copy_only=False)
        spans_of = np.zeros(batch.num_rows, dtype=np.int64)  # (rows,) spans; 0 for a reject
        tokens = np.zeros(batch.num_rows, dtype=np.int64)
        spans_of[is_text] = counts
        tokens[is_text] = [n for n, _ in tagged]
        offsets = np.concatenate([[0], np.cumsum(spans_of)]).astype(np.int32)
        struct = pa.StructArray.from_arrays(list(columns.values()), fields=list(SPAN_STRUCT))
        spans = pa.ListArray.from_arrays(pa.array(offsets), struct)
        rest = batch.drop_columns(["text"])
        return pa.Table.from_arrays([*rest.columns, pa.array(tokens), spans], schema=TAGGED)


# --- in the driver -------------------------------------------------------------------------------


def consume(committer: Committer, batches: Iterable[pa.Table], drop: int, stop: StopFlag) -> None:
    """Write the tagged rows after the first `drop`, committing every `part_docs` documents."""
    for batch in batches:
        dropped = min(drop, batch.num_rows)
        drop -= dropped
        write_batch(committer, batch.slice(dropped))
        if stop.signal is not None:
            if committer.part is not None:
                committer.commit()
            raise committer.interrupted(stop.signal)


def write_batch(committer: Committer, batch: pa.Table) -> None:
    """One batch of TAGGED rows, cut at part boundaries: parts hold exactly `part_docs`
    documents, as the local engine's do."""
    start = 0
    while start < batch.num_rows:
        size = min(batch.num_rows - start, committer.room)
        committer.read(size)
        add_rows(committer, batch.slice(start, size))
        start += size
        if committer.room <= 0:
            committer.commit()


def add_rows(committer: Committer, rows: pa.Table) -> None:
    """TAGGED rows of one part: spans into the part, rejects beside it."""
    fatal = rows.column("fatal")
    if fatal.null_count < len(fatal):
        raise InputError(next(m for m in fatal.to_pylist() if m is not None))
    if not rows.num_rows:
        return
    rejected = pc.is_valid(rows.column("reason"))
    for reject in rows.filter(rejected).select(["input", "item", *REJECT_SCHEMA.names]).to_pylist():
        position = (reject.pop("input"), reject.pop("item") + 1)
        committer.reject(Reject(**reject), position)
    annotated = rows.filter(pc.invert(rejected))
    spans = annotated.column("spans").combine_chunks()  # (documents,) lists of spans
    flat = pc.list_flatten(spans)  # (spans,) structs
    owner = pc.list_parent_indices(spans)  # (spans,) document of each span
    table = pa.table(
        {
            "doc_id": annotated.column("doc_id").take(owner),
            "source": annotated.column("source").take(owner),
            "start": flat.field("start"),
            "end": flat.field("end"),
            "label": flat.field("label"),
            "text": flat.field("text"),
            "score": flat.field("score"),
            "model": pa.array([committer.model_id] * len(flat), pa.string()),
        }
    )
    last = (rows.column("input")[-1].as_py(), rows.column("item")[-1].as_py() + 1)
    tokens = pc.sum(annotated.column("tokens")).as_py() or 0
    committer.add_table(table, annotated.num_rows, tokens, last)
