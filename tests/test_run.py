"""The run core (run.py) and its pieces: the part writer on an in-memory stream, readers that
resume in the middle of a file, the manifest's format check, option checks, and the import graph
of the package (no cycles, no private names taken from another module)."""

from __future__ import annotations

import ast
import gzip
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import build_corpus, write_bad_inputs, write_jsonl, write_parquet, write_txt
from test_annotate import Crash, assert_complete, crashing_documents, manifest_of, sorted_rows

import ner_batch
import ner_batch.annotate as annotate_module
import ner_batch.manifest as manifest_module
from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.errors import OptionError, OutputError
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
    # As nerbatch 0.1 wrote it: no position, no batching settings, no fingerprints.
    del manifest["position"], manifest["fingerprints"]
    for key in ("batch_size", "max_batch_tokens", "chunk_docs", "chunk_chars", "part_docs"):
        del manifest["settings"][key]
    del manifest["settings"]["device"], manifest["settings"]["engine"]
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
    with pytest.raises(OptionError, match=message):
        run([path], tmp_path / "out.parquet", read=read)
    assert not (tmp_path / "out.parquet").exists()


def test_an_unknown_engine_is_refused(tiny_bundle, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    config = AnnotateConfig([str(path)], str(tmp_path / "o"), model=str(tiny_bundle))
    config.engine = "dask"
    with pytest.raises(OptionError, match=r"unknown engine 'dask'; expected one of \['local'"):
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


def module_imports(package: Path = PACKAGE) -> dict[str, list[tuple[str, list[str]]]]:
    """For each module of the package: (imported module, names) of every import of another
    module of it, in any form and anywhere (lazy imports in functions included): `from .x
    import a`, `from . import x`, `import ner_batch.x`, `from ner_batch import x`, `from
    ner_batch.x import a`. A name of the package's `__init__` (`from . import __version__`)
    is an edge to `__init__`."""
    name = package.name
    modules = {path.stem for path in package.glob("*.py")}
    graph = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    head, _, rest = alias.name.partition(".")
                    if head == name and rest:
                        edges.append((rest.split(".")[0], []))
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    target = node.module or ""
                elif node.level == 0 and (node.module or "").split(".")[0] == name:
                    target = (node.module or "").partition(".")[2]
                else:
                    continue
                if target:
                    edges.append((target.split(".")[0], [alias.name for alias in node.names]))
                    continue
                for alias in node.names:  # `from . import x`: a module, or a name of __init__
                    if alias.name in modules:
                        edges.append((alias.name, []))
                    else:
                        edges.append(("__init__", [alias.name]))
        graph[path.stem] = edges
    return graph


def test_the_import_walk_sees_every_form_of_import(tmp_path):
    package = tmp_path / "ner_batch"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '1'\n")
    for leaf in ("b", "c", "d", "e", "f", "g"):
        (package / f"{leaf}.py").write_text("")
    (package / "a.py").write_text(
        "from . import b, __version__\n"
        "from .c import thing\n"
        "import ner_batch.d\n"
        "from ner_batch import e\n"
        "def lazy():\n"
        "    from ner_batch.f import other\n"
        "    from . import g as renamed\n"
    )
    edges = module_imports(package)["a"]
    assert {target for target, _ in edges} == {"b", "c", "d", "e", "f", "g", "__init__"}
    assert ("__init__", ["__version__"]) in edges
    # and on the package itself: the edges that `from . import x` makes are seen
    real = {m: {t for t, _ in e} for m, e in module_imports().items()}
    assert "backends" in real["runtimes"] and "openvino_backend" in real["backends"]


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


# --- the lock ------------------------------------------------------------------------------------


def test_two_runs_on_a_stale_lock_never_both_hold_it(tmp_path, monkeypatch):
    """50 rounds of two runs starting at once on the lock of a killed run, with a delay between
    taking the lock and writing it (where a check-then-act take-over lets both in)."""
    import threading

    from ner_batch.lock import RunLock
    from ner_batch.output import OutputDir

    real_take = RunLock._take

    def slow_take(self, fd, path):
        time.sleep(0.005)
        real_take(self, fd, path)

    monkeypatch.setattr(RunLock, "_take", slow_take)
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(50):
        (out / "_lock").write_text(f"{dead.pid}@{socket.gethostname()}")
        barrier = threading.Barrier(2)
        held: list[tuple[float, float]] = []
        refused: list[str] = []

        def contender(barrier=barrier, held=held, refused=refused):
            barrier.wait()
            try:
                with RunLock(OutputDir(out)):
                    entered = time.monotonic()
                    time.sleep(0.02)
                    held.append((entered, time.monotonic()))
            except OutputError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=contender) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(held) == 1 and len(refused) == 1, (held, refused)
        assert "being written by another annotate run" in refused[0]
        assert not (out / "_lock").exists()


