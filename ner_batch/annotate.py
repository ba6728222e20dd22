"""`nerbatch annotate`: stream documents through an ONNX bundle into a Parquet span dataset.

`annotate()` is the one entry point, for every engine: the run plan (plan.py) decides
everything before the first document, an engine turns the documents left to do into spans,
and the `Committer` (committer.py) commits them part by part. An engine is a small object
(`Engine`): `LocalEngine` below, or `RayEngine` (ray_engine.py) for `engine="ray"`. The local
engine: a bounded reader -> chunks of documents -> tokenise -> windows batched by length -> the
runtime -> spans -> the Committer. A resumed run starts reading at the position the manifest
recorded. Every document is either annotated (zero or more spans) or rejected.

Deliberately not here: the plan, the lock and the manifest (plan.py, lock.py, manifest.py),
committing (committer.py), reading files (readers.py), batching and decoding (tagger.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

from .committer import Committer
from .errors import Interrupted
from .features import Encoded
from .plan import RunPlan, complete_summary, open_plan
from .readers import Document, InputFile, ReadMeter, ReadOptions, Reject, read_file
from .run import AnnotateConfig, RayOptions, StopFlag, chunks
from .tagger import Prediction, Prepared, Tagger

__all__ = ["AnnotateConfig", "Interrupted", "RayOptions", "annotate", "documents"]

Position = tuple[int, int]  # (input index, items of that input read through this document)


class Engine(Protocol):
    """What an engine is: it turns the documents a plan leaves to do into committed parts."""

    tags_here: bool  # the plan opens the tagger in this process (else the workers do)

    def stop_flag(self) -> StopFlag: ...

    def run(self, plan: RunPlan, committer: Committer, stop: StopFlag) -> None: ...


def annotate(
    config: AnnotateConfig, silent: bool = True, progress_every: float | None = 30.0
) -> dict:
    """Annotate the inputs into `config.output`; returns the run summary.

    `silent` False: a progress bar on a terminal (progress.py). `progress_every`: seconds
    between `progress` log events (percentage, documents, rejects, rates, ETA); None: none."""
    config.check()
    engine = _engine(config)
    started = time.monotonic()
    # The stop flag from the start: a SIGTERM while the bundle loads stops cleanly.
    with engine.stop_flag() as stop, open_plan(config, tags_here=engine.tags_here) as plan:
        if plan.manifest is None:
            return complete_summary(plan.out)
        with Committer(plan, silent, progress_every) as committer:
            if not plan.manifest.complete:  # else killed before _SUCCESS: only that is left
                if stop.signal is not None:  # signalled while starting: nothing to commit
                    raise committer.interrupted(stop.signal)
                engine.run(plan, committer, stop)
            summary = committer.finish()
    summary["seconds_this_run"] = round(time.monotonic() - started, 2)
    return summary


def _engine(config: AnnotateConfig) -> Engine:
    if config.engine == "ray":
        from .ray_engine import RayEngine  # ray is an optional extra: imported only here

        return RayEngine(config)
    if config.engine == "spark":
        from .spark import SparkEngine  # pyspark too

        return SparkEngine(config)
    return LocalEngine()


def documents(
    files: list[InputFile],
    read: ReadOptions,
    first: int = 0,
    skip: int = 0,
    meter: ReadMeter | None = None,
) -> Iterator[tuple[Position, Document | Reject]]:
    """The input stream from input `first`, item `skip` of it, on: each document or reject with
    its position (input index, items of that input read through it). `meter`
    (`ReadMeter(files)`) follows the bytes read, for progress."""
    for index in range(first, len(files)):
        start = skip if index == first else 0
        if meter is not None:
            meter.begin(index)
        for item, document in enumerate(read_file(files[index], read, start, meter), start + 1):
            yield (index, item), document
    if meter is not None:
        meter.begin(len(files))  # every input read


Chunk = list[tuple[Position, Document]]


class LocalEngine:
    """This machine: reads the stream in chunks, tags each chunk in a worker thread while the
    main thread writes the chunk before it and reads the next, and commits every `part_docs`
    documents. Memory is bounded by one chunk (and one document), whatever the corpus size."""

    tags_here = True

    def __init__(self) -> None:
        self.pending: tuple[Chunk, Future] | None = None  # a chunk whose inference is in flight

    def stop_flag(self) -> StopFlag:
        return StopFlag()

    def run(self, plan: RunPlan, committer: Committer, stop: StopFlag) -> None:
        """Tag and write the documents left to do, committing part by part.

        Tokenising and the runtimes release the GIL, so one chunk's inference overlaps the
        decoding and writing of the previous one. Chunks end where `run.chunks` says, never
        elsewhere: on SIGTERM the chunk being read is read to its end, tagged and committed
        (at most `chunk_docs` documents or `chunk_chars` characters more), so that a resumed
        run forms the same batches as an uninterrupted one."""
        config = plan.config
        first, skip, drop = plan.resume
        meter = ReadMeter(plan.files)
        stream = documents(plan.files, config.read, first, skip, meter)
        stream = itertools.islice(stream, drop, None)
        pieces = chunks(
            stream,
            lambda entry: entry[1].text if isinstance(entry[1], Document) else None,
            config.chunk_docs,
            config.chunk_chars,
            config.part_docs,
            done=plan.manifest.documents_done,
            stopping=lambda: stop.signal is not None,
        )
        # Two stages, one thread each: tokenising and batching the next chunk while the runtime
        # infers this one (one chunk ahead, so memory holds at most three chunks), where the
        # runtime leaves cores idle (see `_submit`).
        executor = _Stages(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerbatch-encode"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerbatch-infer"),
        )
        with _tokenizer_threads_off():
            try:
                for chunk, part_ends in pieces:
                    committer.read(len(chunk), bytes_read=meter.bytes)
                    texts: Chunk = []
                    for position, item in chunk:
                        if isinstance(item, Reject):
                            committer.reject(item, position)
                        else:
                            texts.append((position, item))
                    if texts:
                        self._submit(executor, plan.tagger, committer, texts)
                    if part_ends or stop.signal is not None:
                        self._drain(plan.tagger, committer)
                        committer.commit()
                        if stop.signal is not None:
                            raise committer.interrupted(stop.signal)
                self._drain(plan.tagger, committer)
            finally:
                executor.shutdown()

    def _submit(
        self, executor: _Stages, tagger: Tagger, committer: Committer, chunk: Chunk
    ) -> None:
        """Start tokenising and then inferring `chunk`; meanwhile write the chunk before it.

        With one stream (ONNX Runtime), tokenising runs in its own thread while the runtime
        infers the chunk before, in time the runtime leaves idle between and within batches.
        With several (OpenVINO's, one per core), the runtime keeps every core busy and a
        tokenising thread beside it only preempts its streams: the chunk is tokenised in the
        inference thread, between two chunks. Measured (docs/profile.md): OpenVINO, 2 streams,
        15.9-16.1 s in turn against 17.1-17.7 s overlapped; ONNX Runtime 31.5 s overlapped
        against 31.6-33.6 s in turn."""
        texts = [document.text for _, document in chunk]
        if tagger.streams > 1:
            future = executor.infer.submit(_prepare_and_infer, tagger, texts)
        else:
            prepared = executor.encode.submit(_prepare, tagger, texts)
            future = executor.infer.submit(_infer, tagger, prepared)
        self._drain(tagger, committer)
        self.pending = (chunk, future)

    def _drain(self, tagger: Tagger, committer: Committer) -> None:
        """Write the chunk in flight, if any (waits for its inference)."""
        if self.pending is None:
            return
        chunk, future = self.pending
        self.pending = None
        encoded, predictions = future.result()
        spans = tagger.spans_of([document.text for _, document in chunk], predictions)
        tokens = sum(len(enc) for enc in encoded)
        committer.add([document for _, document in chunk], spans, tokens, chunk[-1][0])
        _trim_heap()


class _Stages(NamedTuple):
    encode: ThreadPoolExecutor
    infer: ThreadPoolExecutor

    def shutdown(self) -> None:
        for stage in self:
            stage.shutdown(wait=True, cancel_futures=True)


def _prepare(tagger: Tagger, texts: list[str]) -> Prepared:
    return tagger.prepare(tagger.encoder.encode_batch(texts))


def _infer(tagger: Tagger, prepared: Future) -> tuple[Sequence[Encoded], list[Prediction]]:
    ready: Prepared = prepared.result()
    return ready.encoded, tagger.infer(ready)


def _prepare_and_infer(tagger: Tagger, texts: list[str]) -> tuple[Sequence[Encoded], list]:
    ready = _prepare(tagger, texts)
    return ready.encoded, tagger.infer(ready)


@contextlib.contextmanager
def _tokenizer_threads_off() -> Iterator[None]:
    """The tokenizers library's own thread pool off while a run tokenises (unless
    TOKENIZERS_PARALLELISM is set): the runtime already has every core, and the pool's threads
    only preempt it, and cost 28% more CPU than one thread for the same work. Measured with
    OpenVINO on 2 cores: 17.1-17.7 s instead of 20.8-21.2 s (docs/profile.md). The library
    reads the variable at each call, so it is restored after the run."""
    if "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim), once per chunk.

    Tokenizer and inference threads allocate in their own malloc arenas, which fragment: without
    this, peak RSS crept up with corpus size (tiny model, 2 MB chunks: 527 MB on 5 MB, 581 MB on
    20 MB; with it 524 and 536). A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
