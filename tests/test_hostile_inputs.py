"""Hostile inputs through the real CLI with default options: poison documents (lone surrogates,
JSON nested 100,000 deep, invalid UTF-8 in a Parquet string column), file names that are not
UTF-8, unreadable directories and files, special files (FIFO, device, socket) and a file that
grows during the run. Each must end as spans or reject rows, never a crash, a hang or a silent
drop, and the identical rerun must be a no-op."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import DOCS, write_jsonl, write_txt

import ner_batch.readers as readers
from ner_batch.cli import cli
from ner_batch.readers import ReadOptions, expand_inputs, read_file

GOOD = [d for d in DOCS if d]  # documents the tiny model reads without any trouble
as_root = os.geteuid() == 0


# --- helpers -------------------------------------------------------------------------------------


def annotate(bundle: Path, inputs: list, out: Path, *options: str):
    """`nerbatch annotate INPUTS OUT --model BUNDLE [options]` in this process."""
    args = ["annotate", *(str(i) for i in inputs), str(out), "--model", str(bundle), *options]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert not [line for line in result.output.splitlines() if line.startswith("Error: unexpected")]
    return result


def annotate_in_subprocess(bundle: Path, inputs: list, out: Path, *options: str):
    """The CLI in a child process, with a timeout: a regression that blocks on a FIFO or reads
    /dev/zero forever fails the test instead of hanging the suite."""
    args = [sys.executable, "-m", "ner_batch.cli", "--log-format", "json", "annotate"]
    args += [*(str(i) for i in inputs), str(out), "--model", str(bundle), *options]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    assert not [line for line in lines if line.startswith("Error: unexpected")], lines
    return result


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail with TimeoutError if the block takes longer (SIGALRM interrupts a blocked open or
    read): in-process tests with FIFOs must fail, not hang, if readers open them again."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds}s: was a FIFO opened?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def counts(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())["counts"]


def assert_accounted(out: Path, documents: int, annotated: int) -> None:
    """Every document written is in the manifest's counts, as annotated or rejected."""
    c = counts(out)
    assert c["documents"] == c["annotated"] + c["rejected"] == documents, c
    assert c["annotated"] == annotated, c


def rejects(out: Path) -> list[tuple]:
    """(source, doc_id, line, reason) of every reject row, sorted."""
    if not (out / "_rejects").exists():
        return []
    table = pq.read_table(out / "_rejects")
    columns = [table.column(c).to_pylist() for c in ("source", "doc_id", "line", "reason")]
    return sorted(zip(*columns, strict=True), key=repr)


def rows(out: Path) -> list[tuple]:
    table = pq.read_table(out)
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def log_events(output: str, event: str) -> list[dict]:
    """The JSON log lines of one event (CliRunner's stderr is no terminal: logs are JSON)."""
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def assert_rerun_is_a_noop(bundle: Path, inputs: list, out: Path, rejected: bool) -> None:
    """The identical command does nothing; with --fail-on-reject it exits 3 if there were
    rejects (and the output stays as it is)."""
    before = rows(out), rejects(out)
    again = annotate(bundle, inputs, out)
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output
    strict = annotate(bundle, inputs, out, "--fail-on-reject")
    assert strict.exit_code == (3 if rejected else 0), strict.output
    assert (rows(out), rejects(out)) == before


def jsonl_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")
    return path


# --- poison documents ----------------------------------------------------------------------------


def surrogate_records(root: Path) -> Path:
    # json.dumps escapes lone surrogates as "\ud800": valid JSON, but not valid Unicode.
    return jsonl_lines(
        root / "records.jsonl",
        [
            json.dumps({"id": "a", "text": GOOD[0]}),
            json.dumps({"id": "text-surrogate", "text": "Paris \ud800 London"}),
            json.dumps({"id": "id-\udfff", "text": GOOD[1]}),
            json.dumps({"id": "pair", "text": "Paris \ud83d\ude00"}),  # a valid pair: an emoji
            json.dumps({"id": "b", "text": GOOD[2]}),
        ],
    )


