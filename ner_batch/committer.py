"""Where a part is committed: the `Committer` owns what one annotate run writes, whatever the
engine.

The commit protocol: a part's rows are published (renamed into place), then its rejects, then
the manifest that names both; the manifest also records where in the input stream the committed
documents end (`position`), so a resumed run starts reading there. `_SUCCESS` is written last,
after the manifest says complete.

Deliberately not here: what runs before the first document (plan.py), tagging (the engines),
the storage layer (output.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time

import pyarrow as pa

from . import manifest as manifest_file  # its write_manifest, looked up at each write
from .errors import Interrupted, OutputError
from .manifest import Counts, Manifest, Part, Position
from .output import REJECTS, SUCCESS, OutputDir, PartWriter, spans_table, write_rejects
from .plan import RunPlan, now
from .progress import Progress
from .readers import Document, Reject, stream_offsets
from .tagger import Span

log = logging.getLogger(__name__)

StreamPosition = tuple[int, int]  # (input index, items of that input read through a document)


class Committer:
    """What one run writes: the open part and its rejects, the counts, the manifest, the
    resume position, and the run's progress (progress.py: a bar on a terminal, `progress` log
    events every `progress_every` seconds). An engine tells it how many documents it read from
    the stream and how far into the input bytes that is (`read`), adds them (annotated, with
    spans, or rejected) in stream order, and calls `commit` at part boundaries and `finish` at
    the end, which checks that every document read was annotated or rejected.

    Use it as a context manager: an error aborts the open part (never half-published), and an
    OSError (disk full, a vanished mount) becomes an OutputError that says the output stays
    resumable."""

    def __init__(self, plan: RunPlan, silent: bool = True, progress_every: float | None = None):
        self.out: OutputDir = plan.out
        self.manifest: Manifest = plan.manifest
        self.model_id = plan.bundle.bundle_id
        self.part_docs = plan.config.part_docs
        self.silent = silent
        self.part: PartWriter | None = None
        self.rejects: list[Reject] = []
        self.counts = Counts()  # of the open part; `documents` counts what the engine read
        self.last: StreamPosition | None = None  # of the last document added to the open part
        self.started = time.monotonic()
        self.run_docs = 0
        self.run_tokens = 0
        # Where each input starts in the stream, in bytes (None: a size is unknown).
        self.offsets = stream_offsets(plan.files)
        self.progress_every = progress_every
        self.progress: Progress | None = None
        self.first_input = plan.resume[0]

    def __enter__(self) -> Committer:
        offsets, m = self.offsets, self.manifest
        self.progress = Progress(
            total_bytes=None if offsets is None else offsets[-1],
            # A resumed run: the inputs before the one it resumes in count as done (the
            # engine's first report moves it to the resume point within that one).
            start_bytes=0 if offsets is None or m.complete else offsets[self.first_input],
            documents=m.documents_done,
            rejected=m.counts.rejected,
            bar=not self.silent,
            log_every=self.progress_every,
        )
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.progress.close()
        if error is None:
            return
        if self.part is not None:
            with contextlib.suppress(OSError):  # the disk may still be full
                self.part.abort()
            self.part = None
        if isinstance(error, OSError):
            # Readers turn their own I/O errors into rejects: this is a write (disk full, a
            # vanished mount, a read-only directory).
            raise OutputError(
                f"cannot write to {self.out}: {error.strerror or error}; the output stays "
                "resumable from the last committed part once the problem is fixed"
            ) from error

    @property
    def documents_in_part(self) -> int:
        return self.counts.annotated + self.counts.rejected

    @property
    def part_size(self) -> int:
        """Documents of the open part when full. Parts end at multiples of `part_docs` in the
        input stream, whatever was committed before (a part committed on SIGTERM is short): the
        bounds of parts, and so of tagging chunks, do not depend on where a run was stopped."""
        return self.part_docs - self.manifest.documents_done % self.part_docs

    @property
    def room(self) -> int:
        """Documents the open part takes before it is full."""
        return self.part_size - self.documents_in_part

    def _open(self, position: StreamPosition | None) -> None:
        if self.part is None:
            name = f"part-{len(self.manifest.parts):05d}.parquet"
            self.part = PartWriter.in_output(self.out, name)
        if position is not None:
            self.last = position if self.last is None else max(self.last, position)

    def stream_bytes(self, input_index: int, bytes_of_input: int | None) -> int | None:
        """`bytes_read` for `read` from the bytes read of one input (`plan.files[input_index]`),
        as an engine whose workers read single inputs knows them; None when unknown."""
        if self.offsets is None or bytes_of_input is None:
            return None
        return self.offsets[input_index] + bytes_of_input

    def read(self, documents: int = 1, bytes_read: int | None = None) -> None:
        """`documents` were read from the input stream (each must then be added or rejected).

        `bytes_read`, for progress: how far into the input stream reading has got, in bytes
        from the start of the first input (`plan.files` in order, inputs before a resume
        point included): `readers.ReadMeter.bytes`, or for an engine that knows an input's
        index and the bytes read of it, `readers.stream_offsets(plan.files)[index] + bytes`.
        Without it the progress moves by whole inputs, from the positions of added documents."""
        self.counts.documents += documents
        self.progress.read(documents, bytes_read)

    def add(
        self,
        documents: list[Document],
        spans: list[list[Span]],
        tokens: int,
        position: StreamPosition,
    ) -> None:
        """Annotated documents and the spans of each; `position`: of the last of them."""
        self._open(position)
        table, rows_per_document = spans_table(documents, spans, self.model_id)
        self.part.add_table(table, rows_per_document)
        self._count(len(documents), spans=table.num_rows, tokens=tokens, position=position)

    def add_table(
        self, spans: pa.Table, documents: int, tokens: int, position: StreamPosition
    ) -> None:
        """Span rows (output.SPAN_SCHEMA) of `documents` annotated documents made elsewhere."""
        self._open(position)
        self.part.add_table(spans)
        self._count(documents, spans=spans.num_rows, tokens=tokens, position=position)

    def reject(self, reject: Reject, position: StreamPosition) -> None:
        """A document that could not be read or decoded."""
        self._open(position)
        self.rejects.append(reject)
        self._count(rejected=1, position=position)

    def _count(
        self,
        annotated: int = 0,
        rejected: int = 0,
        spans: int = 0,
        tokens: int = 0,
        position: StreamPosition | None = None,
    ) -> None:
        c = self.counts
        c.annotated += annotated
        c.rejected += rejected
        c.spans += spans
        c.tokens += tokens
        self.run_docs += annotated + rejected
        if position is not None and self.offsets is not None:
            # At least the inputs before this document's are read, whatever the engine says.
            self.progress.reached(self.offsets[position[0]])
        self.progress.done(annotated + rejected, rejected, tokens)

    def commit(self) -> None:
        """Publish the open part (an empty one too): rows, then its rejects, then the manifest
        that names both and the position where its documents end."""
        self._open(None)
        try:
            rows = self.part.commit()
            rejects_file = None
            if self.rejects:
                self.out.mkdir(REJECTS)
                rejects_file = f"{REJECTS}/{self.part.name}"
                write_rejects(self.out, rejects_file, self.rejects)
        except OSError as e:
            raise OutputError(
                f"cannot write {self.out.uri(self.part.name)}: {e.strerror or e}; the output "
                "stays resumable from the last committed part once the problem is fixed"
            ) from e
        m, c = self.manifest, self.counts
        documents = self.documents_in_part
        m.parts.append(
            Part(
                self.part.name,
                rejects_file,
                rows,
                documents,
                c.annotated,
                c.rejected,
                c.spans,
                c.tokens,
            )
        )
        m.documents_done += documents
        m.counts.add(c)
        if self.last is not None:
            m.position = Position(m.documents_done, *self.last)
        m.updated = now()
        self.run_tokens += c.tokens
        manifest_file.write_manifest(self.out, m)
        log.info(
            "committed %s: %d documents, %d spans",
            self.part.name,
            documents,
            rows,
            extra={
                "event": "part",
                "part": self.part.name,
                "documents": m.counts.documents,
                "rejected": m.counts.rejected,
                "spans": m.counts.spans,
            },
        )
        self.part, self.rejects, self.counts, self.last = None, [], Counts(), None

    def interrupted(self, signum: int) -> Interrupted:
        return Interrupted(
            f"stopped by {signal.Signals(signum).name} after "
            f"{self.manifest.documents_done} documents; run the same command again to resume"
        )

    def finish(self) -> dict:
        """Commit what is open (or one empty part, for an output with no documents), check that
        every document read was annotated or rejected, mark the manifest complete with the run
        summary, write _SUCCESS; returns the summary."""
        m = self.manifest
        if self.part is not None or self.counts.documents or not m.parts:
            self.commit()
        counts = m.counts
        if counts.documents != counts.annotated + counts.rejected:
            raise OutputError(  # a bug if seen: documents read but neither written nor rejected
                f"accounting mismatch in {self.out}: {counts.documents} documents read, "
                f"{counts.annotated} annotated and {counts.rejected} rejected; the output is "
                "left incomplete"
            )
        elapsed = time.monotonic() - self.started
        m.summary = {
            "output": str(self.out),
            "documents": counts.documents,
            "annotated": counts.annotated,
            "rejected": counts.rejected,
            "spans": counts.spans,
            "tokens": counts.tokens,
            "parts": len(m.parts),
            "seconds": round(elapsed, 2),
            "documents_this_run": self.run_docs,
            "tokens_per_second": round(self.run_tokens / elapsed, 1) if elapsed > 0 else None,
            "bundle_id": m.bundle_id,
            "variant": m.variant,
            "runtime": m.runtime,
            "files": m.files,
        }
        m.complete = True
        m.finished = now()
        m.rejects = REJECTS if m.rejects_files() else None
        manifest_file.write_manifest(self.out, m)
        self.out.write_bytes(SUCCESS, b"")
        self.progress.finish()
        log.info("done", extra={"event": "done", **m.summary})
        return dict(m.summary)