@pytest.mark.parametrize("content", [b"", b"garbage\x00\xff", b"@", b"123"])
def test_an_empty_or_unreadable_lock_is_taken(run, tmp_path, content):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    out.mkdir()
    (out / "_lock").write_bytes(content)
    run([path], out)
    assert_complete(out)


# --- a kill before the first commit; --overwrite ------------------------------------------------


def test_a_crash_between_the_first_part_and_its_manifest_resumes(run, tmp_path, monkeypatch):
    """Default --part-docs: the one part of a small corpus is published, its manifest never
    written; the same command then finishes (the run's first manifest was written at its start)."""
    corpus = build_corpus(tmp_path)
    reference = tmp_path / "reference.parquet"
    run([corpus], reference)
    real_write = manifest_module.write_manifest
    calls = []

    def write_manifest(out, manifest):
        calls.append(len(manifest.parts))
        if len(calls) == 2:  # the first part's commit
            raise Crash("killed before the manifest")
        real_write(out, manifest)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", write_manifest)
        with pytest.raises(Crash):
            run([corpus], out)
    assert (out / "part-00000.parquet").exists() and manifest_of(out)["parts"] == []
    run([corpus], out)
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)


def test_leftovers_of_a_run_killed_before_its_first_manifest_are_resumed(run, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    out.mkdir()
    (out / "_lock").write_text("")
    (out / "._manifest.json.tmp").write_text("{")
    (out / ".part-00000.parquet.tmp").write_bytes(b"PAR1")
    run([path], out)
    assert_complete(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_overwrite_refuses_a_directory_with_foreign_files_and_lists_them(run, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    run([path], out)
    (out / "part-0001.csv").write_text("mine")
    (out / "_keep_me.txt").write_text("mine")
    (out / "_rejects").mkdir(exist_ok=True)
    (out / "_rejects" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OutputError) as raised:
        run([path], out, overwrite=True)
    assert "_keep_me.txt, _rejects/notes.txt, part-0001.csv" in str(raised.value)
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing deleted


def test_overwrite_of_parts_without_a_manifest_is_refused(run, tmp_path):
    """`part-00000.parquet` alone (another tool's output) is not ours: no manifest names it."""
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(OutputError, match=r"did not write \(part-00000.parquet\)"):
        run([path], out, overwrite=True)


def test_overwrite_replaces_an_annotate_output(run, tmp_path):
    corpus = build_corpus(tmp_path)
    write_bad_inputs(corpus / "bad")
    out = tmp_path / "out.parquet"
    run([corpus], out, part_docs=5, read=ReadOptions(txt_mode="lines"))
    assert len(list(out.glob("part-*.parquet"))) > 2 and (out / "_rejects").is_dir()
    summary = run([corpus], out, overwrite=True)
    assert summary["parts"] == 1 and sorted(p.name for p in out.glob("part-*")) == [
        "part-00000.parquet"
    ]
    assert_complete(out)


# --- options and signals through the CLI ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "0 is not in the range x>=1"),
        ("--part-docs", "0", "0 is not in the range x>=1"),
        ("--max-batch-tokens", "0", "0 is not in the range x>=1"),
        ("--max-length", "0", "0 is not in the range x>=1"),
        ("--stride", "-1", "-1 is not in the range x>=0"),
        ("--threads", "-2", "-2 is not in the range x>=0"),
    ],
)
def test_options_out_of_range_are_usage_errors(tiny_bundle, tmp_path, option, value, message):
    from click.testing import CliRunner

    from ner_batch.cli import cli

    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli, ["annotate", str(path), str(out), "--model", str(tiny_bundle), option, value]
    )
    assert result.exit_code == 2
    assert message in result.output and option in result.output
    assert not out.exists()


