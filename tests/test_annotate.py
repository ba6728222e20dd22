"""annotate end to end: every input format (plain and .gz), directories and globs, the Parquet
dataset contract (schema, manifest, _SUCCESS, rejects), refusing a mismatched output, and
resuming after a crash with the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    DOCS,
    build_corpus,
    copy_bundle,
    write_bad_inputs,
    write_jsonl,
    write_parquet,
    write_txt,
)

import ner_batch.annotate as annotate_module
import ner_batch.manifest as manifest_module
from ner_batch.annotate import Interrupted
from ner_batch.bundle import load_bundle
from ner_batch.errors import InputError, OutputError
from ner_batch.output import SPAN_SCHEMA, OutputDir
from ner_batch.readers import ReadOptions, expand_inputs
from ner_batch.runtimes import open_tagger


@pytest.fixture(scope="module")
def fp32_tagger(tiny_bundle):
    return open_tagger(load_bundle(tiny_bundle), variant="fp32", threads=1)


@pytest.fixture(scope="module")
def bundle_id(tiny_bundle):
    return load_bundle(tiny_bundle).bundle_id


def manifest_of(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(out).to_pylist()


def sorted_rows(out: Path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in rows_of(out))


def expected_rows(tagger, documents, model) -> list[dict]:
    """What annotate must write for (doc_id, source, text) documents, in order."""
    rows = []
    texts = [text for _, _, text in documents]
    for (doc_id, source, text), spans in zip(documents, tagger.tag(texts), strict=True):
        rows += [
            {
                "doc_id": doc_id,
                "source": source,
                "start": s.start,
                "end": s.end,
                "label": s.label,
                "text": text[s.start : s.end],
                "score": s.score,
                "model": model,
            }
            for s in spans
        ]
    return rows


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == [
        {k: v for k, v in r.items() if k != "score"} for r in expected
    ]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-4)


def corpus_documents(corpus: Path) -> list[tuple[str, str, str]]:
    """The documents of `build_corpus`, in the order annotate must read them."""
    documents = []
    for sub, gz in (("gz", ".gz"), ("plain", "")):
        base = corpus / sub
        records = str(base / f"records.jsonl{gz}")
        table = str(base / f"table.parquet{gz}")
        documents += [(f"j{i}", records, text) for i, text in enumerate(DOCS)]
        documents += [(f"p{i}", table, text) for i, text in enumerate(DOCS)]
        for i, text in enumerate(DOCS[:3]):
            path = str(base / "txt" / f"doc{i}.txt{gz}")
            documents.append((path, path, text))
    return documents


def assert_complete(out: Path) -> dict:
    """The dataset contract of DESIGN.md; returns the manifest."""
    names = {p.name for p in out.iterdir()}
    assert {"_manifest.json", "_SUCCESS"} <= names
    assert not any(n.startswith(".") or n == "_lock" for n in names), names
    manifest = manifest_of(out)
    counts = manifest["counts"]
    assert manifest["complete"] is True
    assert counts["documents"] == counts["annotated"] + counts["rejected"]
    assert counts["documents"] == manifest["documents_done"]
    assert counts["spans"] == pq.read_table(out).num_rows
    assert [p["file"] for p in manifest["parts"]] == sorted(
        n for n in names if n.startswith("part-")
    )
    for part in manifest["parts"]:
        assert pq.ParquetFile(out / part["file"]).schema_arrow == SPAN_SCHEMA
    assert (manifest["rejects"] is not None) == (counts["rejected"] > 0)
    if counts["rejected"]:
        assert pq.read_table(out / "_rejects").num_rows == counts["rejected"]
    else:
        assert "_rejects" not in names
    return manifest


# --- inputs and output format --------------------------------------------------------------------


def test_directory_of_every_format(run, tmp_path, fp32_tagger, bundle_id):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    summary = run([corpus], out)
    documents = corpus_documents(corpus)
    assert summary["documents"] == summary["annotated"] == len(documents)
    assert summary["rejected"] == 0
    manifest = assert_complete(out)
    # Recursive, sorted, files before sub-directories; .md, _ and . files skipped.
    assert [i["path"] for i in manifest["inputs"]] == list(
        dict.fromkeys(s for _, s, _ in documents)
    )
    assert manifest["skipped_files"] == [str(corpus / "notes.md")]
    assert manifest["bundle_id"] == bundle_id and manifest["variant"] == "fp32"
    # Rows in input order, exactly what the tagger finds in each document.
    got = rows_of(out)
    assert got, "the tiny model should find some entities"
    assert_same_rows(got, expected_rows(fp32_tagger, documents, bundle_id))
    texts = {(doc_id, source): text for doc_id, source, text in documents}
    for row in got:
        assert row["text"] == texts[row["doc_id"], row["source"]][row["start"] : row["end"]]
        assert row["model"] == bundle_id


def test_gz_and_plain_give_the_same_rows(run, tmp_path):
    corpus = build_corpus(tmp_path)
    run([corpus / "plain"], tmp_path / "plain.parquet")
    run([corpus / "gz"], tmp_path / "gz.parquet")

    def rows(out):
        return [
            {k: str(v).replace("/gz/", "/plain/").replace(".gz", "") for k, v in r.items()}
            for r in rows_of(out)
        ]

    assert rows(tmp_path / "gz.parquet") == rows(tmp_path / "plain.parquet")


def test_read_back_as_one_table_by_every_reader(run, tmp_path, bundle_id):
    import duckdb
    import pandas as pd
    import polars as pl

    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus], out, part_docs=5)  # several parts
    assert len(manifest_of(out)["parts"]) > 3
    table = pq.read_table(out)
    assert table.schema == SPAN_SCHEMA
    assert table.schema.names == [
        "doc_id",
        "source",
        "start",
        "end",
        "label",
        "text",
        "score",
        "model",
    ]
    expected = sorted(table.to_pylist(), key=lambda r: tuple(map(str, r.values())))

    def same(rows):
        return sorted(rows, key=lambda r: tuple(map(str, r.values()))) == expected

    frame = pd.read_parquet(out)
    assert list(frame.columns) == SPAN_SCHEMA.names
    assert str(frame["start"].dtype) == "int64" and str(frame["score"].dtype) == "float32"
    assert same(frame.to_dict("records"))

    parts = f"{out}/part-*.parquet"
    polars = pl.read_parquet(parts)
    assert dict(polars.schema) == {
        "doc_id": pl.String,
        "source": pl.String,
        "start": pl.Int64,
        "end": pl.Int64,
        "label": pl.String,
        "text": pl.String,
        "score": pl.Float32,
        "model": pl.String,
    }
    assert same(polars.to_dicts())

    relation = duckdb.sql(f"SELECT * FROM read_parquet('{parts}')")
    assert relation.columns == SPAN_SCHEMA.names
    assert [str(t) for t in relation.types] == [
        "VARCHAR",
        "VARCHAR",
        "BIGINT",
        "BIGINT",
        "VARCHAR",
        "VARCHAR",
        "FLOAT",
        "VARCHAR",
    ]
    assert same([dict(zip(relation.columns, r, strict=True)) for r in relation.fetchall()])
    assert duckdb.sql(f"SELECT DISTINCT model FROM '{out}'").fetchall() == [(bundle_id,)]


def test_duckdb_and_polars_read_the_parts_glob_with_rejects(run, tmp_path):
    """Rejects sit in `_rejects/`, so `OUT/*.parquet` is exactly the span parts. (duckdb given
    the bare directory recurses into `_rejects/` too: the README says to use the glob.)"""
    import duckdb
    import polars as pl

    path = write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "John Smith"}, {"id": 1}])
    out = tmp_path / "out.parquet"
    run([path], out)
    assert (out / "_rejects").is_dir()
    expected = [tuple(r.values()) for r in rows_of(out)]
    assert duckdb.sql(f"SELECT * FROM '{out}/*.parquet'").fetchall() == expected
    assert [tuple(r.values()) for r in pl.read_parquet(f"{out}/*.parquet").to_dicts()] == expected


def test_txt_lines_mode(run, tmp_path, fp32_tagger, bundle_id):
    lines = ["John Smith visited Paris .", "", "Mary met the European Commission .", "   "]
    path = tmp_path / "in" / "lines.txt"
    path.parent.mkdir()
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")  # CRLF, final newline
    out = tmp_path / "out.parquet"
    summary = run([path], out, read=ReadOptions(txt_mode="lines"))
    assert summary["documents"] == summary["annotated"] == len(lines)
    assert_complete(out)
    documents = [(f"{path}:{n}", str(path), text) for n, text in enumerate(lines, start=1)]
    assert_same_rows(rows_of(out), expected_rows(fp32_tagger, documents, bundle_id))


def test_jsonl_and_parquet_fields_and_fallback_ids(run, tmp_path, fp32_tagger, bundle_id):
    jsonl = write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [{"body": "John Smith visited Paris .", "url": 7}, {"body": "Mary in London ."}],
    )
    parquet = write_parquet(
        tmp_path / "in" / "b.parquet",
        {"url": ["u1", None], "body": ["Acme Corp said Peter .", "Mary met John ."]},
        compress=True,
    )
    out = tmp_path / "out.parquet"
    run([jsonl, parquet], out, read=ReadOptions(text_field="body", id_field="url"))
    documents = [
        ("7", str(jsonl), "John Smith visited Paris ."),
        (f"{jsonl}:2", str(jsonl), "Mary in London ."),
        ("u1", str(parquet), "Acme Corp said Peter ."),
        (f"{parquet}:2", str(parquet), "Mary met John ."),
    ]
    assert manifest_of(out)["counts"]["documents"] == 4
    assert_same_rows(rows_of(out), expected_rows(fp32_tagger, documents, bundle_id))


def test_globs(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([f"{corpus}/**/*.jsonl*", f"{corpus}/plain/*.parquet"], out)
    assert [i["path"] for i in manifest_of(out)["inputs"]] == [
        str(corpus / "gz" / "records.jsonl.gz"),
        str(corpus / "plain" / "records.jsonl"),
        str(corpus / "plain" / "table.parquet"),
    ]
    assert manifest_of(out)["counts"]["documents"] == 3 * len(DOCS)


def test_expand_inputs_is_deterministic_and_deduplicated(tmp_path):
    corpus = build_corpus(tmp_path)
    files, skipped = expand_inputs([str(corpus), str(corpus / "plain" / "records.jsonl")])
    again, _ = expand_inputs([str(corpus)])
    assert [f.path for f in files] == [f.path for f in again]
    assert len({f.path for f in files}) == len(files) == 10
    assert [f.format for f in files[:2]] == ["jsonl", "parquet"]
    assert skipped == [str(corpus / "notes.md")]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing.txt"), "missing.txt: no such file or directory"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "the directory holds no input files"),
        (lambda p: str(p / "*.nothing"), "the pattern matches no files"),
        (
            lambda p: (p / "doc.csv").write_text("a,b") and str(p / "doc.csv"),
            "doc.csv: unknown input format",
        ),
    ],
)
def test_unusable_inputs(run, tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        run([make(tmp_path)], tmp_path / "out.parquet")


# --- rejects -------------------------------------------------------------------------------------


def test_bad_documents_become_rejects(run, tmp_path):
    paths = write_bad_inputs(tmp_path / "in")
    lines, records, table, binary, truncated, not_parquet = map(str, paths)
    out = tmp_path / "out.parquet"
    summary = run([tmp_path / "in"], out, read=ReadOptions(txt_mode="lines"), part_docs=3)
    manifest = assert_complete(out)
    rejects = pq.read_table(out / "_rejects").to_pylist()
    assert manifest["rejects"] == "_rejects"
    by_key = {(r["source"], r["doc_id"], r["line"]): r["reason"] for r in rejects}
    assert by_key[lines, f"{lines}:2", 2] == "not valid UTF-8 at byte 0"
    assert by_key[records, f"{records}:2", 2].startswith("not valid JSON")
    assert by_key[records, "no-text", 3] == "no 'text' field (fields: ['id'])"
    assert by_key[records, "number", 4] == "field 'text' is int, not a string"
    assert by_key[records, f"{records}:5", 5] == "expected a JSON object, found list"
    assert by_key[records, "null-text", 7] == "field 'text' is NoneType, not a string"
    assert by_key[table, "y", 2] == "column 'text' is null or not text"
    # In lines mode a binary .txt is lines of bytes: NULs are text, not an error.
    truncated_reason = by_key[truncated, None, None]
    assert truncated_reason.startswith("file unreadable after ")
    assert by_key[not_parquet, None, None].startswith("not a readable Parquet file")
    assert summary["rejected"] == len(rejects) == 9
    read_before_truncation = int(truncated_reason.split()[3])
    assert 0 < read_before_truncation < 300
    # Annotated: 2 lines, 2 records ("ok" and the last), 1 row, the binary line, and the
    # documents of the .gz before it breaks off.
    assert summary["annotated"] == 2 + 2 + 1 + 1 + read_before_truncation


def test_binary_txt_file_is_rejected_in_file_mode(run, tmp_path):
    binary = tmp_path / "in" / "blob.txt"
    binary.parent.mkdir()
    binary.write_bytes(b"\x00\x01\x02" * 100)
    latin1 = tmp_path / "in" / "latin1.txt"
    latin1.write_bytes("caf\xe9 in Paris".encode("latin-1"))
    out = tmp_path / "out.parquet"
    summary = run([tmp_path / "in"], out)
    assert summary["rejected"] == 2 and summary["annotated"] == 0
    reasons = {r["doc_id"]: r["reason"] for r in pq.read_table(out / "_rejects").to_pylist()}
    assert reasons == {
        str(binary): "binary file (NUL bytes), not text",
        str(latin1): "not valid UTF-8 at byte 3",
    }
    # With --encoding-errors replace the same file is annotated.
    summary = run(
        [latin1], tmp_path / "replaced.parquet", read=ReadOptions(encoding_errors="replace")
    )
    assert (summary["annotated"], summary["rejected"]) == (1, 0)


def test_parquet_without_text_column_names_its_columns(run, tmp_path):
    path = write_parquet(tmp_path / "in" / "t.parquet", {"id": ["a"], "body": ["Mary"]})
    with pytest.raises(InputError) as error:
        run([path], tmp_path / "out.parquet")
    assert str(error.value) == (
        f"{path}: no column 'text' (columns: ['id', 'body']); choose one with --text-column"
    )
    assert not (tmp_path / "out.parquet" / "_lock").exists()


# --- re-runs: no-op, refusals, overwrite ---------------------------------------------------------


def test_rerun_of_complete_output_is_a_noop(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    first = run([corpus], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run([corpus], out)
    assert again["already_complete"] is True
    assert again["documents"] == first["documents"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert manifest_of(out)["runs"] == 1


def test_changed_input_is_refused_unless_overwrite(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus], out)
    changed = corpus / "plain" / "records.jsonl"
    # Rewritten (an input that only grew is read up to its recorded size instead: test_run.py).
    lines = changed.read_text().splitlines(keepends=True)
    changed.write_text("".join(lines[:-2]) + json.dumps({"id": "new", "text": "Berlin ."}) + "\n")
    with pytest.raises(OutputError, match=f"the inputs changed .*e.g. {changed}: "):
        run([corpus], out)
    summary = run([corpus], out, overwrite=True)
    assert summary["documents"] == len(corpus_documents(corpus)) - 1  # two lines for one
    assert_complete(out)


def test_added_or_removed_input_is_refused(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus / "plain"], out)
    extra = write_txt(corpus / "plain" / "extra.txt", ["Mary"])
    with pytest.raises(OutputError, match=f"e.g. {extra}: added, removed"):
        run([corpus / "plain"], out)
    with pytest.raises(OutputError, match="the inputs changed"):
        run([corpus / "plain" / "records.jsonl"], out)


def test_different_bundle_is_refused_unless_overwrite(run, tiny_bundle, tmp_path, bundle_id):
    other = copy_bundle(tiny_bundle, tmp_path / "other")
    meta = json.loads((other / "bundle.json").read_text())
    meta["bundle_id"] = "bundle-other"
    (other / "bundle.json").write_text(json.dumps(meta))
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus], out)
    with pytest.raises(OutputError) as error:
        run([corpus], out, model=str(other))
    assert str(error.value) == (
        f"{out} was written with bundle {bundle_id!r}, not 'bundle-other'; "
        "pass --overwrite to start over"
    )
    run([corpus], out, model=str(other), overwrite=True)
    assert {r["model"] for r in rows_of(out)} == {"bundle-other"}
    assert manifest_of(out)["bundle_id"] == "bundle-other"


def test_foreign_output_directory_is_refused(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.csv").write_text("keep me")
    with pytest.raises(OutputError, match="is not empty and is not an annotate output"):
        run([corpus], out)
    # --overwrite deletes an annotate output, never a directory that holds anything else.
    with pytest.raises(OutputError, match=r"did not write \(precious.csv\); --overwrite deletes"):
        run([corpus], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["precious.csv"]
    assert (out / "precious.csv").read_text() == "keep me"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "int8"}, "variant 'fp32', now 'int8'"),
        ({"max_length": 16}, "max_length 32, now 16, stride 8, now 4"),
        ({"read": ReadOptions(txt_mode="lines")}, "read {'txt_mode': 'file'"),
    ],
)
@pytest.mark.parametrize("complete", [True, False])
def test_other_settings_are_refused_unless_overwrite(
    run, tmp_path, monkeypatch, change, message, complete
):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    if complete:
        run([corpus], out)
    else:
        with monkeypatch.context() as patch:
            patch.setattr(annotate_module, "documents", crashing_documents(after=7))
            with pytest.raises(Crash):
                run([corpus], out, part_docs=3)
    with pytest.raises(OutputError) as error:
        run([corpus], out, **change)
    assert str(error.value).startswith(f"{out} was written with other settings ({message}")
    assert str(error.value).endswith(
        "); run with the same options to resume it, or pass --overwrite to start over"
    )
    run([corpus], out, overwrite=True, **change)
    assert_complete(out)


def test_output_inside_the_input_directory_is_not_an_input(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = corpus / "spans.parquet"
    first = run([corpus], out)
    assert run([corpus], out)["already_complete"] is True
    assert run([corpus], out, overwrite=True)["documents"] == first["documents"]
    assert not any(str(out) in i["path"] for i in manifest_of(out)["inputs"])


def test_jsonl_with_a_byte_order_mark(run, tmp_path):
    path = tmp_path / "in" / "bom.jsonl"
    path.parent.mkdir()
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "text": "John Smith"}\n{"id": "b", "text": "Mary"}\n'
    )
    summary = run([path], tmp_path / "out.parquet")
    assert (summary["annotated"], summary["rejected"]) == (2, 0)


def test_output_that_is_a_file_is_refused(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    out.write_text("a file")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        run([corpus], out)


def test_corrupt_manifest_is_refused_and_overwrite_recovers(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus], out)
    (out / "_manifest.json").write_text("{truncated")
    with pytest.raises(OutputError, match="is unreadable .*use --overwrite to start over"):
        run([corpus], out)
    summary = run([corpus], out, overwrite=True)
    assert summary["documents"] == len(corpus_documents(corpus))
    assert_complete(out)


def test_lock_of_a_live_run_is_respected_and_a_dead_one_taken(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    out.mkdir()
    host = socket.gethostname()
    # A live run (of a version that did not flock): its command line names nerbatch.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ner_batch"])
    try:
        (out / "_lock").write_text(f"{alive.pid}@{host}")
        with pytest.raises(
            OutputError, match=f"being written by another annotate run .*{alive.pid}"
        ):
            run([corpus], out)
    finally:
        alive.kill()
        alive.wait()
    # This very process, or a live process that is not nerbatch (a reused pid): stale.
    other = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (os.getpid(), other.pid):
            (out / "_lock").write_text(f"{pid}@{host}")
            run([corpus], out, overwrite=True)
            assert_complete(out)
    finally:
        other.kill()
        other.wait()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has exited: its lock is stale
    (out / "_lock").write_text(f"{dead.pid}@{host}")
    run([corpus], out)
    assert_complete(out)


# --- resume --------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def crashing_documents(after: int):
    """annotate's document stream, raising after `after` items (a killed process, in effect)."""
    real = annotate_module.documents

    def documents(files, read, *start):
        for n, item in enumerate(real(files, read, *start)):
            if n == after:
                raise Crash(f"crash after {after} documents")
            yield item

    return documents