def test_lone_surrogates_in_jsonl_are_rejected(tiny_bundle, tmp_path):
    path = surrogate_records(tmp_path / "in")
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [path], out)
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=5, annotated=3)
    assert rejects(out) == [
        (
            str(path),
            f"{path}:3",  # the id itself cannot be stored: the line's
            3,
            "id field 'id' has a lone surrogate (U+DFFF) at character 3; not valid Unicode",
        ),
        (
            str(path),
            "text-surrogate",
            2,
            "text field 'text' has a lone surrogate (U+D800) at character 6; not valid Unicode",
        ),
    ]
    assert {"a", "b"} <= set(pq.read_table(out).column("doc_id").to_pylist())
    assert_rerun_is_a_noop(tiny_bundle, [path], out, rejected=True)


def test_lone_surrogates_become_replacement_characters_with_replace(tiny_bundle, tmp_path):
    path = surrogate_records(tmp_path / "in")
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [path], out, "--encoding-errors", "replace")
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=5, annotated=5)
    assert rejects(out) == []
    [file], _ = expand_inputs([str(path)])
    documents = list(read_file(file, ReadOptions(encoding_errors="replace")))
    assert [d.doc_id for d in documents] == ["a", "text-surrogate", "id-\ufffd", "pair", "b"]
    assert documents[1].text == "Paris \ufffd London"
    assert documents[3].text == "Paris \U0001f600"


def test_json_nested_100000_deep_is_a_reject(tiny_bundle, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = jsonl_lines(
        tmp_path / "in" / "deep.jsonl",
        [
            json.dumps({"id": "a", "text": GOOD[0]}),
            deep,
            '{"id": "deep-text", "text": ' + deep + "}",
            '{"id": 1' + "0" * 5000 + ', "text": "Paris"}',  # beyond CPython's int digits limit
            json.dumps({"id": "b", "text": GOOD[1]}),
        ],
    )
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [path], out)
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=5, annotated=2)
    reasons = {(doc_id, line): reason for _, doc_id, line, reason in rejects(out)}
    assert reasons[f"{path}:2", 2] == "not valid JSON: nested too deeply"
    assert reasons[f"{path}:3", 3] == "not valid JSON: nested too deeply"
    assert reasons[f"{path}:4", 4].startswith("not valid JSON: Exceeds the limit (4300 digits)")
    assert_rerun_is_a_noop(tiny_bundle, [path], out, rejected=True)


def invalid_utf8_parquet(path: Path) -> Path:
    """A Parquet file whose string columns hold bytes that are not UTF-8 (pyarrow does not
    check a binary -> string view, and writes what it is given), across several batches."""
    texts = [GOOD[i % len(GOOD)].encode() for i in range(2100)]
    ids = [f"p{i}".encode() for i in range(2100)]
    texts[5] = b"Paris \xff London"  # row 6
    texts[1500] = b"\xc3"  # row 1501: a truncated sequence, in the second batch of 1024
    ids[7] = b"p\xe97"  # row 8: the id is not UTF-8
    texts[9] = None  # row 10: null, as before
    table = pa.table(
        {
            "id": pa.array(ids, pa.binary()).view(pa.string()),
            "text": pa.array(texts, pa.binary()).view(pa.string()),
        }
    )
    assert table.schema.field("text").type == pa.string()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1000)
    return path


def test_invalid_utf8_in_a_parquet_string_column_rejects_that_row(tiny_bundle, tmp_path):
    path = invalid_utf8_parquet(tmp_path / "in" / "table.parquet")
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [path], out)
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=2100, annotated=2096)
    assert rejects(out) == sorted(
        [
            (str(path), "p5", 6, "not valid UTF-8 at byte 6"),
            (str(path), "p1500", 1501, "not valid UTF-8 at byte 0"),
            (str(path), f"{path}:8", 8, "id column 'id': not valid UTF-8 at byte 1"),
            (str(path), "p9", 10, "column 'text' is null or not text"),
        ],
        key=repr,
    )
    assert {"p4", "p6", "p1499", "p1501"} <= set(pq.read_table(out).column("doc_id").to_pylist())
    assert_rerun_is_a_noop(tiny_bundle, [path], out, rejected=True)


