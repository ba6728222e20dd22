"""Start-up after the first run: `--runtime auto` remembers the probe's choice per bundle
content, precision, window, threads, CPU and runtime versions (probe.py's cache), loads only
the chosen runtime when it is remembered, and OpenVINO keeps its compiled models; a missing,
corrupt, unwritable or foreign cache means timing again, never an error.

Real runtimes on the tiny bundle with the openvino variant (which one wins its probe is noise
on a busy machine: no test depends on it). Every test points the cache ($NERBATCH_CACHE) at
its own tmp directory. Whether the probe ran is read from the log and the manifest, never from
timing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import write_jsonl
from test_kills import rows
from test_reliability import cli

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
pytest.importorskip("nncf", reason="the [openvino] extra is not installed")

from ner_batch import probe  # noqa: E402
from ner_batch.bundle import load_bundle, sha256_of  # noqa: E402
from ner_batch.runtimes import open_tagger  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """This test's cache directory (not yet made), for this process and its subprocesses."""
    path = tmp_path / "cache"
    monkeypatch.setenv("NERBATCH_CACHE", str(path))
    return path


def annotate(corpus: Path, out: Path, *options: str) -> tuple[subprocess.CompletedProcess, list]:
    """The CLI with --verbose JSON logs: the process and its log events."""
    command = cli("--verbose", "annotate", str(corpus), str(out), *options)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result, events


def runtime_event(events: list[dict]) -> dict:
    return next(e for e in events if e.get("event") == "runtime")


def loaded(events: list[dict]) -> list[str]:
    """The runtimes the run loaded, in order."""
    return [e["runtime"] for e in events if e.get("event") == "runtime_loaded"]


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def corpus(path: Path) -> Path:
    texts = ["Mary met John in Paris .", "Acme Corp said Peter Blackburn was in Berlin ."]
    return write_jsonl(path, [{"id": str(i), "text": texts[i % 2]} for i in range(20)])


def tagger_choice(bundle: Path, **options) -> dict:
    """The runtime choice of a Tagger on `bundle`'s int8 variant, `--runtime auto`."""
    return open_tagger(load_bundle(bundle), "int8", **options).runtime


def probed(choice: dict) -> bool:
    """Whether the choice was timed by this call (not taken from the cache)."""
    return "cached" not in choice and set(choice["tokens_per_second"]) == {
        "onnxruntime",
        "openvino",
    }


def test_a_second_run_takes_the_choice_from_the_cache_and_loads_one_runtime(
    ov_bundle, tmp_path, cache
):
    inputs = corpus(tmp_path / "in.jsonl")
    first, events = annotate(inputs, tmp_path / "first", "--model", str(ov_bundle))
    assert first.returncode == 0, first.stderr
    timed = runtime_event(events)
    assert "timed here" in timed["message"] and "cached" not in timed
    assert sorted(loaded(events)) == ["onnxruntime", "openvino"]
    recorded = manifest(tmp_path / "first")["runtime_choice"]
    assert probed(recorded)
    assert (cache / probe.CACHE_FILE).is_file()

    second, events = annotate(inputs, tmp_path / "second", "--model", str(ov_bundle))
    assert second.returncode == 0, second.stderr
    remembered = runtime_event(events)
    assert remembered["cached"] is True
    assert "remembered from the probe of" in remembered["message"]
    assert remembered["tokens_per_second"] == recorded["tokens_per_second"]  # its figures
    assert loaded(events) == [recorded["runtime"]]  # the other runtime is not even loaded
    choice = manifest(tmp_path / "second")["runtime_choice"]
    assert choice["cached"] is True and choice["probed"]
    assert {k: choice[k] for k in recorded if k != "reason"} == {
        k: recorded[k] for k in recorded if k != "reason"
    }
    assert manifest(tmp_path / "second")["settings"] == manifest(tmp_path / "first")["settings"]
    assert rows(tmp_path / "second") == rows(tmp_path / "first")


