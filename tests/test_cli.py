"""The command line: exit codes, the exact `Error:` line of each failure, help text with an
example on every command, JSON-lines logs, a lean import, and the gold -> corpus -> annotate ->
score round trip on the tiny data."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import build_corpus, copy_bundle, write_jsonl

from ner_batch.bundle import load_bundle, sha256_of
from ner_batch.cli import cli
from ner_batch.errors import BundleError

SUMMARY = re.compile(
    r"^(\d+) documents \((\d+) annotated, (\d+) rejected\), \d+ tokens, (\d+) spans in "
    r"[\d.]+s \(\d+ tokens/s\) -> (.+)$"
)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_error(result, code: int, line: str) -> None:
    """Exit code and the whole of stderr: one `Error:` line, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stderr == f"Error: {line}\n"
    assert "Traceback" not in result.output


@pytest.fixture
def corpus(tmp_path):
    return build_corpus(tmp_path)


# --- help ----------------------------------------------------------------------------------------


def test_every_command_has_help_with_an_example():
    assert cli.commands, "no commands registered"
    for name, command in cli.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert command.help and "Example" in result.stdout, name
        assert "Usage:" in result.stdout
    top = invoke("--help")
    assert top.exit_code == 0 and "Example" in top.stdout
    for name in ("train", "export", "annotate", "score", "gold2corpus"):
        assert name in top.stdout


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("nerbatch, version ")


# --- errors --------------------------------------------------------------------------------------


def test_missing_bundle(corpus, tmp_path):
    missing = tmp_path / "no-bundle"
    result = invoke("annotate", corpus, tmp_path / "out", "--model", missing)
    assert_error(
        result,
        1,
        f"model bundle {missing} does not exist (make one with `nerbatch export CHECKPOINT "
        f"--out {missing}`, or point --model at an existing bundle)",
    )


def test_corrupted_checksum(corpus, tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    model = bundle / "model.int8.onnx"  # the variant `auto` picks on CPU
    expected = sha256_of(model)
    model.write_bytes(model.read_bytes()[:-10])
    found = sha256_of(model)
    result = invoke("annotate", corpus, tmp_path / "out", "--model", bundle)
    assert_error(
        result,
        1,
        f"bundle {bundle}: model.int8.onnx does not match its checksum in bundle.json "
        f"(expected sha256 {expected[:12]}…, found {found[:12]}…); the file is corrupt or was "
        "changed after export: export the bundle again",
    )
    assert not (tmp_path / "out").exists()


def test_unknown_variant_is_a_usage_error(corpus, tiny_bundle, tmp_path):
    result = invoke("annotate", corpus, tmp_path / "out", "--model", tiny_bundle, "--variant", "q4")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--variant': 'q4' is not one of 'auto', 'fp32', 'int8', 'fp16', "
        "'bf16'.\n"
    )
    assert result.stderr.startswith("Usage: ")


