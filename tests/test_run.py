"""The run core (run.py) and its pieces: the part writer on an in-memory stream, readers that
resume in the middle of a file, the manifest's format check, option checks, and the import graph
of the package (no cycles, no private names taken from another module)."""

from __future__ import annotations

import ast
import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import build_corpus, write_bad_inputs, write_jsonl, write_parquet, write_txt
from test_annotate import Crash, assert_complete, crashing_documents, manifest_of, sorted_rows

import ner_batch
import ner_batch.annotate as annotate_module
from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.errors import InputError, OutputError
from ner_batch.output import SPAN_SCHEMA, PartWriter
from ner_batch.readers import ReadOptions, expand_inputs, read_file
from ner_batch.tagger import Span

PACKAGE = Path(ner_batch.__file__).parent


# --- PartWriter ----------------------------------------------------------------------------------


def test_part_writer_writes_row_groups_to_an_in_memory_stream():
    sink = pa.BufferOutputStream()
    with PartWriter(sink, row_group_size=3) as part:
        for i in range(4):
            text = f"John Smith {i}"
            part.add(f"d{i}", "src", text, [Span(0, 4, "PER", 0.5), Span(5, 10, "PER", 0.25)], "m")
    assert part.rows == 8
    table = pq.read_table(pa.BufferReader(sink.getvalue()))
    assert table.schema == SPAN_SCHEMA
    assert table.num_rows == 8
    assert table.column("text").to_pylist()[:2] == ["John", "Smith"]
    assert pq.ParquetFile(pa.BufferReader(sink.getvalue())).num_row_groups == 2  # 4 + 4 rows


def test_part_writer_aborts_on_an_error_and_publishes_nothing():
    events = []
    sink = pa.BufferOutputStream()
    with (
        pytest.raises(Crash),
        PartWriter(
            sink, publish=lambda: events.append("publish"), discard=lambda: events.append("discard")
        ) as part,
    ):
        part.add("d", "src", "Paris", [Span(0, 5, "LOC", 0.9)], "m")
        raise Crash("killed mid-part")
    assert events == ["discard"]
    part.abort()  # a second abort is a no-op
    assert events == ["discard"]


def test_part_writer_commit_returns_rows_and_publishes_once():
    events = []
    part = PartWriter(pa.BufferOutputStream(), publish=lambda: events.append("publish"))
    part.add("d", "src", "Paris", [Span(0, 5, "LOC", 0.9)], "m")
    assert part.commit() == 1
    part.abort()  # after commit: nothing to drop
    assert events == ["publish"]


# --- readers resume inside a file ----------------------------------------------------------------


def every_kind_of_file(root: Path) -> list:
    build_corpus(root)
    write_bad_inputs(root / "corpus" / "bad")
    big = [{"id": f"r{i}", "text": f"Mary {i} in Paris"} for i in range(2500)]
    write_jsonl(root / "corpus" / "big.jsonl", big)
    write_txt(root / "corpus" / "lines.txt", [f"line {i}" for i in range(50)])
    # Several row groups, so that whole groups are passed over by their metadata.
    table = pa.table({"id": [f"p{i}" for i in range(3000)], "text": ["Berlin"] * 3000})
    pq.write_table(table, root / "corpus" / "groups.parquet", row_group_size=700)
    write_parquet(root / "corpus" / "bytes.parquet", {"text": [b"Mary", b"\xff bad", b"Paris"]})
    files, _ = expand_inputs([str(root / "corpus")])
    return files