def test_a_remembered_openvino_choice_compiles_only_openvino_from_its_cache(
    ov_bundle, tmp_path, cache
):
    """The first run compiles OpenVINO into its CACHE_DIR under the cache; a run whose
    remembered choice is OpenVINO loads only OpenVINO, from that compiled blob."""
    inputs = corpus(tmp_path / "in.jsonl")
    first, _ = annotate(inputs, tmp_path / "first", "--model", str(ov_bundle))
    assert first.returncode == 0, first.stderr
    blobs = list((cache / "openvino").glob("*/*.blob"))
    assert blobs, sorted(p.name for p in cache.rglob("*"))

    file = cache / probe.CACHE_FILE
    data = json.loads(file.read_text())
    for entry in data["choices"].values():
        entry["choice"]["runtime"] = "openvino"
    file.write_text(json.dumps(data))
    second, events = annotate(inputs, tmp_path / "second", "--model", str(ov_bundle))
    assert second.returncode == 0, second.stderr
    assert runtime_event(events)["runtime"] == "openvino"
    assert loaded(events) == ["openvino"]
    compiled = next(e for e in events if e.get("event") == "openvino_compile")
    assert "loaded from its cache" in compiled["message"]

    explicit, _ = annotate(
        inputs, tmp_path / "explicit", "--model", str(ov_bundle), "--runtime", "openvino"
    )
    assert explicit.returncode == 0, explicit.stderr
    assert rows(tmp_path / "second") == rows(tmp_path / "explicit")


def test_runtime_given_skips_the_probe_and_the_cache(ov_bundle, cache):
    choice = tagger_choice(ov_bundle, runtime="onnxruntime")
    assert choice == {"runtime": "onnxruntime", "reason": "--runtime onnxruntime"}
    assert not (cache / probe.CACHE_FILE).exists()


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": 99, "choices": {}}', '{"format": 1, "choices": []}', "\xff"],
)
def test_a_corrupt_cache_file_means_timing_again(ov_bundle, cache, content, caplog):
    cache.mkdir()
    (cache / probe.CACHE_FILE).write_text(content, encoding="latin-1")
    with caplog.at_level(logging.INFO, logger="ner_batch.probe"):
        assert probed(tagger_choice(ov_bundle))
    assert "timing again" in caplog.text
    assert tagger_choice(ov_bundle)["cached"] is True  # rewritten whole by the probe


@pytest.mark.parametrize(
    "change",
    [
        lambda choice: choice.update(tokens_per_second={"onnxruntime": "fast"}),
        lambda choice: choice.update(runtime="tensorrt"),
        lambda choice: choice.pop("reason"),
        lambda choice: choice.update(cpu=None),
    ],
)
def test_a_cache_entry_of_wrong_types_means_timing_again(ov_bundle, cache, change, caplog):
    tagger_choice(ov_bundle)
    file = cache / probe.CACHE_FILE
    data = json.loads(file.read_text())
    for entry in data["choices"].values():
        change(entry["choice"])
    file.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="ner_batch.probe"):
        assert probed(tagger_choice(ov_bundle))
    assert "ignoring the remembered runtime choice" in caplog.text
    assert tagger_choice(ov_bundle)["cached"] is True


def test_a_cache_that_cannot_be_read_or_written_means_timing_every_time(ov_bundle, cache, caplog):
    """The cache file's name taken by a directory: reading and the atomic rename both fail
    (as in a read-only cache, also for root)."""
    (cache / probe.CACHE_FILE).mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="ner_batch.probe"):
        assert probed(tagger_choice(ov_bundle))
        assert probed(tagger_choice(ov_bundle))
    assert "cannot remember the runtime choice" in caplog.text
    assert not list(cache.glob("*.tmp"))  # no temporary left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_directory_is_read_but_not_written(ov_bundle, cache):
    tagger_choice(ov_bundle)
    cache.chmod(0o555)
    try:
        assert tagger_choice(ov_bundle)["cached"] is True  # a pre-filled read-only cache
        assert probed(tagger_choice(ov_bundle, threads=1))  # a new key: timed, not stored
        assert probed(tagger_choice(ov_bundle, threads=1))
    finally:
        cache.chmod(0o755)