def test_invalid_utf8_in_a_parquet_string_column_with_replace(tmp_path):
    path = invalid_utf8_parquet(tmp_path / "in" / "table.parquet")
    [file], _ = expand_inputs([str(path)])
    items = list(read_file(file, ReadOptions(encoding_errors="replace")))
    assert len(items) == 2100
    assert [i.doc_id for i in items if isinstance(i, readers.Reject)] == ["p9"]  # the null
    assert items[5].text == "Paris \ufffd London"
    assert items[7].doc_id == "p\ufffd7"


def test_parquet_columns_of_other_types_keep_their_behaviour(tmp_path):
    """Binary text is decoded, a binary id keeps str(bytes), categoricals are read by value."""
    path = tmp_path / "types.parquet"
    table = pa.table(
        {
            "id": pa.array([b"x", b"y", None], pa.binary()),
            "text": pa.array(["Paris", "Mary", "Paris"]).dictionary_encode(),
            "body": pa.array([b"Paris", b"\xff", None], pa.large_binary()),
            "n": pa.array([1, 2, None]),
        }
    )
    pq.write_table(table, path)
    [file], _ = expand_inputs([str(path)])
    by_text = [(i.doc_id, getattr(i, "text", None)) for i in read_file(file, ReadOptions())]
    assert by_text == [("b'x'", "Paris"), ("b'y'", "Mary"), (f"{path}:3", "Paris")]
    body = list(read_file(file, ReadOptions(text_field="body", id_field="n")))
    assert [(i.doc_id, getattr(i, "reason", None)) for i in body] == [
        ("1", None),
        ("2", "not valid UTF-8 at byte 0"),
        (f"{path}:3", "column 'body' is null or not text"),
    ]
    ints = list(read_file(file, ReadOptions(text_field="n")))
    assert [i.reason for i in ints] == ["column 'n' is null or not text"] * 3