def test_an_option_out_of_range_in_the_library_is_an_option_error(run, tmp_path):
    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    for name in ("batch_size", "part_docs", "max_batch_tokens", "chunk_docs", "streams"):
        bad = -1 if name == "streams" else 0  # streams 0: the runtime's best
        with pytest.raises(OptionError, match=f"--{name.replace('_', '-')} must be an integer"):
            run([path], tmp_path / "out.parquet", **{name: bad})
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("after", [0.15, 0.3, 0.6, 1.0])
def test_sigterm_while_starting_is_one_error_line_and_resumable(tiny_bundle, tmp_path, after):
    from test_reliability import cli

    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith visited Paris ."] * 50)
    out = tmp_path / "out.parquet"
    args = cli("annotate", str(path), str(out), "--model", str(tiny_bundle))
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    # Else it had finished already (a signal during the interpreter's own exit is its default).
    if not (out / "_SUCCESS").exists():
        assert process.returncode == 1, (process.returncode, stderr)
        assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
        assert "unexpected" not in stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert_complete(out)


def test_an_input_that_grew_is_read_up_to_its_recorded_size(run, tmp_path, caplog):
    """Appended to after the output was made: the rerun is a no-op that says so, and a resumed
    run reads the bytes the first one listed (what was appended goes into another output)."""
    path = write_jsonl(
        tmp_path / "in" / "log.jsonl", [{"id": str(i), "text": "Paris"} for i in range(9)]
    )
    out = tmp_path / "out.parquet"
    first = run([path], out)
    with path.open("a") as f:
        f.write(json.dumps({"id": "late", "text": "Berlin"}) + "\n")
    with caplog.at_level("WARNING"):
        again = run([path], out)
    assert again["already_complete"] and again["documents"] == first["documents"] == 9
    assert "grew from" in caplog.text
    # A partly done output resumes over the recorded bytes only.
    partial = tmp_path / "partial.parquet"
    path.write_text("".join(json.dumps({"id": str(i), "text": "Paris"}) + "\n" for i in range(9)))
    with pytest.raises(Crash), pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=5))
        run([path], partial, part_docs=4)
    with path.open("a") as f:
        f.write(json.dumps({"id": "late", "text": "Berlin"}) + "\n")
    resumed = run([path], partial, part_docs=4)
    assert resumed["documents"] == 9
    assert "late" not in {r["doc_id"] for r in pq.read_table(partial).to_pylist()}


def test_overwrite_killed_midway_leaves_an_output_the_same_command_completes(run, tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "out.parquet"
    run([corpus], out, part_docs=3)
    reference = tmp_path / "reference.parquet"
    run([corpus], reference, part_docs=5)
    real_remove = manifest_module.OutputDir.remove
    calls = []

    def remove(self, name):
        calls.append(name)
        if len(calls) == 3:
            raise Crash("killed while --overwrite removes the old parts")
        real_remove(self, name)

    with pytest.raises(Crash), pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_module.OutputDir, "remove", remove)
        run([corpus], out, part_docs=5, overwrite=True)
    assert manifest_of(out)["parts"] == []  # the new run's manifest came first
    run([corpus], out, part_docs=5)  # the same options, without --overwrite: it resumes
    assert_complete(out)
    assert sorted_rows(out) == sorted_rows(reference)
    assert sorted(p.name for p in out.glob("part-*")) == sorted(
        p.name for p in reference.glob("part-*")
    )


def test_an_output_that_cannot_be_created_is_one_clear_error(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from ner_batch.cli import cli

    path = write_txt(tmp_path / "in" / "a.txt", ["John Smith"])
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    result = CliRunner().invoke(
        cli, ["annotate", str(path), str(blocker / "out.parquet"), "--model", str(tiny_bundle)]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot create the output ")
    assert "unexpected" not in result.output


def test_an_input_rewritten_larger_is_refused_not_read_in_part(run, tmp_path):
    """Larger and newer, but its recorded bytes are gone (copytruncate, a regenerated file):
    not an append, so the output is refused as changed."""
    path = write_jsonl(
        tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": "Paris"} for i in range(5)]
    )
    out = tmp_path / "out.parquet"
    run([path], out)
    write_jsonl(path, [{"id": f"new{i}", "text": "Berlin and Rome"} for i in range(9)])
    with pytest.raises(OutputError, match="the inputs changed"):
        run([path], out)
