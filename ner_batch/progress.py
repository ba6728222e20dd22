"""How far an annotate run is: a tqdm bar on a terminal, and `progress` log events at a fixed
interval for logs (cron, Airflow), both from the same numbers.

The percentage is of input bytes: the inputs' total size is known when they are listed, and
the bytes read as documents are parsed (readers.ReadMeter), so no pass over the corpus counts
documents first. Bytes before a resumed run's start count as done. Where the total cannot be
known (an input of unknown size) there is no percentage and no ETA, only counts and rates:
never a wrong percentage. The ETA is the bytes left over the bytes-per-second rate measured
since the run's first report (what a resumed run skips, and start-up, do not count as speed).

The Committer (committer.py) owns one `Progress` per run and feeds it; an engine only tells the
Committer how far it has read (`Committer.read(documents, bytes_read=...)`).

Deliberately not here: where the bytes come from (readers.py), how log records are written
(cli.py's handlers: text lines go above the bar through tqdm.write).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

# tqdm's formats with our counts (documents, rates, ETA) at COUNTS; without a total, a counter.
BAR_WITH_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| COUNTS [{elapsed}]"
BAR_WITHOUT_TOTAL = "{desc}: COUNTS [{elapsed}]"


@dataclass
class Snapshot:
    """The numbers of one progress report; `percent` and `eta_seconds` are None when the
    inputs' total size is unknown (or, for the ETA, no rate is measured yet)."""

    percent: float | None
    documents: int  # done (annotated or rejected), earlier runs of this output included
    rejected: int
    documents_per_second: float
    tokens_per_second: float
    eta_seconds: float | None
    bytes_read: int | None
    bytes_total: int | None
    elapsed_seconds: float


class Progress:
    """The progress of one run. `total_bytes`: of all inputs (None: unknown); `start_bytes`:
    already done when the run starts (a resumed run's inputs before its resume point);
    `documents`, `rejected`: done by earlier runs. `bar`: show a tqdm bar (it still switches
    itself off when stderr is not a terminal); `log_every`: seconds between `progress` log
    events (None: none)."""

    def __init__(
        self,
        total_bytes: int | None,
        start_bytes: int = 0,
        documents: int = 0,
        rejected: int = 0,
        bar: bool = False,
        log_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total_bytes
        self.bytes = start_bytes if total_bytes is not None else None
        self.documents, self.rejected = documents, rejected
        self.run_documents = self.run_tokens = self.run_read = 0
        # (documents read by this run, bytes read through them): reached once they are done
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.log_every = log_every
        self.events = 0  # progress events logged
        self.clock = clock
        self.started = self.logged = clock()
        self.baseline: tuple[float, int] | None = None  # (time, bytes) of the first report
        self.bar = self._bar(bar)

    def _bar(self, show: bool):
        from tqdm import tqdm

        self.bar_format = BAR_WITHOUT_TOTAL if self.total is None else BAR_WITH_TOTAL
        return tqdm(
            total=self.total,
            initial=self.bytes or 0,
            desc="annotate",
            bar_format=self._format(self.snapshot()),
            disable=None if show else True,  # None: off when stderr is not a terminal
            dynamic_ncols=True,
        )

    @property
    def shows_bar(self) -> bool:
        return not self.bar.disable

    def read(self, documents: int, bytes_read: int | None = None) -> None:
        """The run has read `documents` more, and through them the inputs as far as
        `bytes_read` (an offset in the input stream). The percentage moves there once those
        documents are done (documents are done in the order they are read): it is of the
        work done, not of what is read ahead and still in flight."""
        self.run_read += documents
        if bytes_read is not None and self.bytes is not None:
            self.pending.append((self.run_read, bytes_read))
        self._advance()

    def reached(self, bytes_read: int) -> None:
        """The documents done so far reach `bytes_read` into the input stream."""
        if self.bytes is not None and bytes_read > self.bytes:
            self.bytes = min(bytes_read, self.total)
            self._measure()

    def done(self, documents: int, rejected: int = 0, tokens: int = 0) -> None:
        """`documents` more are annotated or rejected (`rejected` of them), with `tokens`."""
        self.documents += documents
        self.rejected += rejected
        self.run_documents += documents
        self.run_tokens += tokens
        self._advance()

    def _advance(self) -> None:
        while self.pending and self.pending[0][0] <= self.run_documents:
            self.reached(self.pending.popleft()[1])
        self._report()

    def _measure(self) -> None:
        if self.baseline is None:  # the rate counts from here: not the start-up, not a skip
            self.baseline = (self.clock(), self.bytes)

    def snapshot(self) -> Snapshot:
        now = self.clock()
        elapsed = now - self.started
        percent = eta = None
        if self.total is not None:
            percent = 100.0 if self.total == 0 else 100.0 * self.bytes / self.total
            eta = self._eta(now)
        return Snapshot(
            percent=None if percent is None else round(percent, 1),
            documents=self.documents,
            rejected=self.rejected,
            documents_per_second=round(self.run_documents / elapsed, 1) if elapsed > 0 else 0.0,
            tokens_per_second=round(self.run_tokens / elapsed, 1) if elapsed > 0 else 0.0,
            eta_seconds=eta,
            bytes_read=self.bytes,
            bytes_total=self.total,
            elapsed_seconds=round(elapsed, 1),
        )

    def _eta(self, now: float) -> float | None:
        if self.bytes >= self.total:
            return 0.0
        if self.baseline is None:
            return None
        since, bytes_then = self.baseline
        if now <= since or self.bytes <= bytes_then:
            return None
        rate = (self.bytes - bytes_then) / (now - since)
        return round((self.total - self.bytes) / rate, 1)

    def _report(self) -> None:
        snapshot = None
        if self.shows_bar:
            snapshot = self.snapshot()
            self.bar.bar_format = self._format(snapshot)
            self.bar.update((snapshot.bytes_read or 0) - self.bar.n)
        if self.log_every is not None and self.clock() - self.logged >= self.log_every:
            self._log(snapshot or self.snapshot())

    def _log(self, snapshot: Snapshot) -> None:
        self.logged = self.clock()
        self.events += 1
        where = "" if snapshot.percent is None else f" {snapshot.percent:.1f}%"
        eta = "" if snapshot.eta_seconds is None else f", ETA {duration(snapshot.eta_seconds)}"
        log.info(
            "progress%s: %d documents (%d rejected), %.0f documents/s, %.0f tokens/s%s",
            where,
            snapshot.documents,
            snapshot.rejected,
            snapshot.documents_per_second,
            snapshot.tokens_per_second,
            eta,
            extra={"event": "progress", **asdict(snapshot)},
        )

    def _format(self, snapshot: Snapshot) -> str:
        """The bar's format, with the documents, rates and ETA of `snapshot` after the bar."""
        counts = self._counts(snapshot).replace("{", "{{").replace("}", "}}")
        return self.bar_format.replace("COUNTS", counts)

    @staticmethod
    def _counts(snapshot: Snapshot) -> str:
        text = f"{snapshot.documents:,} docs"
        if snapshot.rejected:
            text += f" ({snapshot.rejected:,} rejected)"
        text += (
            f", {snapshot.documents_per_second:,.0f} docs/s, "
            f"{snapshot.tokens_per_second:,.0f} tokens/s"
        )
        if snapshot.percent is not None:
            eta = snapshot.eta_seconds
            text += f", ETA {'?' if eta is None else duration(eta)}"
        return text

    def finish(self) -> None:
        """Every input was read: the bar at 100% where the total is known, and a last
        `progress` event if the run logged any (a run shorter than the interval logs none)."""
        if self.total is not None:
            self.bytes = self.total
        if self.shows_bar:
            self._report()
        if self.events:
            self._log(self.snapshot())
        self.close()

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """1:02:03 for an hour, two minutes and three seconds; 02:03 under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
