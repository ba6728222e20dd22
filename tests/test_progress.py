"""Progress: percentage of input bytes, documents, rates and ETA, as a bar on a terminal and as
`progress` log events elsewhere; bytes counted by the readers (plain, .gz compressed, Parquet by
rows); a counter, never a wrong percentage, where the total is unknown; a resumed run starts
where it left off. And export's output: its own steps, not third-party warnings."""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ner_batch.annotate as annotate_module
from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.export import ThirdPartyLogs
from ner_batch.progress import Progress, duration
from ner_batch.readers import InputFile, ReadMeter, ReadOptions, read_file, stream_offsets

POISON = ["{not json", '{"text": 5}', '["a list"]', '{"id": 1}']
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Events(logging.Handler):
    """The `progress` events logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "progress":
            self.events.append({**vars(record), "message": record.getMessage()})


@pytest.fixture
def events():
    handler = Events()
    logger = logging.getLogger("ner_batch.progress")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.events
    logger.removeHandler(handler)
    logger.setLevel(level)


def write_corpus(path: Path, documents: int, poison_every: int = 0) -> Path:
    lines = []
    for i in range(documents):
        if poison_every and i % poison_every == 3:
            lines.append(POISON[i % len(POISON)])
        else:
            lines.append(json.dumps({"id": f"d{i}", "text": f"Anna Berg met Carl in Oslo {i} ."}))
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the numbers ---------------------------------------------------------------------------


def test_percentage_follows_the_bytes_of_documents_done_and_eta_the_measured_rate(events):
    clock = Clock()
    progress = Progress(1000, log_every=10.0, clock=clock)
    progress.read(100, bytes_read=250)  # read, not done: the percentage waits for them
    assert progress.snapshot().percent == 0.0
    clock.now = 5.0
    progress.done(100, rejected=2, tokens=1000)
    snap = progress.snapshot()
    assert (snap.percent, snap.documents, snap.rejected) == (25.0, 100, 2)
    assert snap.eta_seconds is None  # one point: no rate yet
    progress.read(100, bytes_read=500)
    clock.now = 10.0
    progress.done(100, tokens=1000)
    snap = progress.snapshot()
    # 250 bytes in 5 s since the first report: 500 left take 10 s.
    assert (snap.percent, snap.eta_seconds) == (50.0, 10.0)
    assert snap.documents_per_second == 20.0 and snap.tokens_per_second == 200.0
    assert [e["percent"] for e in events] == [50.0]  # one event per 10 s
    assert "progress 50.0%: 200 documents (2 rejected)" in events[0]["message"]
    assert "ETA 00:10" in events[0]["message"]
    progress.finish()
    assert progress.snapshot().percent == 100.0
    assert events[-1]["percent"] == 100.0 and events[-1]["eta_seconds"] == 0.0


def test_unknown_total_is_a_counter_never_a_percentage(events):
    progress = Progress(None, log_every=0.0)
    progress.read(10, bytes_read=123)
    progress.done(10, tokens=50)
    progress.finish()
    assert events and all(e["percent"] is None and e["eta_seconds"] is None for e in events)
    assert all("%" not in e["message"] and "ETA" not in e["message"] for e in events)
    assert events[-1]["documents"] == 10


def test_a_resumed_run_starts_at_the_bytes_already_done():
    progress = Progress(1000, start_bytes=600, documents=60, rejected=1)
    snap = progress.snapshot()
    assert (snap.percent, snap.documents, snap.rejected) == (60.0, 60, 1)
    progress.read(10, bytes_read=100)  # never back
    progress.done(10)
    assert progress.snapshot().percent == 60.0


def test_durations():
    assert duration(0) == "00:00" and duration(62.4) == "01:02"
    assert duration(3723) == "1:02:03"


# --- bytes from the readers ----------------------------------------------------------------


def meter_run(files: list[InputFile], options: ReadOptions | None = None) -> list[int]:
    """The meter's bytes after each document of the stream."""
    meter, seen = ReadMeter(files), []
    for index, file in enumerate(files):
        meter.begin(index)
        for _ in read_file(file, options or ReadOptions(), 0, meter):
            seen.append(meter.bytes)
    meter.begin(len(files))
    seen.append(meter.bytes)
    return seen


