"""`nerbatch annotate`: stream documents through an ONNX bundle into a Parquet span dataset.

`annotate()` is the one entry point: it runs the local engine below, or the Ray engine
(ray_engine.py) for `engine="ray"`. The local engine: a bounded reader -> chunks of documents ->
tokenise -> windows batched by length -> ONNX Runtime -> spans -> the run core's `Committer`
(run.py), which owns parts, rejects, counts and the manifest. Memory is bounded by one chunk (and
one document), whatever the corpus size. A resumed run starts reading at the position the
manifest recorded. Every document is either annotated (zero or more spans) or rejected.

Deliberately not here: locking, preparing and committing an output (run.py), reading files
(readers.py), batching and decoding (tagger.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from .bundle import load_bundle
from .errors import Interrupted, OptionError
from .features import Encoded
from .readers import Document, InputFile, ReadOptions, Reject, read_file
from .run import (
    AnnotateConfig,
    Committer,
    Position,
    RayOptions,
    StopFlag,
    chunk_is_full,
    complete_summary,
    prepared_output,
    recorded_runtime,
    resume_point,
    run_settings,
)
from .tagger import Prediction, Tagger

__all__ = ["AnnotateConfig", "Interrupted", "RayOptions", "annotate", "documents"]


def annotate(config: AnnotateConfig, silent: bool = True) -> dict:
    """Annotate the inputs into `config.output`; returns the run summary."""
    config.check()
    if config.engine == "ray":
        from .ray_engine import annotate_ray  # ray is an optional extra: imported only here

        return annotate_ray(config, silent)
    started = time.monotonic()
    with StopFlag() as stop:  # from the start: a SIGTERM while the bundle loads stops cleanly
        bundle = load_bundle(config.model)
        recorded = recorded_runtime(config) if config.runtime == "auto" else None
        try:
            tagger = bundle.tagger(
                config.variant,
                config.device,
                runtime=recorded or config.runtime,
                max_length=config.max_length,
                stride=config.stride,
                threads=config.threads,
                options=config.tagger_options(),
            )
        except OptionError as e:
            if not recorded:
                raise
            raise OptionError(
                f"{config.output} was begun with runtime {recorded}, which a resumed run keeps, "
                f"but here {e}; resume it where {recorded} runs, or pass --overwrite"
            ) from e
        choice = tagger.runtime
        if recorded:
            choice = {"runtime": recorded, "reason": "recorded by the run that began the output"}
        variant = bundle.resolve_variant(config.variant, config.device)
        max_length = tagger.window + tagger.encoder.n_special
        settings = run_settings(config, variant, max_length, tagger.stride, choice["runtime"])
        prepared = prepared_output(config, bundle.bundle_id, settings, choice)
        with prepared as (out, files, manifest):
            if manifest is None:
                return complete_summary(out)
            first, skip, drop = resume_point(manifest)
            stream = documents(files, config.read, first, skip)
            with Committer(out, manifest, bundle.bundle_id, config.part_docs, silent) as committer:
                if not manifest["complete"]:  # else killed before _SUCCESS: only that is left
                    _LocalRun(tagger, committer, config, stop).process(stream, drop)
                summary = committer.finish()
    summary["seconds_this_run"] = round(time.monotonic() - started, 2)
    return summary


def documents(
    files: list[InputFile], read: ReadOptions, first: int = 0, skip: int = 0
) -> Iterator[tuple[Position, Document | Reject]]:
    """The input stream from input `first`, item `skip` of it, on: each document or reject with
    its position (input index, items of that input read through it)."""
    for index in range(first, len(files)):
        start = skip if index == first else 0
        for item, document in enumerate(read_file(files[index], read, start), start + 1):
            yield (index, item), document


Chunk = list[tuple[Position, Document]]


class _LocalRun:
    """Reads the stream in chunks, tags each chunk in a worker thread while the main thread
    writes the chunk before it and reads the next, and commits every `part_docs` documents."""

    def __init__(self, tagger: Tagger, committer: Committer, config: AnnotateConfig, stop):
        self.tagger = tagger
        self.committer = committer
        self.config = config
        self.stop: StopFlag = stop
        self.pending: tuple[Chunk, Future] | None = None  # a chunk whose inference is in flight

    def process(self, stream: Iterator[tuple[Position, Document | Reject]], drop: int) -> None:
        """Tag and write the stream after its first `drop` items, committing part by part.

        Tokenising and ONNX Runtime both release the GIL, so one chunk's inference overlaps the
        decoding and writing of the previous one. Chunks end where `chunk_is_full` says or at a
        part's end, never elsewhere: on SIGTERM the chunk being read is read to its end, tagged
        and committed (at most `chunk_docs` documents or `chunk_chars` characters more), so that
        a resumed run forms the same batches as an uninterrupted one."""
        committer, config = self.committer, self.config
        if self.stop.signal is not None:  # signalled while the bundle loaded: nothing to commit
            raise committer.interrupted(self.stop.signal)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerbatch-infer")
        chunk: Chunk = []
        chunk_chars = 0
        in_part = committer.documents_in_part  # read into the open part, written or in flight
        try:
            for n, (position, item) in enumerate(stream):
                if n < drop:
                    continue
                in_part += 1
                if isinstance(item, Reject):
                    committer.reject(item, position)
                else:
                    chunk.append((position, item))
                    chunk_chars += len(item.text)
                part_full = in_part >= committer.part_size
                if chunk and (
                    part_full
                    or chunk_is_full(len(chunk), chunk_chars, config.chunk_docs, config.chunk_chars)
                ):
                    self._submit(executor, chunk)
                    chunk, chunk_chars = [], 0
                stopping = self.stop.signal is not None and not chunk  # at a chunk bound
                if part_full or stopping:
                    self._drain()
                    committer.commit()
                    in_part = 0
                    if stopping:
                        raise committer.interrupted(self.stop.signal)
            if chunk:
                self._submit(executor, chunk)
            self._drain()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, executor: ThreadPoolExecutor, chunk: Chunk) -> None:
        """Start inferring `chunk`; meanwhile write the chunk before it."""
        future = executor.submit(self._infer, [document.text for _, document in chunk])
        self._drain()
        self.pending = (chunk, future)

    def _infer(self, texts: list[str]) -> tuple[list[Encoded], list[Prediction]]:
        encoded = self.tagger.encoder.encode_batch(texts)
        return encoded, self.tagger.predict(encoded)

    def _drain(self) -> None:
        """Write the chunk in flight, if any (waits for its inference)."""
        if self.pending is None:
            return
        chunk, future = self.pending
        self.pending = None
        encoded, predictions = future.result()
        for (position, document), enc, prediction in zip(chunk, encoded, predictions, strict=True):
            spans = self.tagger.spans(document.text, prediction)
            self.committer.add(
                document.doc_id, document.source, document.text, spans, len(enc), position
            )
        _trim_heap()


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
