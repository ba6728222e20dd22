"""The seams of a run and the defects they hid: reordered and touched inputs, the committer's
accounting, Ray's options in the library, Arrow rows kept Arrow, the typed manifest and its
older format, the package version. Through the real CLI on default options where a user meets
them."""

from __future__ import annotations

import importlib.metadata
import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import ner_batch
import ner_batch.annotate as annotate_module
from ner_batch.cli import cli
from ner_batch.committer import Committer
from ner_batch.errors import OptionError, OutputError
from ner_batch.manifest import MANIFEST_FORMAT, Manifest
from ner_batch.output import SPAN_SCHEMA, PartWriter
from ner_batch.run import RayOptions

PACKAGE = Path(ner_batch.__file__).parent


class Crash(Exception):
    """Stands for kill -9."""


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"{path.stem}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)
        )
    )
    return path


def two_inputs(tmp_path: Path, n: int = 30) -> tuple[Path, Path]:
    a = write_jsonl(tmp_path / "a.jsonl", [f"John Smith went to Paris {i} ." for i in range(n)])
    b = write_jsonl(tmp_path / "b.jsonl", [f"Mary Jones met EU officials {i} ." for i in range(n)])
    return a, b


def crash_after(documents: int, monkeypatch, start) -> None:
    """Run `start()` with the input stream crashing (as kill -9) after `documents` documents."""
    real = annotate_module.documents

    def crashing(files, read, *position):
        for n, item in enumerate(real(files, read, *position)):
            if n == documents:
                raise Crash
            yield item

    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing)
        with pytest.raises(Crash):
            start()


def annotate_cli(*arguments) -> object:
    return CliRunner().invoke(cli, ["--log-format", "text", "annotate", *map(str, arguments)])


def rows(out: Path) -> list[dict]:
    return pq.read_table(out).to_pylist()


def manifest_of(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


# --- inputs given in another order, inputs only touched -------------------------------------------


def test_the_same_inputs_in_another_order_are_the_same_run(tiny_bundle, tmp_path):
    """Default options through the CLI: a complete output stays complete (exit 0, no
    "unexpected IndexError"), whatever the order of the inputs on the rerun."""
    a, b = two_inputs(tmp_path)
    out = tmp_path / "out.parquet"
    first = annotate_cli(a, b, out, "--model", tiny_bundle)
    assert first.exit_code == 0, first.output
    again = annotate_cli(b, a, out, "--model", tiny_bundle)
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output and "unexpected" not in again.output


def test_a_resumed_run_reads_reordered_inputs_in_the_recorded_order(run, tmp_path, monkeypatch):
    a, b = two_inputs(tmp_path)
    reference = tmp_path / "reference.parquet"
    run([a, b], reference, part_docs=10, chunk_docs=4)
    out = tmp_path / "out.parquet"
    crash_after(25, monkeypatch, lambda: run([a, b], out, part_docs=10, chunk_docs=4))
    assert manifest_of(out)["documents_done"] == 20
    run([b, a], out, part_docs=10, chunk_docs=4)
    assert rows(out) == rows(reference)  # the same rows in the same order
    assert [i["path"] for i in manifest_of(out)["inputs"]] == [str(a), str(b)]


def test_a_touched_input_keeps_a_complete_output_complete(tiny_bundle, tmp_path):
    """Same bytes, a new mtime (a copy that does not keep times): the scheduled rerun is a no-op;
    the same size with other bytes is still refused."""
    a, b = two_inputs(tmp_path)
    out = tmp_path / "out.parquet"
    assert annotate_cli(a, b, out, "--model", tiny_bundle).exit_code == 0
    stamp = a.stat().st_mtime_ns
    os.utime(a, ns=(stamp + 10**9, stamp + 10**9))
    again = annotate_cli(a, b, out, "--model", tiny_bundle)
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output
    text = a.read_text()
    a.write_text(text.replace("John", "Jack"))  # the same size, other bytes
    refused = annotate_cli(a, b, out, "--model", tiny_bundle)
    assert refused.exit_code == 1
    assert f"the inputs changed since the run that wrote it (e.g. {a}" in refused.output


# --- the committer's accounting -------------------------------------------------------------------


def test_a_document_read_but_never_written_fails_the_run(run, tmp_path, monkeypatch):
    a, _ = two_inputs(tmp_path)
    real_add = Committer.add

    def add_dropping_one(self, documents, spans, tokens, position):
        real_add(self, documents[:-1], spans[:-1], tokens, position)  # one document lost

    monkeypatch.setattr(Committer, "add", add_dropping_one)
    out = tmp_path / "out.parquet"
    with pytest.raises(
        OutputError, match=r"accounting mismatch .* 30 documents read, 29 annotated"
    ):
        run([a], out)
    assert not (out / "_SUCCESS").exists()


# --- Ray's options are the library's to check -----------------------------------------------------


def test_ray_options_without_the_ray_engine_are_refused_by_the_library(run, tmp_path):
    a, _ = two_inputs(tmp_path)
    with pytest.raises(OptionError, match="--gpus-per-worker need --engine ray"):
        run([a], tmp_path / "out.parquet", ray=RayOptions(num_workers=2))
    assert not (tmp_path / "out.parquet").exists()


def test_ray_option_errors_are_usage_errors(tmp_path):
    a, _ = two_inputs(tmp_path)
    result = annotate_cli(a, tmp_path / "out", "--engine", "ray", "--threads", "2")
    assert result.exit_code == 2, result.output
    assert "--threads sets the local engine's ONNX Runtime threads" in result.output


# --- rows stay Arrow ------------------------------------------------------------------------------


def test_arrow_span_rows_are_written_without_python_objects():
    n = 300_000
    table = pa.table(
        {
            "doc_id": pa.array([f"d{i % 1000}" for i in range(n)]),
            "source": pa.array(["s"] * n),
            "start": pa.array(range(n), pa.int64()),
            "end": pa.array(range(1, n + 1), pa.int64()),
            "label": pa.array(["PER"] * n),
            "text": pa.array(["x"] * n),
            "score": pa.array([0.5] * n, pa.float32()),
            "model": pa.array(["m"] * n),
        },
        schema=SPAN_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with PartWriter(sink, row_group_size=n + 1) as writer:
        tracemalloc.start()
        writer.add_table(table)  # buffered, not yet written: a Python copy would show here
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 2_000_000, f"{peak:,} bytes of Python objects for {n:,} Arrow rows"
    assert pq.read_table(pa.BufferReader(sink.getvalue())).equals(table)


# --- the manifest ---------------------------------------------------------------------------------


def as_format_1(manifest: dict) -> dict:
    """The manifest as nerbatch 0.1 wrote it: format 1, version 0.1.0, no runtime, device,
    engine or batching settings."""
    old = json.loads(json.dumps(manifest))
    old["format"] = "nerbatch-annotate/1"
    old["versions"] = {"nerbatch": "0.1.0"}
    for key in ("runtime", "device", "engine", "batch_size", "max_batch_tokens"):
        old["settings"].pop(key)
    for key in ("chunk_docs", "chunk_chars", "part_docs"):
        old["settings"].pop(key)
    return old


def test_an_output_of_the_previous_format_resumes(run, tmp_path, monkeypatch):
    a, b = two_inputs(tmp_path)
    reference = tmp_path / "reference.parquet"
    run([a, b], reference, part_docs=10)
    out = tmp_path / "out.parquet"
    crash_after(35, monkeypatch, lambda: run([a, b], out, part_docs=10))
    (out / "_manifest.json").write_text(json.dumps(as_format_1(manifest_of(out))))
    summary = run([a, b], out, part_docs=10)
    assert summary["documents_this_run"] == 30 and summary["runtime"] == "onnxruntime"
    assert rows(out) == rows(reference)
    manifest = manifest_of(out)
    assert manifest["format"] == MANIFEST_FORMAT == "nerbatch-annotate/2"
    assert manifest["settings"]["runtime"] == "onnxruntime"
    assert manifest["settings"]["part_docs"] == 10  # recorded from now on


def test_a_manifest_of_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(OutputError, match="has format 'nerbatch-annotate/9'"):
        Manifest.from_json({"format": "nerbatch-annotate/9"})
    with pytest.raises(OutputError, match="is damaged"):
        Manifest.from_json({"format": MANIFEST_FORMAT, "counts": {"documents": 1, "pages": 2}})


def test_the_manifest_round_trips_and_records_the_real_version(run, tmp_path):
    a, _ = two_inputs(tmp_path)
    out = tmp_path / "out.parquet"
    run([a], out)
    data = manifest_of(out)
    assert Manifest.from_json(data).to_json() == data
    assert data["versions"]["nerbatch"] == ner_batch.__version__
    assert ner_batch.__version__ == importlib.metadata.version("nerbatch")


# --- the code -------------------------------------------------------------------------------------


def test_every_module_logger_is_used():
    unused = []
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        if "\nlog = logging.getLogger(__name__)" in source and source.count("log.") == 0:
            unused.append(path.name)
    assert unused == []