def test_parquet_files_with_flipped_bytes_never_raise(tmp_path):
    """Random bytes flipped in a Parquet file (string pages, dictionaries, page headers): every
    read ends in documents and rejects whose strings the output can store, never an exception
    (before: UnicodeDecodeError, ArrowInvalid "Index not in dictionary bounds")."""
    import random

    path = tmp_path / "fuzz.parquet"
    table = pa.table(
        {"id": [f"i{i}" for i in range(3000)], "text": [f"Mary {i % 50}" for i in range(3000)]}
    )
    pq.write_table(table, path, row_group_size=1000)
    clean = path.read_bytes()
    for seed in range(150):
        rng = random.Random(seed)
        data = bytearray(clean)
        for _ in range(5):
            data[rng.randrange(4, len(data) - 200)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        [file], _ = expand_inputs([str(path)])
        for item in read_file(file, ReadOptions()):
            for value in vars(item).values():
                if isinstance(value, str):
                    value.encode("utf-8")  # what the Parquet writer will do


# --- file names that are not UTF-8 ---------------------------------------------------------------


def test_file_names_that_are_not_utf8_are_read_and_shown_escaped(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    raw = os.fsencode(root)

    def create(name: bytes, data: bytes) -> str:
        fd = os.open(os.path.join(raw, name), os.O_CREAT | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return os.fsdecode(os.path.join(raw, name))

    os.mkdir(os.path.join(raw, b"d\xfcr"))
    create(b"caf\xe9.txt", GOOD[0].encode())
    create(b"d\xfcr/a.jsonl", b'{"text": "Paris"}\nnot json\n{"id": "x", "text": "Mary"}\n')
    create(b"notes\xff.md", b"skipped")
    shown = f"{root}/caf\\xe9.txt"
    shown_jsonl = f"{root}/d\\xfcr/a.jsonl"
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [root], out)
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=4, annotated=3)
    assert rejects(out) == [(shown_jsonl, f"{shown_jsonl}:2", 2, "not valid JSON: Expecting value")]
    spans = pq.read_table(out)
    assert set(spans.column("source").to_pylist()) <= {shown, shown_jsonl}
    assert set(spans.column("doc_id").to_pylist()) <= {shown, f"{shown_jsonl}:1", "x"}
    skipped = [e["path"] for e in log_events(result.output, "skipped_file")]
    assert f"{root}/notes\\xff.md" in skipped
    assert_rerun_is_a_noop(tiny_bundle, [root], out, rejected=True)

    # Named on the command line, too (the shell passes the bytes; Python surrogate-escapes them).
    named = tmp_path / "named"
    result = annotate(tiny_bundle, [os.fsdecode(os.path.join(raw, b"caf\xe9.txt"))], named)
    assert result.exit_code == 0, result.output
    assert_accounted(named, documents=1, annotated=1)
    assert_rerun_is_a_noop(
        tiny_bundle, [os.fsdecode(os.path.join(raw, b"caf\xe9.txt"))], named, False
    )


def test_a_named_unknown_format_that_is_not_utf8_is_a_clear_error(tiny_bundle, tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.md")
    with open(path, "wb") as f:
        f.write(b"x")
    result = annotate(tiny_bundle, [os.fsdecode(path)], tmp_path / "out")
    assert result.exit_code == 1
    assert f"Error: {tmp_path}/caf\\xe9.md: unknown input format" in result.output


# --- unreadable directories and files ------------------------------------------------------------


def corpus_with_a_subdirectory(root: Path) -> Path:
    write_txt(root / "a" / "lines.txt", GOOD[:2])  # one document (txt mode "file")
    write_jsonl(root / "b" / "secret" / "docs.jsonl", [{"text": t} for t in GOOD])
    write_jsonl(root / "c" / "docs.jsonl", [{"id": f"c{i}", "text": t} for i, t in enumerate(GOOD)])
    return root / "b" / "secret"


@pytest.mark.skipif(as_root, reason="root reads a directory whatever its mode")
def test_an_unreadable_subdirectory_is_a_reject_chmod(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    secret = corpus_with_a_subdirectory(root)
    secret.chmod(0)
    try:
        out = tmp_path / "out"
        result = annotate(tiny_bundle, [root], out)
        assert result.exit_code == 0, result.output
        assert rejects(out) == [
            (str(secret), None, None, "cannot read directory: Permission denied")
        ]
        assert_accounted(out, documents=1 + len(GOOD) + 1, annotated=1 + len(GOOD))
        assert_rerun_is_a_noop(tiny_bundle, [root], out, rejected=True)
    finally:
        secret.chmod(0o755)


def test_an_unreadable_subdirectory_is_a_reject(tiny_bundle, tmp_path, monkeypatch):
    """The same, as root too: listing that one directory fails as permissions would make it."""
    root = tmp_path / "in"
    secret = corpus_with_a_subdirectory(root)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(secret):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # os.walk lists directories with it
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [root], out)
    assert result.exit_code == 0, result.output
    assert rejects(out) == [(str(secret), None, None, "cannot read directory: Permission denied")]
    # lines.txt, the documents of c/, and the reject: nothing of the rest vanished.
    assert_accounted(out, documents=1 + len(GOOD) + 1, annotated=1 + len(GOOD))
    [warning] = log_events(result.output, "rejected_file")
    assert warning["level"] == "warning" and warning["path"] == str(secret)
    assert_rerun_is_a_noop(tiny_bundle, [root], out, rejected=True)


@pytest.mark.skipif(as_root, reason="root opens a file whatever its mode")
def test_an_unreadable_file_is_a_reject_chmod(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    corpus_with_a_subdirectory(root)
    locked = root / "c" / "docs.jsonl"
    locked.chmod(0)
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [root], out)
    assert result.exit_code == 0, result.output
    assert rejects(out) == [
        (str(locked), None, None, "file unreadable after 0 documents: Permission denied")
    ]
    assert_accounted(out, documents=1 + len(GOOD) + 1, annotated=1 + len(GOOD))


def test_an_unreadable_file_is_a_reject(tiny_bundle, tmp_path, monkeypatch):
    root = tmp_path / "in"
    corpus_with_a_subdirectory(root)
    locked = root / "c" / "docs.jsonl"
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [root], out)
    assert result.exit_code == 0, result.output
    assert rejects(out) == [
        (str(locked), None, None, "file unreadable after 0 documents: Permission denied")
    ]
    assert_accounted(out, documents=1 + len(GOOD) + 1, annotated=1 + len(GOOD))
    assert_rerun_is_a_noop(tiny_bundle, [root], out, rejected=True)


# --- special files -------------------------------------------------------------------------------


def a_block_device() -> str | None:
    for entry in os.scandir("/dev"):
        try:
            if stat.S_ISBLK(entry.stat().st_mode):
                return entry.path
        except OSError:
            continue
    return None


def test_special_files_in_a_directory_are_rejected_not_opened(tiny_bundle, tmp_path):
    """A FIFO nobody writes to and a link to /dev/zero used to block the run for ever; now each
    is one reject, logged, and never opened. The subprocess's timeout turns a hang into a fail."""
    root = tmp_path / "in"
    write_jsonl(root / "good.jsonl", [{"id": f"g{i}", "text": t} for i, t in enumerate(GOOD)])
    os.mkfifo(root / "x.jsonl")
    os.symlink("/dev/zero", root / "zero.jsonl")
    expected = {
        str(root / "x.jsonl"): "not a regular file (FIFO)",
        str(root / "zero.jsonl"): "not a regular file (character device)",
    }
    server = socket.socket(socket.AF_UNIX)
    if len(str(root / "s.txt")) < 100:  # AF_UNIX paths are at most 107 bytes
        server.bind(str(root / "s.txt"))
        expected[str(root / "s.txt")] = "not a regular file (socket)"
    device = a_block_device()
    if device is not None:
        os.symlink(device, root / "disk.txt")
        expected[str(root / "disk.txt")] = "not a regular file (block device)"
    out = tmp_path / "out"
    try:
        result = annotate_in_subprocess(tiny_bundle, [root], out)
        assert result.returncode == 0, result.stderr
        assert rejects(out) == sorted(((p, None, None, r) for p, r in expected.items()), key=repr)
        assert_accounted(out, documents=len(GOOD) + len(expected), annotated=len(GOOD))
        warned = {e["path"]: e["reason"] for e in log_events(result.stderr, "rejected_file")}
        assert warned == expected
        again = annotate_in_subprocess(tiny_bundle, [root], out)
        assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
        strict = annotate_in_subprocess(tiny_bundle, [root], out, "--fail-on-reject")
        assert strict.returncode == 3, strict.stderr
    finally:
        server.close()


def test_a_named_fifo_is_a_reject_not_a_hang(tiny_bundle, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": t} for t in GOOD])
    fifo = tmp_path / "x.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    result = annotate_in_subprocess(tiny_bundle, [fifo, good], out)
    assert result.returncode == 0, result.stderr
    assert rejects(out) == [(str(fifo), None, None, "not a regular file (FIFO)")]
    assert_accounted(out, documents=len(GOOD) + 1, annotated=len(GOOD))


def test_a_fifo_that_replaces_a_listed_file_is_not_waited_for(tmp_path):
    """Listed as a regular file, a FIFO by the time it is read: the open does not block."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "Paris"}])
    [file], _ = expand_inputs([str(path)])
    path.unlink()
    os.mkfifo(path)
    with deadline(10):
        reasons = [r.reason for r in read_file(file, ReadOptions())]
    assert reasons == ["file unreadable after 0 documents: not a regular file (FIFO)"]


# --- skipped files are logged --------------------------------------------------------------------


def test_files_of_unknown_formats_are_logged_as_skipped(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    write_jsonl(root / "good.jsonl", [{"text": t} for t in GOOD])
    (root / "x.jsonl.GZ").write_bytes(b"not gzip")  # the extension is case-sensitive for .gz
    (root / "notes.md").write_text("John Smith")
    result = annotate(tiny_bundle, [root], tmp_path / "out")
    assert result.exit_code == 0, result.output
    skipped = log_events(result.output, "skipped_file")
    assert {e["path"] for e in skipped} == {str(root / "x.jsonl.GZ"), str(root / "notes.md")}
    assert {e["level"] for e in skipped} == {"info"}


# --- a file that grows during the run ------------------------------------------------------------


def test_a_file_appended_to_during_the_run_is_read_up_to_its_listed_size(
    tiny_bundle, tmp_path, monkeypatch
):
    """Lines appended after the run listed the file are not read: the rows are those of the file
    as listed, and agree with the size recorded in the manifest."""
    path = write_jsonl(
        tmp_path / "in" / "log.jsonl", [{"id": f"l{i}", "text": t} for i, t in enumerate(GOOD)]
    )
    reference = tmp_path / "reference"
    assert annotate(tiny_bundle, [path], reference).exit_code == 0
    listed_size = path.stat().st_size
    real_open_local = readers._open_local

    def open_after_an_append(file):
        with open(path, "a") as f:  # another process appends while the run reads
            f.write(json.dumps({"id": "late", "text": GOOD[0]}) + "\n")
        return real_open_local(file)

    monkeypatch.setattr(readers, "_open_local", open_after_an_append)
    out = tmp_path / "out"
    result = annotate(tiny_bundle, [path], out)
    assert result.exit_code == 0, result.output
    assert_accounted(out, documents=len(GOOD), annotated=len(GOOD))
    assert rows(out) == rows(reference)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [i["size"] for i in manifest["inputs"]] == [listed_size]
    assert path.stat().st_size > listed_size


def grown_during_a_run(bundle: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    path = write_jsonl(tmp_path / "in" / "log.jsonl", [{"text": t} for t in GOOD])
    real_open_local = readers._open_local

    def open_after_an_append(file):
        with open(path, "a") as f:
            f.write(json.dumps({"text": GOOD[0]}) + "\n")
        return real_open_local(file)

    with monkeypatch.context() as patch:
        patch.setattr(readers, "_open_local", open_after_an_append)
        assert annotate(bundle, [path], tmp_path / "out").exit_code == 0
    return path, tmp_path / "out"


def test_the_rerun_after_an_input_grew_is_a_noop(tiny_bundle, tmp_path, monkeypatch):
    path, out = grown_during_a_run(tiny_bundle, tmp_path, monkeypatch)
    before = rows(out)
    again = annotate(tiny_bundle, [path], out)
    assert "inputs changed" not in again.output
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    assert "grew from" in again.output  # said, as a warning
    assert rows(out) == before


def test_gz_and_parquet_are_read_up_to_their_listed_size(tmp_path):
    """A .gz with a member appended (gzip allows it) and a Parquet file: the bytes past the
    listed size are not read."""
    import gzip

    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "Paris"}\n'))
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["Paris", "Mary"]}), parquet)
    files, _ = expand_inputs([str(gz), str(parquet)])
    with open(gz, "ab") as f:
        f.write(gzip.compress(b'{"text": "late"}\n'))
    with open(parquet, "ab") as f:
        f.write(b"appended garbage after the footer")  # pyarrow reads the footer at the end
    assert [d.text for d in read_file(files[0], ReadOptions())] == ["Paris"]
    assert [d.text for d in read_file(files[1], ReadOptions())] == ["Paris", "Mary"]


# --- resuming inside hostile files ---------------------------------------------------------------


def test_read_file_from_any_item_equals_the_tail_of_a_full_read(tmp_path, monkeypatch):
    """The resume contract of read_file for the new cases: skip n items = drop n of a full read."""
    root = tmp_path / "in"
    invalid_utf8_parquet(root / "table.parquet")
    surrogate_records(root / "s")
    jsonl_lines(root / "deep.jsonl", ['{"text": "a"}', "[" * 100_000, '{"text": "b"}'])
    os.mkfifo(root / "fifo.jsonl")
    (root / "secret").mkdir()
    write_txt(root / "secret" / "a.txt", ["x"])
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(root / "secret"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, _ = expand_inputs([str(root)])
    assert len(files) == 5
    with deadline(60):
        check_tails(files)


def check_tails(files: list) -> None:
    for options in (ReadOptions(), ReadOptions(encoding_errors="replace")):
        for file in files:
            full = list(read_file(file, options))
            for skip in sorted(
                {0, 1, 2, 7, 8, 1024, 1500, len(full) - 1, len(full), len(full) + 3}
            ):
                if skip >= 0:
                    assert list(read_file(file, options, skip)) == full[skip:], (file.path, skip)