def input_file(path: Path, fmt: str) -> InputFile:
    return InputFile(str(path), fmt, path.stat().st_size, path.stat().st_mtime)


def test_meter_counts_plain_gzip_and_parquet_bytes(tmp_path):
    plain = write_corpus(tmp_path / "a.jsonl", 3000)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(write_corpus(tmp_path / "b.src", 3000).read_bytes()))
    table = pa.table({"text": [f"Anna in Oslo {i}" for i in range(5000)]})
    parquet = tmp_path / "c.parquet"
    pq.write_table(table, parquet, row_group_size=1000)
    files = [
        input_file(plain, "jsonl"),
        input_file(packed, "jsonl"),
        input_file(parquet, "parquet"),
    ]
    sizes = [f.size for f in files]
    seen = meter_run(files)
    assert seen == sorted(seen)  # never back
    assert seen[-1] == sum(sizes) == stream_offsets(files)[-1]
    # Each input moves within itself, not only at its end (compressed bytes for .gz).
    first, second, third = seen[:3000], seen[3000:6000], seen[6000:11000]
    assert 0 < first[0] < first[-1] <= sizes[0]
    assert sizes[0] <= second[0] < second[-1] <= sizes[0] + sizes[1]
    assert len(set(third)) >= 5  # by row groups at least


def test_meter_counts_object_store_streams(tmp_path):
    """An object-store stream has no tell(): the reader counts what it takes (here pyarrow's
    local filesystem stands in for S3, through the same Remote path)."""
    import pyarrow.fs as pafs

    from ner_batch.storage import Remote

    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(write_corpus(tmp_path / "a.src", 20000).read_bytes()))
    remote = Remote(f"mock://{packed}", pafs.LocalFileSystem(), str(packed))
    file = InputFile(remote.uri, "jsonl", packed.stat().st_size, 0.0, remote=remote)
    seen = meter_run([file])
    assert len(seen) == 20001 and seen == sorted(seen)
    assert 0 < seen[0] < seen[10000] < seen[-1] == file.size


def test_stream_offsets_unknown_sizes_and_rejected_inputs():
    ok = InputFile("a.txt", "txt", 10, 0.0)
    fifo = InputFile("f.txt", "txt", -1, 0.0, error="not a regular file (FIFO)")
    unknown = InputFile("s3://b/x.txt", "txt", -1, 0.0)
    assert stream_offsets([ok, fifo, ok]) == [0, 10, 10, 20]
    assert stream_offsets([ok, unknown]) is None
    assert ReadMeter([ok, unknown]).bytes is None