def test_another_cpu_threads_or_streams_means_timing_again(ov_bundle, monkeypatch):
    assert probed(tagger_choice(ov_bundle))
    assert tagger_choice(ov_bundle)["cached"] is True
    assert probed(tagger_choice(ov_bundle, threads=1))
    assert tagger_choice(ov_bundle, threads=1)["cached"] is True
    from ner_batch.tagger import TaggerOptions

    assert probed(tagger_choice(ov_bundle, options=TaggerOptions(streams=1)))

    summary = probe.cpu_summary()
    monkeypatch.setattr(probe, "cpu_summary", lambda: {**summary, "name": "Another CPU"})
    assert probed(tagger_choice(ov_bundle))
    monkeypatch.setattr(probe, "cpu_summary", lambda: {**summary, "features": ["avx2"]})
    assert probed(tagger_choice(ov_bundle))
    monkeypatch.setattr(probe, "cpu_summary", lambda: summary)
    assert tagger_choice(ov_bundle)["cached"] is True


def test_the_choice_belongs_to_the_bundle_content_not_its_path(ov_bundle, tmp_path):
    """A copy of the bundle elsewhere shares the choice; a bundle whose int8 model differs
    (here the fp32 graph in its place, checksum updated) is timed again."""
    assert probed(tagger_choice(ov_bundle))
    copy = shutil.copytree(ov_bundle, tmp_path / "copy")
    assert tagger_choice(copy)["cached"] is True

    other = shutil.copytree(ov_bundle, tmp_path / "other")
    meta = json.loads((other / "bundle.json").read_text())
    int8 = other / meta["variants"]["int8"]["file"]
    shutil.copyfile(other / meta["variants"]["fp32"]["file"], int8)
    meta["variants"]["int8"]["sha256"] = sha256_of(int8)
    (other / "bundle.json").write_text(json.dumps(meta))
    assert probed(tagger_choice(other))


def test_the_cli_runs_with_default_options_when_the_cache_cannot_be_made(
    ov_bundle, tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NERBATCH_CACHE", str(blocker / "cache"))  # ENOTDIR, root or not
    inputs = corpus(tmp_path / "in.jsonl")
    for out in ("first", "second"):
        result, events = annotate(inputs, tmp_path / out, "--model", str(ov_bundle))
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert probed(manifest(tmp_path / out)["runtime_choice"])
        messages = " ".join(e["message"] for e in events)
        assert "cannot remember the runtime choice" in messages
        assert "compile cache" in messages  # OpenVINO compiled without it
        assert (tmp_path / out / "_SUCCESS").exists()


def test_concurrent_writers_never_leave_a_torn_cache(cache):
    """Writers in threads (the rename is as atomic between processes) and a reader: the file
    is always whole JSON with every field, and no temporary file is left."""
    choice = {
        "runtime": "onnxruntime",
        "reason": "timed here",
        "tokens_per_second": {"onnxruntime": 2.0, "openvino": 1.0},
        "probe_seconds": 1.0,
        "cpu": {},
    }
    problems: list[str] = []
    stop = threading.Event()

    def write(n: int) -> None:
        for i in range(30):
            probe.remember(f"{n}-{i}", choice)

    def read() -> None:
        while not stop.is_set():
            if (cache / probe.CACHE_FILE).exists():
                entries = probe._read_entries(cache / probe.CACHE_FILE)
                if entries is None:
                    problems.append("unusable cache seen")

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert not problems
    entries = probe._read_entries(cache / probe.CACHE_FILE)
    assert 1 <= len(entries) <= probe.CACHE_ENTRIES
    assert probe.recall(next(iter(entries)), ["onnxruntime", "openvino"])["cached"] is True
    assert [p.name for p in cache.iterdir()] == [probe.CACHE_FILE]