def resume_corpus(root: Path) -> Path:
    corpus = build_corpus(root)
    write_bad_inputs(corpus / "bad")  # rejects too, so that they are resumed as well
    return corpus


def test_resume_after_crash_gives_the_uninterrupted_result(run, tmp_path, monkeypatch):
    corpus = resume_corpus(tmp_path)
    options = {"part_docs": 4, "chunk_docs": 3, "read": ReadOptions(txt_mode="lines")}
    reference = tmp_path / "reference.parquet"
    complete = run([corpus], reference, **options)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=23))
        with pytest.raises(Crash):
            run([corpus], out, **options)
    manifest = manifest_of(out)
    assert manifest["complete"] is False and not (out / "_SUCCESS").exists()
    assert manifest["documents_done"] == 20  # five parts of four committed; the sixth lost
    annotated_before = manifest["counts"]["annotated"]
    assert not (out / "_lock").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())

    resumed = run([corpus], out, **options)
    assert resumed["documents_this_run"] == complete["documents"] - 20
    assert resumed["annotated"] - annotated_before < resumed["documents_this_run"]  # + rejects
    for key in ("documents", "annotated", "rejected", "spans", "tokens", "parts"):
        assert resumed[key] == complete[key], key
    assert manifest_of(out)["runs"] == 2
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)
    assert pq.read_table(out / "_rejects").to_pylist() == (
        pq.read_table(reference / "_rejects").to_pylist()
    )