# --- real runs -----------------------------------------------------------------------------


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ner_batch.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_json_log_of_a_real_run_has_progress_events(tiny_bundle, tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    write_corpus(corpus / "a.jsonl", 1500, poison_every=97)
    packed = gzip.compress(write_corpus(tmp_path / "b.src", 1500, poison_every=89).read_bytes())
    (corpus / "b.jsonl.gz").write_bytes(packed)
    out = tmp_path / "out"
    result = cli(
        "--log-format",
        "json",
        "annotate",
        str(corpus),
        str(out),
        "--model",
        str(tiny_bundle),
        "--variant",
        "fp32",
        "--threads",
        "1",
        "--part-docs",
        "300",
        "--progress-every",
        "0.001",
    )
    assert result.returncode == 0, result.stderr
    assert not CONTROL.search(result.stderr), "control characters in the log"
    records = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [r for r in records if r["event"] == "progress"]
    assert len(progress) >= 5
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert len(set(percents)) >= 5
    rejected = json.loads((out / "_manifest.json").read_text())["counts"]["rejected"]
    assert rejected > 0
    last = progress[-1]
    assert last["documents"] == 3000 and last["rejected"] == rejected
    assert last["bytes_total"] == (corpus / "a.jsonl").stat().st_size + len(packed)
    assert last["tokens_per_second"] > 0 and last["eta_seconds"] == 0.0
    assert any(p["eta_seconds"] not in (None, 0.0) for p in progress)
    for key in ("documents_per_second", "elapsed_seconds", "bytes_read", "message", "time"):
        assert key in last
    assert [r["event"] for r in records].index("done") > records.index(last)


def test_a_terminal_shows_a_bar_and_log_lines_above_it(tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "a.jsonl", 3000, poison_every=97)
    out = tmp_path / "out"
    controller, terminal = pty.openpty()
    # A terminal of 160 columns (a new pty has 0: tqdm would draw an empty bar).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "ner_batch.cli", "annotate", str(corpus), str(out)]
        + ["--model", str(tiny_bundle), "--variant", "fp32", "--threads", "1"]
        + ["--part-docs", "500"],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        screen += data
    assert process.wait(timeout=600) == 0
    os.close(controller)
    text = screen.decode()
    # Every redraw of the bar and every log line starts after \r or \n: split on both.
    pieces = [p for p in re.split(r"[\r\n]", text) if p.strip()]
    bars = [p for p in pieces if p.startswith("annotate:")]
    assert bars and all("%|" in b and "docs/s" in b and "tokens/s" in b for b in bars)
    assert "100%|" in bars[-1] and "3,000 docs" in bars[-1] and "ETA 00:00" in bars[-1]
    commits = [p for p in pieces if "committed part-" in p]
    assert len(commits) == 6
    assert all(p.startswith("committed part-") for p in commits), commits  # none glued


def test_a_resumed_run_starts_at_the_percentage_done(tiny_bundle, tmp_path, monkeypatch, events):
    corpus = tmp_path / "in"
    corpus.mkdir()
    for n in range(10):
        write_corpus(corpus / f"{n}.jsonl", 50)
    config = AnnotateConfig(
        [str(corpus)], str(tmp_path / "out"), model=str(tiny_bundle), variant="fp32"
    )
    config.threads, config.part_docs, config.chunk_docs = 1, 50, 10
    real = annotate_module.documents

    def crashing(files, read, *rest):
        for n, item in enumerate(real(files, read, *rest)):
            if n == 260:
                raise RuntimeError("crash")
            yield item

    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing)
        with pytest.raises(RuntimeError):
            annotate(config)
    events.clear()
    annotate(config, progress_every=0.0)
    first = events[0]
    after_first_chunk = next(e for e in events if e["documents"] > 250)
    assert first["documents"] == 250  # five parts of 50 were committed
    # The last committed document ends input 4: inputs 0-3 are done from the start, and the
    # first chunk's report moves past input 4 (skipped, not read again). Never from 0.
    assert first["percent"] == 40.0
    assert after_first_chunk["percent"] > 50.0
    percents = [e["percent"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert events[-1]["documents"] == 500


# --- export --------------------------------------------------------------------------------

THIRD_PARTY = ("Please consider to run pre-processing", "Model producer not matched")


def test_export_prints_its_own_steps_only(tiny_checkpoint, tiny_conll, tmp_path):
    out = tmp_path / "bundle"
    args = ["export", str(tiny_checkpoint), "--out", str(out), "--dev", str(tiny_conll)]
    args += ["--variants", "fp32,int8,fp16", "--keep-failed"]
    result = cli("--log-format", "text", *args)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "int8: model.int8.onnx" in result.stdout
    for line in THIRD_PARTY + ("Loading weights", "WARNING:"):
        assert line not in output, output
    verbose = cli("--log-format", "text", "--verbose", *args[:3], str(tmp_path / "v"), *args[4:])
    assert verbose.returncode == 0, verbose.stderr
    assert all(line in verbose.stderr for line in THIRD_PARTY), verbose.stderr


def test_third_party_warnings_are_replayed_when_export_fails():
    export_log = logging.getLogger("ner_batch.export")
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.DEBUG)
    catcher.emit = seen.append
    export_log.addHandler(catcher)
    level = export_log.level
    export_log.setLevel(logging.INFO)  # the debug log is off, as without --verbose
    try:
        with pytest.raises(ValueError), ThirdPartyLogs() as heard:
            try:
                logging.getLogger("onnxruntime.quantization").warning("consider pre-processing")
                raise ValueError("the export failed")
            except ValueError:
                heard.replay()
                raise
    finally:
        export_log.removeHandler(catcher)
        export_log.setLevel(level)
    assert [(r.levelno, r.getMessage()) for r in seen] == [
        (logging.WARNING, "onnxruntime.quantization said: consider pre-processing")
    ]
    assert heard not in logging.getLogger().handlers  # removed afterwards
