"""Kill the real CLI at any moment, with the DEFAULT options (int8, --part-docs 20000), and run the
same command again: the output must be the uninterrupted run's, row for row, scores included.

int8 is the hard case: dynamic quantisation scales each batch as a whole, so a span's score
depends on which windows share its batch. A resumed run must therefore form the very batches of
an uninterrupted one (runs commit only at chunk bounds that follow from the input and the
settings; see run.run_settings)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_reliability import cli, sorted_rejects, write_corpus


def rows(out: Path) -> list[tuple]:
    table = pq.read_table(out)
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def counts(out: Path) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    c = manifest["counts"]
    assert c["documents"] == c["annotated"] + c["rejected"] == manifest["documents_done"]
    return c


def annotate(corpus: Path, out: Path, *options: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli("annotate", str(corpus), str(out), *options),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_kill_9_at_40_moments_from_process_start_with_default_options(tiny_bundle, tmp_path):
    """40 SIGKILLs spread from the moment the process starts to the moment it would finish
    (under 20,000 documents, the default part is the whole run: every kill before its end lands
    before the first commit). Each time the same command runs again; the last run completes."""
    corpus = write_corpus(tmp_path / "in", 3000)
    options = ("--model", str(tiny_bundle))  # everything else: the defaults
    reference = tmp_path / "reference.parquet"
    started = time.monotonic()
    first = annotate(corpus, reference, *options)
    assert first.returncode == 0, first.stderr
    full = time.monotonic() - started

    out = tmp_path / "out.parquet"
    rng = random.Random(20261201)
    moments = sorted(rng.uniform(0, full) for _ in range(40))
    finished_early = 0
    for moment in moments:
        process = subprocess.Popen(
            cli("annotate", str(corpus), str(out), *options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(moment)
        if process.poll() is not None:  # done before this moment (a fast start): fine
            assert process.returncode == 0, process.stderr.read()
            finished_early += 1
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = annotate(corpus, out, *options)
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr
    assert (out / "_SUCCESS").exists()
    assert rows(out) == rows(reference)
    assert sorted_rejects(out) == sorted_rejects(reference)
    assert counts(out) == counts(reference)
    assert finished_early < 20, "most kills must land while the run is under way"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_sigterm_at_random_moments_resumes_to_identical_int8_rows(tiny_bundle, tmp_path):
    """SIGTERM commits where the run is (at the end of the chunk being read) and exits; the
    resumed runs must give the int8 rows of an uninterrupted run, scores to the last bit."""
    corpus = write_corpus(tmp_path / "in", 9000)
    # Small chunks and parts, so that several SIGTERMs land in different chunks of one part.
    options = ("--model", str(tiny_bundle), "--part-docs", "2500")
    reference = tmp_path / "reference.parquet"
    started = time.monotonic()
    assert annotate(corpus, reference, *options).returncode == 0
    full = time.monotonic() - started

    out = tmp_path / "out.parquet"
    rng = random.Random(7)
    stops = []
    for _ in range(6):
        process = subprocess.Popen(
            cli("annotate", str(corpus), str(out), *options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0.3, full))
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert "unexpected" not in stderr, stderr
        if process.returncode == 0:
            break
        assert process.returncode == 1 and "stopped by SIGTERM" in stderr, stderr
        stops.append(json.loads((out / "_manifest.json").read_text())["documents_done"])
    done = annotate(corpus, out, *options)
    assert done.returncode == 0, done.stderr
    assert rows(out) == rows(reference)
    assert sorted_rejects(out) == sorted_rejects(reference)
    assert counts(out) == counts(reference)
    assert stops, "at least one run was stopped"


def kill_once_begun(corpus: Path, out: Path, *options: str) -> None:
    """Start the CLI and SIGKILL it as soon as its first manifest exists (before any commit)."""
    process = subprocess.Popen(
        cli("annotate", str(corpus), str(out), *options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(3000):
        if (out / "_manifest.json").exists():
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_resume_with_other_batching_is_refused(tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "in", 300)
    out = tmp_path / "out.parquet"
    options = ("--model", str(tiny_bundle), "--part-docs", "40")
    kill_once_begun(corpus, out, *options)
    other = annotate(corpus, out, *options, "--batch-size", "8")
    assert other.returncode == 1
    assert "batch_size 32, now 8" in other.stderr
    assert annotate(corpus, out, *options).returncode == 0