@pytest.mark.parametrize("txt_mode", ["file", "lines"])
def test_read_file_from_any_item_equals_the_tail_of_a_full_read(tmp_path, txt_mode):
    options = ReadOptions(txt_mode=txt_mode)
    for file in every_kind_of_file(tmp_path):
        full = list(read_file(file, options))
        for skip in sorted({0, 1, 2, len(full) // 2, len(full) - 1, len(full), len(full) + 3}):
            if skip < 0:
                continue
            assert list(read_file(file, options, skip)) == full[skip:], (file.path, skip)


def test_resume_seeks_instead_of_rereading(run, tmp_path):
    """A resumed run reads only the documents after the recorded position: resuming near the end
    of a large file reads a small fraction of it (the rest is skipped by a scan for newlines)."""
    path = write_jsonl(
        tmp_path / "in" / "big.jsonl",
        [{"id": str(i), "text": "John Smith visited Paris ."} for i in range(60_000)],
    )
    options = {"part_docs": 57_000}
    out = tmp_path / "out.parquet"
    with pytest.raises(Crash), pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=57_500))
        run([path], out, **options)
    position = manifest_of(out)["position"]
    assert position == {"documents_done": 57_000, "input": 0, "items": 57_000}

    parsed = []
    real_loads = json.loads

    def counting_loads(data, *args, **kwargs):
        if isinstance(data, str) and "visited Paris" in data:  # a document, not the manifest
            parsed.append(1)
        return real_loads(data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ner_batch.readers.json.loads", counting_loads)
        started = time.monotonic()
        summary = run([path], out, **options)
        elapsed = time.monotonic() - started
    assert summary["documents_this_run"] == 3_000
    assert len(parsed) == 3_000  # not 60,000: the first 57,000 lines were not parsed
    assert summary["documents"] == 60_000
    assert elapsed < 60
    assert_complete(out)


def test_resume_from_a_manifest_without_position_drops_the_done_documents(run, tmp_path):
    """Outputs written before positions were recorded resume by count, as before."""
    corpus = build_corpus(tmp_path)
    options = {"part_docs": 4, "read": ReadOptions(txt_mode="lines")}
    reference = tmp_path / "reference.parquet"
    run([corpus], reference, **options)
    out = tmp_path / "out.parquet"
    with pytest.raises(Crash), pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=9))
        run([corpus], out, **options)
    manifest = manifest_of(out)
    assert manifest["documents_done"] == 8
    del manifest["position"]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    run([corpus], out, **options)
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)


def test_gz_input_resumes_too(run, tmp_path):
    path = write_jsonl(
        tmp_path / "in" / "docs.jsonl",
        [{"id": str(i), "text": f"Mary {i} met John in London ."} for i in range(40)],
        compress=True,
    )
    with gzip.open(path) as f:
        assert f.read(1)
    reference = tmp_path / "reference.parquet"
    run([path], reference, part_docs=6)
    out = tmp_path / "out.parquet"
    with pytest.raises(Crash), pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=20))
        run([path], out, part_docs=6)
    assert manifest_of(out)["position"]["items"] == 18
    run([path], out, part_docs=6)
    assert sorted_rows(out) == sorted_rows(reference)


# --- manifest and options ------------------------------------------------------------------------


def test_a_manifest_of_another_format_is_refused(run, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    run([path], out)
    manifest = manifest_of(out)
    manifest["format"] = "nerbatch-annotate/99"
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").unlink()
    with pytest.raises(OutputError, match="has format 'nerbatch-annotate/99', not "):
        run([path], out)
    run([path], out, overwrite=True)
    assert_complete(out)


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (ReadOptions(txt_mode="paragraph"), "unknown txt mode 'paragraph'; expected one of"),
        (ReadOptions(encoding_errors="ignore"), "unknown encoding_errors 'ignore'"),
        (ReadOptions(text_field=""), "must not be empty"),
    ],
)
def test_reader_options_are_checked_before_any_work(run, tmp_path, read, message):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    with pytest.raises(InputError, match=message):
        run([path], tmp_path / "out.parquet", read=read)
    assert not (tmp_path / "out.parquet").exists()


def test_an_unknown_engine_is_refused(tiny_bundle, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    config = AnnotateConfig([str(path)], str(tmp_path / "o"), model=str(tiny_bundle))
    config.engine = "spark"
    with pytest.raises(InputError, match=r"unknown engine 'spark'; expected one of \['local'"):
        annotate(config)


def test_cli_defaults_are_the_library_defaults():
    from ner_batch.cli import cli

    config = AnnotateConfig([], "")
    params = {p.name: p for p in cli.commands["annotate"].params}
    for name in ("batch_size", "max_batch_tokens", "segment", "streams", "part_docs", "variant"):
        assert params[name].default == getattr(config, name), name
    for name in ("txt_mode", "text_field", "id_field", "encoding_errors"):
        assert params[name].default == getattr(config.read, name), name


# --- the import graph ----------------------------------------------------------------------------


def module_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """For each module of the package: (imported module, names) of its `from .x import ...`."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = node.module or ""
                if not target:  # `from . import __version__`
                    target = "__init__"
                edges.append((target, [alias.name for alias in node.names]))
        graph[path.stem] = edges
    return graph


def test_no_module_imports_a_private_name_from_another():
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in module_imports().items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_the_package_has_no_import_cycles():
    graph = {m: {t for t, _ in edges if t != "__init__"} for m, edges in module_imports().items()}
    cycles: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, stack: list[str]) -> None:  # depth-first, lazy imports included
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []
