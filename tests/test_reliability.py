"""Never lose a document: kill -9 at random points and resume, fuzzed inputs, a full disk,
unreadable entries. Every run must end with documents = annotated + rejected."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.errors import OutputError
from ner_batch.readers import ReadOptions


def run(bundle: Path, inputs: list, output: Path, **options) -> dict:
    options.setdefault("variant", "fp32")
    options.setdefault("threads", 1)
    return annotate(
        AnnotateConfig(
            inputs=[str(i) for i in inputs], output=str(output), model=str(bundle), **options
        )
    )


def sorted_rows(out: Path) -> list[tuple]:
    table = pq.read_table(out)
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def sorted_rejects(out: Path) -> list[tuple]:
    if not (out / "_rejects").exists():
        return []
    return sorted(tuple(r.values()) for r in pq.read_table(out / "_rejects").to_pylist())


def accounting(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["documents"] == counts["annotated"] + counts["rejected"]
    assert counts["documents"] == manifest["documents_done"]
    return counts


def write_corpus(root: Path, n_docs: int, seed: int = 0) -> Path:
    """A few thousand JSONL documents of mixed length, with some bad lines among them."""
    rng = random.Random(seed)
    words = [
        "John",
        "Smith",
        "visited",
        "Paris",
        "and",
        "met",
        "Mary",
        "of",
        "the",
        "European",
        "Commission",
        "in",
        "London",
        "on",
        "Thursday",
        ",",
        "said",
        "Acme",
        "Corp",
        "in",
        "Berlin",
        ".",
    ]
    root.mkdir(parents=True, exist_ok=True)
    for f in range(3):
        with open(root / f"part{f}.jsonl", "w") as out:
            for i in range(n_docs // 3):
                if rng.random() < 0.02:
                    out.write("{not json\n")
                    continue
                text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
                out.write(json.dumps({"id": f"{f}-{i}", "text": text}) + "\n")
    return root


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ner_batch.cli", "--log-format", "json", *args]


def test_kill_9_at_20_random_points_then_resume(tiny_bundle, tmp_path):
    """The real CLI in a subprocess, SIGKILLed at 20 seeded random moments; each time the same
    command resumes. The final table equals an uninterrupted run's, with nothing duplicated."""
    corpus = write_corpus(tmp_path / "in", 3000)
    options = [
        "--model",
        str(tiny_bundle),
        "--variant",
        "fp32",
        "--threads",
        "1",
        "--part-docs",
        "150",
    ]
    reference = tmp_path / "reference.parquet"
    started = time.monotonic()
    subprocess.run(
        cli("annotate", str(corpus), str(reference), *options), check=True, capture_output=True
    )
    full = time.monotonic() - started
    started = time.monotonic()
    subprocess.run(  # a no-op on a complete output: what starting up costs
        cli("annotate", str(corpus), str(reference), *options), check=True, capture_output=True
    )
    startup = min(time.monotonic() - started, full / 2)

    out = tmp_path / "out.parquet"
    rng = random.Random(20261125)
    part_seconds = (full - startup) / 20  # 3000 documents in parts of 150

    def documents_done() -> int:
        try:
            return json.loads((out / "_manifest.json").read_text())["documents_done"]
        except (OSError, ValueError):
            return 0  # not written yet

    # 20 kill points spread over the whole job: a seeded target of committed documents, then a
    # random moment within the next part (while it is tagged, written, renamed or recorded).
    targets = sorted(rng.uniform(0, 2850) for _ in range(20))
    killed_at = []
    for target in targets:
        process = subprocess.Popen(
            cli("annotate", str(corpus), str(out), *options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while process.poll() is None and documents_done() < target:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, part_seconds))
        assert process.poll() is None, "finished before the kill point"
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(documents_done())
        assert not (out / "_SUCCESS").exists()
    done = subprocess.run(
        cli("annotate", str(corpus), str(out), *options), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (out / "_SUCCESS").exists()
    assert sorted_rows(out) == sorted_rows(reference)
    assert sorted_rejects(out) == sorted_rejects(reference)
    assert accounting(out) == accounting(reference)
    # The kills fell at many different stages of the work, not all before the first commit: the
    # seeded targets fall in 10 different parts, and a slow machine may merge a couple of them.
    assert len(set(killed_at)) >= 8, killed_at
    assert killed_at == sorted(killed_at)  # committed work is never lost or redone
    # A complete output: the same command again is a no-op that says so.
    again = subprocess.run(
        cli("annotate", str(corpus), str(out), *options), capture_output=True, text=True
    )
    assert again.returncode == 0 and "already complete" in again.stdout


def test_second_run_on_the_same_output_fails_at_once(tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "in", 3000)
    out = tmp_path / "out.parquet"
    options = ["--model", str(tiny_bundle), "--variant", "fp32", "--threads", "1"]
    first = subprocess.Popen(
        cli("annotate", str(corpus), str(out), *options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # wait until it holds the lock
            if (out / "_lock").exists():
                break
            time.sleep(0.05)
        second = subprocess.run(
            cli("annotate", str(corpus), str(out), *options),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"is being written by another annotate run (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def fuzz_bytes(rng: random.Random) -> bytes:
    pieces = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))),
        lambda: "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 20))).encode(
            "utf-8", "surrogatepass"
        ),
        lambda: b"\n" * rng.randint(1, 3),
        lambda: b"\x00\r\t\x1b",
        lambda: json.dumps({"text": rng.choice(["", "Paris", "\u0301\u200b", "😀" * 5])}).encode(),
        lambda: b'{"text": ' + bytes(rng.randrange(256) for _ in range(5)) + b"}",
    ]
    return b"".join(rng.choice(pieces)() for _ in range(rng.randint(0, 30)))