def test_crash_between_part_and_manifest_leaves_no_duplicates(run, tmp_path, monkeypatch):
    corpus = resume_corpus(tmp_path)
    options = {"part_docs": 5, "chunk_docs": 2, "read": ReadOptions(txt_mode="lines")}
    reference = tmp_path / "reference.parquet"
    run([corpus], reference, **options)

    real_write = manifest_module.write_manifest
    calls = []

    def write_manifest(out, manifest):
        calls.append(manifest.documents_done)
        # The first write is the run's initial manifest; the third part is renamed into place,
        # its manifest never written.
        if len(calls) == 4:
            raise Crash("killed before the manifest")
        real_write(out, manifest)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", write_manifest)
        with pytest.raises(Crash):
            run([corpus], out, **options)
    assert (out / "part-00002.parquet").exists()
    assert len(manifest_of(out)["parts"]) == 2

    run([corpus], out, **options)
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)
    assert sorted(map(str, pq.read_table(out / "_rejects").to_pylist())) == sorted(
        map(str, pq.read_table(reference / "_rejects").to_pylist())
    )


def test_crash_after_complete_manifest_before_success(run, tmp_path, monkeypatch):
    """Killed after the manifest says complete but before _SUCCESS: the re-run finishes."""
    corpus = resume_corpus(tmp_path)
    options = {"part_docs": 7, "read": ReadOptions(txt_mode="lines")}
    reference = tmp_path / "reference.parquet"
    run([corpus], reference, **options)

    real_write_bytes = OutputDir.write_bytes

    def write_bytes(self, name, data):
        if name == "_SUCCESS":
            raise Crash("killed before _SUCCESS")
        real_write_bytes(self, name, data)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(OutputDir, "write_bytes", write_bytes)
        with pytest.raises(Crash):
            run([corpus], out, **options)
    assert manifest_of(out)["complete"] is True and not (out / "_SUCCESS").exists()

    summary = run([corpus], out, **options)
    assert summary["documents_this_run"] == 0
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)
    assert pq.read_table(out / "_rejects").num_rows == summary["rejected"] > 0


