"""annotate from s3:// to s3:// against a real S3-compatible server (moto's server mode, a
separate process on loopback): inputs, outputs and the bundle as URIs, a resumed run, clear
errors, and credentials that never show up in logs or the manifest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import build_corpus, write_bad_inputs

import ner_batch.manifest as manifest_module
from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.errors import InputError
from ner_batch.readers import ReadOptions

pytest.importorskip("moto", reason="moto[server] is needed for the S3 tests (the [dev] extra)")

BUCKET = "nerbatch-test"
SECRET = "s3cr3t-never-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in its own process on 127.0.0.1; yields the environment that points the
    AWS SDK (pyarrow's S3 filesystem) at it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert server.poll() is None, "moto server exited"
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "nerbatch-test-key",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield env
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """A fresh bucket; returns a pyarrow S3 filesystem on it."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NERBATCH_CACHE", str(tmp_path / "cache"))
    fs = pafs.S3FileSystem(
        endpoint_override=s3_server["AWS_ENDPOINT_URL"],
        scheme="http",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
    for info in fs.get_file_info(pafs.FileSelector("", allow_not_found=True)):
        if info.path == BUCKET:
            fs.delete_dir(BUCKET)
    fs.create_dir(BUCKET)
    return fs


def upload(fs, local: Path, prefix: str) -> str:
    """Copy a local file or directory tree to s3://BUCKET/prefix; returns the URI."""
    if local.is_file():
        pafs.copy_files(str(local), f"{BUCKET}/{prefix}", destination_filesystem=fs)
    else:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{BUCKET}/{prefix}/{path.relative_to(local).as_posix()}"
            pafs.copy_files(str(path), key, destination_filesystem=fs)
    return f"s3://{BUCKET}/{prefix}"


def local_rows(out: Path, replace: tuple[str, str] | None = None) -> list[tuple]:
    rows = pq.read_table(out).to_pylist()
    return _normalised(rows, replace)


def s3_rows(fs, prefix: str, dataset: str = "") -> list[tuple]:
    path = f"{BUCKET}/{prefix}{dataset}"
    return _normalised(pq.read_table(path, filesystem=fs).to_pylist(), None)


def _normalised(rows: list[dict], replace: tuple[str, str] | None) -> list[tuple]:
    out = []
    for row in rows:
        if replace:
            row = {k: v.replace(*replace) if isinstance(v, str) else v for k, v in row.items()}
        out.append(tuple(row.values()))
    return sorted(out, key=repr)


def corpus_with_rejects(root: Path) -> Path:
    corpus = build_corpus(root)
    write_bad_inputs(corpus / "bad")
    return corpus


def test_s3_to_s3_equals_the_local_run(s3, tiny_bundle, tmp_path):
    corpus = corpus_with_rejects(tmp_path)
    options = {"variant": "fp32", "threads": 1, "read": ReadOptions(txt_mode="lines")}
    reference = tmp_path / "reference.parquet"
    local = annotate(
        AnnotateConfig([str(corpus)], str(reference), model=str(tiny_bundle), **options)
    )

    corpus_uri = upload(s3, corpus, "in")
    bundle_uri = upload(s3, tiny_bundle, "bundles/tiny")
    remote = annotate(
        AnnotateConfig([corpus_uri], f"s3://{BUCKET}/out", model=bundle_uri, **options)
    )

    for key in ("documents", "annotated", "rejected", "spans"):
        assert remote[key] == local[key], key
    assert remote["rejected"] > 0
    replace = (str(corpus), corpus_uri)
    assert s3_rows(s3, "out") == local_rows(reference, replace)
    assert s3_rows(s3, "out", "/_rejects") == local_rows(reference / "_rejects", replace)
    names = {i.base_name for i in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/out"))}
    assert {"_SUCCESS", "_manifest.json", "_rejects", "part-00000.parquet"} <= names
    assert not any(n.startswith((".", "_lock")) for n in names)  # no temporaries, lock released
    # Skipped like local files: `_drafts/`, `.cache/`, `_hidden.txt`; notes.md is listed as skipped.
    manifest = json.loads(s3.open_input_stream(f"{BUCKET}/out/_manifest.json").read())
    assert manifest["skipped_files"] == [f"{corpus_uri}/notes.md"]
    assert all(i["path"].startswith(corpus_uri + "/") for i in manifest["inputs"])
    assert manifest["bundle"] == bundle_uri


def test_s3_run_resumes_after_a_crash(s3, tiny_bundle, tmp_path, monkeypatch):
    corpus = corpus_with_rejects(tmp_path)
    corpus_uri = upload(s3, corpus, "in")
    bundle_uri = upload(s3, tiny_bundle, "bundles/tiny")
    options = {
        "model": bundle_uri,
        "variant": "fp32",
        "threads": 1,
        "part_docs": 20,
        "chunk_docs": 7,
        "read": ReadOptions(txt_mode="lines"),
    }
    complete = annotate(AnnotateConfig([corpus_uri], f"s3://{BUCKET}/reference", **options))

    real_write = manifest_module.write_manifest
    calls = []

    class Crash(Exception):
        pass

    def write_manifest(out, manifest):
        calls.append(1)
        # The first write is the run's initial manifest; the third part is in place, its
        # manifest never written.
        if len(calls) == 4:
            raise Crash("killed before the manifest")
        real_write(out, manifest)

    out = f"s3://{BUCKET}/out"
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", write_manifest)
        with pytest.raises(Crash):
            annotate(AnnotateConfig([corpus_uri], out, **options))
    manifest = json.loads(s3.open_input_stream(f"{BUCKET}/out/_manifest.json").read())
    assert len(manifest["parts"]) == 2 and not manifest["complete"]

    resumed = annotate(AnnotateConfig([corpus_uri], out, **options))
    assert resumed["documents_this_run"] == complete["documents"] - manifest["documents_done"]
    assert s3_rows(s3, "out") == s3_rows(s3, "reference")
    assert s3_rows(s3, "out", "/_rejects") == s3_rows(s3, "reference", "/_rejects")
    again = annotate(AnnotateConfig([corpus_uri], out, **options))
    assert again["already_complete"] is True


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ner_batch.cli", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_cli_s3_round_trip_and_errors_never_show_the_secret(s3, s3_server, tiny_bundle, tmp_path):
    corpus = corpus_with_rejects(tmp_path)
    corpus_uri = upload(s3, corpus, "in")
    bundle_uri = upload(s3, tiny_bundle, "bundles/tiny")
    env = {**s3_server, "NERBATCH_CACHE": str(tmp_path / "cache")}
    out = f"s3://{BUCKET}/out"
    args = ["annotate", corpus_uri, out, "--model", bundle_uri, "--variant", "fp32"]
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    second = cli(*args, env=env)  # a complete output: a no-op
    assert second.returncode == 0 and "already complete" in second.stdout
    # The bundle was downloaded once into the cache and reused.
    assert len(list((tmp_path / "cache" / "bundles").iterdir())) == 1

    missing = cli(
        "annotate", f"s3://{BUCKET}/nothing-here", out + "2", "--model", bundle_uri, env=env
    )
    assert missing.returncode == 1
    assert "nothing-here: no such object or prefix" in missing.stderr
    no_bundle = cli("annotate", corpus_uri, out + "3", "--model", f"s3://{BUCKET}/nope", env=env)
    assert no_bundle.returncode == 1 and "is not a model bundle" in no_bundle.stderr
    other_key = cli(*args[:2], out + "4", *args[3:], env={**env, "AWS_SECRET_ACCESS_KEY": "zq9-k"})
    # moto does not check signatures, so another key works too here; what matters is that no
    # key ever reaches a log line or the manifest.
    manifest = s3.open_input_stream(f"{BUCKET}/out/_manifest.json").read().decode()
    logs = [first.stdout, first.stderr, missing.stderr, other_key.stdout, other_key.stderr]
    for text in [*logs, manifest]:
        assert SECRET not in text and "zq9-k" not in text


def test_unknown_scheme_is_a_clear_error(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match="nosuchscheme://x/y"):
        annotate(
            AnnotateConfig(["nosuchscheme://x/y"], str(tmp_path / "out"), model=str(tiny_bundle))
        )


def test_expand_s3_file_prefix_and_glob(s3, tmp_path):
    corpus_uri = upload(s3, build_corpus(tmp_path), "in")
    from ner_batch.readers import expand_inputs

    files, skipped = expand_inputs([f"{corpus_uri}/plain/*.jsonl"])
    assert [f.path for f in files] == [f"{corpus_uri}/plain/records.jsonl"]
    files, _ = expand_inputs([f"{corpus_uri}/plain/txt/doc0.txt"])
    assert [(f.path, f.format, f.size) for f in files] == [
        (f"{corpus_uri}/plain/txt/doc0.txt", "txt", 26)
    ]
    assert files[0].mtime > 0
    with pytest.raises(InputError, match="no input files there"):
        expand_inputs([f"{corpus_uri}/plain/*.csv"])
    with pytest.raises(InputError, match="unknown input format"):
        expand_inputs([f"{corpus_uri}/notes.md"])