def count_lines(data: bytes, skip_blank: bool) -> int:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    return sum(1 for line in lines if line.strip() or not skip_blank)


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_files_are_fully_accounted_for(tiny_bundle, tmp_path, seed):
    """Random bytes and strings in every format: no crash, and every document is counted."""
    rng = random.Random(seed)
    root = tmp_path / "in"
    root.mkdir()
    expected_lines = 0  # documents of the lines-based formats
    expected_files = 0  # documents of whole-file .txt
    for i in range(12):
        data = fuzz_bytes(rng)
        kind = rng.choice(["txt", "jsonl", "txt.gz", "jsonl.gz"])
        path = root / f"f{i:02d}.{kind}"
        path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
        if kind.startswith("jsonl"):
            expected_lines += count_lines(data, skip_blank=True)
        else:
            expected_files += 1
    texts = [
        "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(0, 50)))
        for _ in range(20)
    ]
    pq.write_table(pa.table({"text": texts + [None]}), root / "table.parquet")
    for mode in ("file", "lines"):
        out = tmp_path / f"out-{mode}.parquet"
        summary = run(tiny_bundle, [root], out, read=ReadOptions(txt_mode=mode))
        counts = accounting(out)
        assert summary["documents"] == counts["documents"]
        if mode == "file":
            assert counts["documents"] == expected_lines + expected_files + 21
        table = pq.read_table(out)
        for doc_id, start, end, text in zip(
            *(table.column(c).to_pylist() for c in ("doc_id", "start", "end", "text")), strict=True
        ):
            assert 0 <= start < end and len(text) == end - start, doc_id


def test_truncated_lines_mode_counts_match(tiny_bundle, tmp_path):
    """In lines mode every line of a .txt is a document, blank ones included."""
    data = b"Paris\n\n\xff\xfe\nMary \x00 Smith\r\nlast line without newline"
    path = tmp_path / "in" / "lines.txt"
    path.parent.mkdir()
    path.write_bytes(data)
    summary = run(tiny_bundle, [path], tmp_path / "out.parquet", read=ReadOptions(txt_mode="lines"))
    assert (summary["documents"], summary["annotated"], summary["rejected"]) == (5, 4, 1)


