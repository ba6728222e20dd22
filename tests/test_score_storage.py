"""Where score and view read models and write reports: `storage.write_file` (a local file whole or
not at all, never a temporary file left behind; an object-store URI), `score --model` with a
bundle on S3, and score's reports (HTML, JSON, Markdown and its charts) to S3 and, atomically, to
a local path when the disk fills up mid-write. S3 is moto's server on loopback (test_object_store's
fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from ner_batch.cli import cli
from ner_batch.errors import OutputError
from ner_batch.storage import write_file

try:  # the S3 server fixtures of test_object_store (moto[server], the [dev] extra)
    from test_object_store import BUCKET, s3, s3_server, upload  # noqa: F401

    HAVE_S3 = True
except (ImportError, pytest.skip.Exception):
    HAVE_S3 = False

needs_s3 = pytest.mark.skipif(not HAVE_S3, reason="moto[server] is needed for the S3 tests")


# --- storage.write_file --------------------------------------------------------------------------


def test_write_file_local_replaces_whole_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "new" / "dir" / "page.html"  # the directories do not exist yet
    write_file(target, "Zo\u00eb \U0001f600 <b>")
    assert target.read_bytes() == "Zo\u00eb \U0001f600 <b>".encode()
    write_file(str(target), b"\x00\x01 bytes as given")
    assert target.read_bytes() == b"\x00\x01 bytes as given"
    write_file(f"file://{target}", "via a file:// URI")
    assert target.read_text(encoding="utf-8") == "via a file:// URI"
    assert os.listdir(target.parent) == ["page.html"]  # no temporary file left


def test_write_file_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "score.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*score\.json: No space left on device"):
        write_file(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["score.json"]


def test_write_file_to_a_directory_is_an_output_error(tmp_path):
    (tmp_path / "page.html").mkdir()
    with pytest.raises(OutputError, match="cannot write"):
        write_file(tmp_path / "page.html", "x")
    assert sorted(os.listdir(tmp_path)) == ["page.html"]


@needs_s3
def test_write_file_to_s3(s3):
    write_file(f"s3://{BUCKET}/reports/a.html", "<p>Zo\u00eb</p>")
    write_file(f"s3://{BUCKET}/reports/b.bin", b"\x89PNG")
    with s3.open_input_stream(f"{BUCKET}/reports/a.html") as f:
        assert f.read().decode("utf-8") == "<p>Zo\u00eb</p>"
    with s3.open_input_stream(f"{BUCKET}/reports/b.bin") as f:
        assert f.read() == b"\x89PNG"


# --- score: a bundle on S3, reports to S3 --------------------------------------------------------


@needs_s3
def test_score_model_from_a_bundle_on_s3(s3, tiny_bundle, tiny_conll):
    """A bundle given as a URI is scored (it was taken for a checkpoint path and refused), with
    the same numbers as the same bundle on disk."""
    from ner_batch.score import score

    uri = upload(s3, tiny_bundle, "bundles/tiny")
    result = CliRunner().invoke(
        cli, ["score", "--model", uri, str(tiny_conll), "--variant", "fp32"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"bundle {uri} (fp32 on onnxruntime) on {tiny_conll}\n")
    assert "micro avg" in result.output

    remote = score(tiny_conll, model=uri, variant="fp32")
    local = score(tiny_conll, model=tiny_bundle, variant="fp32")
    for key in ("default", "strict", "token_accuracy", "confusion", "errors"):
        assert remote[key] == local[key], key
    assert local["source"] == f"bundle {tiny_bundle} (fp32 on onnxruntime)"


@needs_s3
def test_score_reports_to_s3(s3, tiny_bundle, tiny_conll, tmp_path, monkeypatch):
    """--html, --json and --markdown (with its charts beside it) as s3:// URIs land in the bucket
    (they were written as local paths named `s3:/...`)."""
    cwd = tmp_path / "cwd"  # where a report taken for a local path would land
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    prefix = f"s3://{BUCKET}/reports/tiny"
    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(tiny_bundle), str(tiny_conll), "--variant", "fp32"]
        + ["--html", f"{prefix}.html", "--json", f"{prefix}.json"]
        + ["--markdown", f"{prefix}.md"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"HTML report: {prefix}.html" in result.output

    def read(name: str) -> bytes:
        with s3.open_input_stream(f"{BUCKET}/reports/{name}") as f:
            return f.read()

    page = read("tiny.html").decode("utf-8")
    assert "Per type" in page and 'class="heat"' in page
    report = json.loads(read("tiny.json"))
    assert report["source"] == f"bundle {tiny_bundle} (fp32 on onnxruntime)"
    assert report["charts"] == {
        "per_type": f"{prefix}.per_type.png",
        "confusion": f"{prefix}.confusion.png",
    }
    markdown = read("tiny.md").decode("utf-8")
    assert "## strict IOB2" in markdown and "![per_type](tiny.per_type.png)" in markdown
    for chart in ("per_type", "confusion"):
        assert read(f"tiny.{chart}.png").startswith(b"\x89PNG"), chart
    assert os.listdir(cwd) == []  # nothing written locally


# --- score --html: whole or not at all on a local disk -------------------------------------------

# A child process whose files may not grow beyond LIMIT bytes (RLIMIT_FSIZE, SIGXFSZ ignored:
# writes past it fail with EFBIG, as on a full disk) scores the tiny bundle into an existing page.
DISK_FULL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from ner_batch.errors import OutputError
    from ner_batch.score import score

    gold, model, page, limit = sys.argv[1:]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))
    try:
        score(gold, model=model, variant="fp32", html_path=page)
    except (OSError, OutputError) as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    else:
        print(json.dumps({"error": None}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ")
def test_score_html_on_a_full_disk_keeps_the_old_page(tiny_bundle, tiny_conll, tmp_path):
    """The page was written in place: a write that fails half-way left a truncated page. Now the
    old page stays whole, the error names the page, and no temporary file is left behind."""
    reports = tmp_path / "reports"
    reports.mkdir()
    page = reports / "score.html"
    page.write_text("<p>the previous report</p>", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tiny_conll), str(tiny_bundle), str(page), "4096"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert page.read_text(encoding="utf-8") == "<p>the previous report</p>"
    assert os.listdir(reports) == ["score.html"]
    assert outcome["error"] == "OutputError", outcome
    assert outcome["message"].startswith(f"cannot write {page}: ")

    # With room on the disk, the same call replaces the page, again leaving nothing else.
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tiny_conll), str(tiny_bundle), str(page), "-1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"error": None}
    assert "Per type" in page.read_text(encoding="utf-8")
    assert os.listdir(reports) == ["score.html"]
    assert page.stat().st_size > 4096