def test_empty_input_directory(tiny_bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no inputs here")
    result = invoke("annotate", empty, tmp_path / "out", "--model", tiny_bundle)
    assert_error(
        result,
        1,
        f"{empty}: the directory holds no input files (.jsonl, .ndjson, .parquet, .txt, "
        "optionally .gz)",
    )


def test_nonexistent_input(tiny_bundle, tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = invoke("annotate", missing, tmp_path / "out", "--model", tiny_bundle)
    assert_error(result, 1, f"{missing}: no such file or directory")


def test_bad_stride_is_one_error_line(corpus, tiny_bundle, tmp_path):
    result = invoke("annotate", corpus, tmp_path / "out", "--model", tiny_bundle, "--stride", 50)
    assert_error(  # an option out of range: a usage error, as click's own range checks
        result,
        2,
        "stride 50 must be >= 0 and smaller than the window (30 sub-tokens at max_length 32)",
    )


def test_output_is_a_file(corpus, tiny_bundle, tmp_path):
    out = tmp_path / "out.parquet"
    out.write_text("not a directory")
    result = invoke("annotate", corpus, out, "--model", tiny_bundle)
    assert_error(result, 1, f"{out} exists and is not a directory; choose another output")


def test_debug_shows_the_exception(tmp_path, corpus):
    result = invoke("--debug", "annotate", corpus, tmp_path / "out", "--model", tmp_path / "nope")
    assert result.exit_code == 1
    assert isinstance(result.exception, BundleError)


def test_score_needs_exactly_one_source(tiny_conll):
    result = invoke("score", tiny_conll)
    assert result.exit_code == 2
    assert "Error: give exactly one of --model or --predictions" in result.stderr


# --- annotate ------------------------------------------------------------------------------------


def test_annotate_prints_the_summary(corpus, tiny_bundle, tmp_path):
    out = tmp_path / "out.parquet"
    result = invoke(
        "--log-format", "text", "annotate", corpus, out, "--model", tiny_bundle, "--variant", "fp32"
    )
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    match = SUMMARY.match(line)
    assert match, line
    documents, annotated, rejected, spans, target = match.groups()
    assert (int(documents), int(annotated), int(rejected)) == (34, 34, 0)
    assert target == str(out)
    assert int(spans) == pq.read_table(out).num_rows
    assert not any(line.startswith("{") for line in result.stderr.splitlines())

    again = invoke("annotate", corpus, out, "--model", tiny_bundle, "--variant", "fp32")
    assert again.exit_code == 0
    assert again.stdout == f"{out} is already complete (34 documents): nothing to do\n"


def bad_corpus(tmp_path):
    return write_jsonl(
        tmp_path / "in" / "docs.jsonl",
        [{"id": "a", "text": "John Smith visited Paris ."}, {"id": "b"}, {"id": "c", "text": 3}],
    )


def test_fail_on_reject_exits_3(tiny_bundle, tmp_path):
    path = bad_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    plain = invoke("annotate", path, out, "--model", tiny_bundle)
    assert plain.exit_code == 0, plain.output
    assert SUMMARY.match(plain.stdout.strip()).group(3) == "2"

    strict = invoke("annotate", path, out, "--model", tiny_bundle, "--fail-on-reject")
    assert strict.exit_code == 3  # also when the output was already complete
    assert strict.stderr.splitlines()[-1] == (
        f"Error: 2 documents were rejected (see {out}/_rejects/)"
    )
    fresh = invoke("annotate", path, tmp_path / "fresh", "--model", tiny_bundle, "--fail-on-reject")
    assert fresh.exit_code == 3
    assert (tmp_path / "fresh" / "_SUCCESS").exists()  # the output is complete all the same


def test_no_rejects_with_fail_on_reject_exits_0(corpus, tiny_bundle, tmp_path):
    result = invoke(
        "annotate", corpus, tmp_path / "out", "--model", tiny_bundle, "--fail-on-reject"
    )
    assert result.exit_code == 0, result.output


def test_json_logs(tiny_bundle, tmp_path):
    path = bad_corpus(tmp_path)
    result = invoke(
        "--log-format",
        "json",
        "annotate",
        path,
        tmp_path / "out",
        "--model",
        tiny_bundle,
        "--part-docs",
        "2",
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records
    for record in records:
        assert {"time", "level", "event", "message"} <= set(record)
    events = [r["event"] for r in records]
    assert events == ["runtime", "part", "part", "done"]  # runtime: what ran the model, and why
    done = records[-1]
    assert (done["documents"], done["annotated"], done["rejected"]) == (3, 1, 2)
    assert done["bundle_id"] == load_bundle(tiny_bundle).bundle_id


# --- round trip ----------------------------------------------------------------------------------


def test_gold2corpus_annotate_score(tiny_bundle, tiny_conll, tmp_path):
    corpus = tmp_path / "gold.jsonl"
    result = invoke("gold2corpus", tiny_conll, corpus)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 2 documents to {corpus}\n"
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert [set(r) for r in records] == [{"id", "text"}] * 2

    out = tmp_path / "spans.parquet"
    result = invoke("annotate", corpus, out, "--model", tiny_bundle, "--variant", "fp32")
    assert result.exit_code == 0, result.output

    report = tmp_path / "score.json"
    result = invoke("score", "--predictions", out, tiny_conll, "--json", report)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{out} on {tiny_conll}"
    assert lines[1].split() == ["type", "P", "R", "F1", "strict", "F1", "support"]
    assert any(line.startswith("micro avg") for line in lines)
    assert json.loads(report.read_text())["n_sentences"] == 3


def test_runtime_imports_stay_lean():
    """`nerbatch annotate` must start without torch or transformers (the runtime install), and
    without ray, which only `--engine ray` imports."""
    code = (
        "import sys, ner_batch.cli, ner_batch.annotate, ner_batch.bundle, ner_batch.output, "
        "ner_batch.readers, ner_batch.tagger, ner_batch.ray_engine\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'ray', 'seqeval', "
        "'pandas', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