def test_empty_files_and_documents(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "empty.txt").write_bytes(b"")  # one document, empty: annotated, no spans
    (root / "empty.jsonl").write_bytes(b"")  # no documents at all
    (root / "blank.jsonl").write_bytes(b'{"id": "e", "text": ""}\n')  # an empty document
    summary = run(tiny_bundle, [root], tmp_path / "out.parquet")
    assert (summary["documents"], summary["annotated"], summary["rejected"]) == (2, 2, 0)


def test_unreadable_entries_in_a_directory_are_rejected(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.txt").write_text("John Smith visited Paris .")
    os.symlink(root / "loop.txt", root / "loop.txt")  # a link to itself: ELOOP on open
    os.symlink(root / "gone.txt", root / "dangling.txt")
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "back")  # a directory loop: walked once
    out = tmp_path / "out.parquet"
    summary = run(tiny_bundle, [root], out)
    assert (summary["annotated"], summary["rejected"]) == (1, 2)
    reasons = {r[0]: r[3] for r in sorted_rejects(out)}
    assert reasons[str(root / "loop.txt")].startswith("cannot read: Too many levels of symbolic")
    assert reasons[str(root / "dangling.txt")] == "cannot read: No such file or directory"


def test_a_named_symlink_loop_is_an_error(tiny_bundle, tmp_path):
    from ner_batch.errors import InputError

    os.symlink(tmp_path / "loop.txt", tmp_path / "loop.txt")
    with pytest.raises(InputError, match="loop.txt: no such file or directory"):
        run(tiny_bundle, [tmp_path / "loop.txt"], tmp_path / "out.parquet")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_stops_with_a_clear_error_and_stays_resumable(tiny_bundle, tmp_path, small_disk):
    corpus = write_corpus(tmp_path / "in", 1500, seed=3)
    reference = tmp_path / "reference.parquet"
    run(tiny_bundle, [corpus], reference, part_docs=100)
    # Leave a little room: the first parts fit, a later one does not.
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 40 * 1024))
    out = small_disk / "out.parquet"
    with pytest.raises(OutputError, match="No space left on device.*stays resumable"):
        run(tiny_bundle, [corpus], out, part_docs=100)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    done_before = accounting(out)["documents"] if (out / "_manifest.json").exists() else 0
    filler.unlink()
    summary = run(tiny_bundle, [corpus], out, part_docs=100)
    assert summary["documents_this_run"] == summary["documents"] - done_before
    assert sorted_rows(out) == sorted_rows(reference)
    assert sorted_rejects(out) == sorted_rejects(reference)


@pytest.mark.slow
def test_a_50_mb_single_document(tiny_bundle, tmp_path):
    """One 50 MB document: annotated whole (every word labelled, offsets exact), in bounded
    memory (tokenised in pieces)."""
    import resource

    rng = random.Random(50)
    words = ["John", "Smith", "visited", "Paris", "and", "met", "Mary", "in", "London", "."]
    path = tmp_path / "in" / "huge.txt"
    path.parent.mkdir()
    with open(path, "w") as f:
        size = 0
        while size < 50_000_000:
            line = " ".join(rng.choice(words) for _ in range(200)) + "\n"
            f.write(line)
            size += len(line)
    out = tmp_path / "out.parquet"
    summary = run(tiny_bundle, [path], out)
    assert (summary["documents"], summary["annotated"]) == (1, 1)
    assert summary["tokens"] > 8_000_000
    text = path.read_text()
    table = pq.read_table(out, columns=["start", "end", "text"])
    starts, ends = table.column("start").to_pylist(), table.column("end").to_pylist()
    assert all(
        text[s:e] == t
        for s, e, t in zip(starts, ends, table.column("text").to_pylist(), strict=True)
    )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    assert peak_gb < 6, f"peak RSS {peak_gb:.1f} GB"