def test_sigterm_commits_and_resumes(run, tmp_path, monkeypatch):
    corpus = build_corpus(tmp_path)
    options = {"part_docs": 50, "chunk_docs": 4}
    reference = tmp_path / "reference.parquet"
    run([corpus], reference, **options)

    real = annotate_module.documents

    def documents(files, read, *start):
        for n, item in enumerate(real(files, read, *start)):
            if n == 10:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    out = tmp_path / "out.parquet"
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "documents", documents)
        with pytest.raises(Interrupted, match="stopped by SIGTERM after 12 documents"):
            run([corpus], out, **options)
    # The signal arrives while document 11 is read: the chunk being read (chunk_docs 4) is read
    # to its end, tagged and committed, so that a resumed run forms the same batches.
    assert manifest_of(out)["documents_done"] == 12
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    run([corpus], out, **options)
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)


def test_long_document_is_annotated_whole(run, tmp_path, tiny_bundle, bundle_id):
    text = " ".join(["John Smith visited Paris and met Mary in London ."] * 3000)
    path = write_jsonl(tmp_path / "in" / "long.jsonl", [{"id": "long", "text": text}])
    out = tmp_path / "out.parquet"
    run([path], out, max_length=16)
    rows = rows_of(out)
    assert rows and max(r["end"] for r in rows) > len(text) - 60  # spans up to the very end
    tagger = open_tagger(load_bundle(tiny_bundle), variant="fp32", max_length=16, threads=1)
    assert_same_rows(rows, expected_rows(tagger, [("long", str(path), text)], bundle_id))


def test_empty_inputs_still_complete(run, tmp_path):
    path = write_jsonl(tmp_path / "in" / "empty.jsonl", [])
    out = tmp_path / "out.parquet"
    summary = run([path], out)
    assert summary["documents"] == 0
    assert_complete(out)
    assert pq.read_table(out).num_rows == 0
    assert pq.read_table(out).schema == SPAN_SCHEMA
    assert pa.types.is_float32(pq.read_table(out).schema.field("score").type)
