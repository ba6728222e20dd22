"""`nerbatch view` and `score --html`: the HTML builder (escaping, exact highlights, damaged spans,
long documents, filter attributes), the view over outputs (a real annotate run, missing and
moved inputs, sample and filters, rejects), the score page, and the page in a real headless
Chromium: highlighted text equals the Parquet spans, filters act, injected scripts do not run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ner_batch.cli import cli
from ner_batch.manifest import MANIFEST_FORMAT
from ner_batch.output import REJECT_SCHEMA, SPAN_SCHEMA
from ner_batch.page import Highlight, Labels, check_spans, esc, highlight, page, windows
from ner_batch.view import ViewOptions, build_view, view

INJECTION = (
    "<script>document.title='PWNED';document.body.insertAdjacentHTML('beforeend',"
    "'<p id=\"pwned\">pwned</p>')</script>"
)

# (doc_id, text, [(surface to find, occurrence, label, score)]): texts that break naive HTML
# or naive offsets. Spans are found with str.find, so their offsets are Python str indices.
HOSTILE = [
    (
        "inject",
        f'{INJECTION} said John Smith &amp; "Acme" \'Corp\' in Paris <img src=x onerror="'
        "document.title='IMG'\"> </mark></div><!-- ]]>",
        [("John Smith", 0, "PER", 0.93), ("Paris", 0, "LOC", 0.41), ("<script>", 0, "MISC", 0.7)],
    ),
    (
        "emoji",
        "\U0001f469\u200d\U0001f469\u200d\U0001f467 The family of Zo\u00eb went to \U0001f1eb"
        "\U0001f1f7 France, \U0001f600 \u0141\u00f3d\u017a and \U0001d54f\U0001d560.",
        [("France", 0, "LOC", 0.88), ("Zo\u00eb", 0, "PER", 0.95), ("\U0001f600", 0, "MISC", 0.3)],
    ),
    (
        "combining",
        "Cafe\u0301 owner Ame\u0301lie met Jose\u0301 and Zalgo Z\u0336\u0353a\u0337l\u0334g"
        "\u0335o\u0336 today.",
        [
            ("Ame\u0301lie", 0, "PER", 0.9),
            ("Jose\u0301", 0, "PER", 0.6),
            ("Z\u0336\u0353a\u0337l\u0334g\u0335o\u0336", 0, "ORG", 0.5),
        ],
    ),
    (
        "crlf",
        "Line one is Berlin\r\nLine two: Acme Corp\r\n\r\n\tTabbed\u00a0Mary\u200bAnn\rCR only",
        [
            ("Berlin", 0, "LOC", 0.97),
            ("Acme Corp", 0, "ORG", 0.8),
            ("Mary\u200bAnn", 0, "PER", 0.55),
        ],
    ),
    (
        "rtl",
        "\u05e9\u05dc\u05d5\u05dd from \u05ea\u05dc \u05d0\u05d1\u05d9\u05d1 and \u0645\u0631"
        "\u062d\u0628\u0627 \u0627\u0644\u0642\u0627\u0647\u0631\u0629 \u202eevil\u202c then Mary"
        " \u2067isolated\u2069 end",
        [
            ("\u05ea\u05dc \u05d0\u05d1\u05d9\u05d1", 0, "LOC", 0.9),
            ("\u0627\u0644\u0642\u0627\u0647\u0631\u0629", 0, "LOC", 0.85),
            ("Mary", 0, "PER", 0.92),
        ],
    ),
]


def find_spans(text: str, wanted) -> list[tuple[int, int, str, float]]:
    spans = []
    for surface, occurrence, label, score in wanted:
        at = -1
        for _ in range(occurrence + 1):
            at = text.find(surface, at + 1)
        assert at >= 0, (surface, text)
        spans.append((at, at + len(surface), label, score))
    return spans


def write_output(
    root: Path,
    documents: list[tuple[str, str, list[tuple[int, int, str, float]]]],
    rejects: list[tuple[str | None, int | None, str]] = (),
    surface: dict | None = None,
) -> Path:
    """An annotate output (manifest of annotate's format, one part, rejects) over a JSONL input
    of `documents`, without a model: the spans are given. `surface` overrides the recorded text
    of some spans ({(doc_id, start): text}), as a damaged output would have."""
    inputs = root / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    source = inputs / "docs.jsonl"
    with open(source, "w", encoding="utf-8", newline="") as f:
        for doc_id, text, _ in documents:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    out = root / "out.parquet"
    out.mkdir()
    rows = {name: [] for name in SPAN_SCHEMA.names}
    for doc_id, text, spans in documents:
        for start, end, label, score in spans:
            rows["doc_id"].append(doc_id)
            rows["source"].append(str(source))
            rows["start"].append(start)
            rows["end"].append(end)
            rows["label"].append(label)
            rows["text"].append((surface or {}).get((doc_id, start), text[start:end]))
            rows["score"].append(score)
            rows["model"].append("test-bundle")
    pq.write_table(pa.table(rows, schema=SPAN_SCHEMA), out / "part-00000.parquet")
    rejects_file = None
    if rejects:
        (out / "_rejects").mkdir()
        rejects_file = "_rejects/part-00000.parquet"
        pq.write_table(
            pa.table(
                {
                    "source": [str(source)] * len(rejects),
                    "doc_id": [r[0] for r in rejects],
                    "line": [r[1] for r in rejects],
                    "reason": [r[2] for r in rejects],
                },
                schema=REJECT_SCHEMA,
            ),
            out / rejects_file,
        )
    n_docs = len(documents) + len(rejects)
    spans = len(rows["doc_id"])
    counts = {
        "documents": n_docs,
        "annotated": len(documents),
        "rejected": len(rejects),
        "spans": spans,
        "tokens": 100,
    }
    info = source.stat()
    manifest = {
        "format": MANIFEST_FORMAT,
        "bundle_id": "test-bundle",
        "bundle": "export/test",
        "variant": "fp32",
        "device": "cpu",
        "settings": {
            "variant": "fp32",
            "read": {
                "txt_mode": "file",
                "text_field": "text",
                "id_field": "id",
                "encoding_errors": "strict",
            },
        },
        "inputs": [{"path": str(source), "size": info.st_size, "mtime": info.st_mtime}],
        "options": {"threads": 1},
        "files": {"read": 1, "rejected": 0, "skipped": 0},
        "parts": [
            {"file": "part-00000.parquet", "rejects_file": rejects_file, "rows": spans}
            | {"documents": n_docs, **counts}
        ],
        "documents_done": n_docs,
        "counts": counts,
        "complete": True,
        "summary": {**counts, "seconds": 1.5, "tokens_per_second": 66.7},
    }
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_bytes(b"")
    return out


def hostile_output(root: Path, **kwargs) -> Path:
    documents = [(d, text, find_spans(text, wanted)) for d, text, wanted in HOSTILE]
    return write_output(root, documents, **kwargs)


class Marks(HTMLParser):
    """The marks of a page (or a dumped DOM): attributes, classes and exact text, by document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.marks: list[dict] = []
        self.docs: list[dict] = []
        self.stack: list[dict | None] = []
        self.text_depth = 0  # inside a document's text: divs deep
        self.title = ""
        self.in_title = False
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "title":
            self.in_title = True
        if tag == "article" and "doc" in attrs.get("class", "").split():
            self.docs.append(dict(attrs, classes=attrs["class"].split(), text=""))
        if tag == "div" and (self.text_depth or "text" in attrs.get("class", "").split()):
            self.text_depth += 1
        if tag == "mark":
            entry = dict(attrs, classes=attrs.get("class", "").split(), text="", doc=self.docs[-1])
            self.marks.append(entry)
            self.stack.append(entry)

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag == "mark" and self.stack:
            self.stack.pop()
        if tag == "div" and self.text_depth:
            self.text_depth -= 1

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        for entry in self.stack:
            entry["text"] += data
        if self.text_depth:
            self.docs[-1]["text"] += data


def parse(html_text: str) -> Marks:
    parser = Marks()
    parser.feed(html_text)
    parser.close()
    return parser


def parquet_spans(out: Path) -> dict[tuple[str, int, int], dict]:
    table = pq.read_table(out)
    return {(r["doc_id"], r["start"], r["end"]): r for r in table.to_pylist()}


# --- the builder --------------------------------------------------------------------------------


def test_esc_keeps_every_character_as_text():
    assert esc('<a href="x">&amp;\'</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;amp;&#x27;&lt;/a&gt;"
    assert esc("a\r\nb") == "a&#13;\nb"  # the HTML parser would turn a raw CR into LF
    escaped = esc("x\r\ny")
    assert parse(f"<article class='doc'><mark>{escaped}</mark></article>").marks[0]["text"] == (
        "x\r\ny"
    )


@pytest.mark.parametrize("doc_id, text, wanted", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_highlights_are_exactly_the_spans(doc_id, text, wanted):
    spans = [Highlight(s, e, label, score) for s, e, label, score in find_spans(text, wanted)]
    drawable, problems = check_spans(text, spans)
    assert not problems
    marked = highlight(text, drawable, Labels(["PER", "LOC", "ORG", "MISC"]))
    html_text = f'<article class="doc">{marked}</article>'
    marks = parse(html_text).marks
    assert [m["text"] for m in marks] == [text[s.start : s.end] for s in drawable]
    assert "<script" not in html_text and "<img" not in html_text
    # Everything between the marks is the text too: the page shows the document, all of it.
    assert "".join(parse_text(html_text)) == text


def parse_text(html_text: str) -> list[str]:
    parts: list[str] = []

    class Text(HTMLParser):
        def handle_data(self, data):
            parts.append(data)

    parser = Text(convert_charrefs=True)
    parser.feed(html_text)
    parser.close()
    return parts


def test_astral_and_combining_offsets_are_code_points():
    text = "\U0001f600\U0001f600 Zo\u0065\u0301 x"
    start = text.index("Zo")
    span = Highlight(start, start + 4, "PER", 0.5)
    marks = parse(
        f'<article class="doc">{highlight(text, [span], Labels(["PER"]))}</article>'
    ).marks
    assert marks[0]["text"] == "Zoe\u0301"
    assert marks[0]["title"] == f"PER 0.500 [{start}, {start + 4})"


def test_damaged_spans_are_reported_not_drawn():
    text = "John Smith lives in Paris."
    spans = [
        Highlight(0, 10, "PER", 0.9, "John Smith"),
        Highlight(5, 15, "ORG", 0.8, "Smith live"),  # overlaps the first
        Highlight(20, 99, "LOC", 0.7, "Paris."),  # beyond the text
        Highlight(20, 25, "LOC", 0.7, "Berlin"),  # recorded text differs
        Highlight(7, 7, "MISC", 0.1, ""),  # empty
        Highlight(-3, 2, "MISC", 0.1, "Jo"),  # negative
    ]
    drawable, problems = check_spans(text, spans)
    assert [(s.start, s.end) for s in drawable] == [(0, 10)]
    reasons = {(s.start, s.end): why for s, why in problems}
    assert "overlaps PER [0, 10)" in reasons[5, 15]
    assert "out of range" in reasons[20, 99]
    assert "differs" in reasons[20, 25]
    assert "out of range" in reasons[7, 7] and "out of range" in reasons[-3, 2]


def test_long_document_windows_keep_spans_whole_and_cut_at_words():
    words = " ".join(f"w{i}" for i in range(3000))
    text = words[:500] + " Angela Merkel " + words[500:9000] + " Paris " + words[9000:]
    a = text.index("Angela Merkel")
    b = text.index("Paris")
    spans = [Highlight(a, a + 13, "PER"), Highlight(b, b + 5, "LOC")]
    ranges, left_out = windows(text, spans, context=100, budget=2000)
    assert left_out == 0 and len(ranges) == 2
    for (begin, end), span in zip(ranges, spans, strict=True):
        assert begin <= span.start and span.end <= end
        assert end - begin < 320
        assert begin == 0 or text[begin - 1] == " "
        assert end == len(text) or text[end] == " "
    ranges, left_out = windows(text, spans, context=100, budget=250)
    assert len(ranges) == 1 and left_out == 1


def test_window_never_splits_a_cluster():
    text = "x" * 50 + "e\u0301\u0301" + "y" * 100 + "Name" + "z" * 100
    start = text.index("Name")
    # No spaces: the window edge falls inside the letters; it must not start on a combining mark.
    ranges, _ = windows(text, [Highlight(start, start + 4, "PER")], context=101, budget=5000)
    begin, end = ranges[0]
    assert not text[begin].startswith("\u0301")


def test_page_has_a_restrictive_csp_with_the_script_hash():
    html_text = page("t", "s", "<p>x</p>", script="console.log(1);")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html_text).group(1)
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "unsafe-eval" not in csp and "http" not in csp.replace("http-equiv", "")
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(b"console.log(1);").digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert "script-src 'none'" in page("t", "s", "<p>x</p>")


def test_label_colours_do_not_use_label_text_as_css():
    labels = Labels(['PER"><script>', "LOC"])
    assert "script" not in labels.css() and "script" not in labels.css_class('PER"><script>')
    chip = labels.chip('PER"><script>')
    assert "<script>" not in chip and "PER&quot;&gt;&lt;script&gt;" in chip


# --- the view of an output ----------------------------------------------------------------------


def test_view_of_hostile_text_is_exact_and_inert(tmp_path):
    out = hostile_output(tmp_path)
    html_text, summary = build_view(out)
    assert summary["problems"] == []
    page_ = parse(html_text)
    expected = parquet_spans(out)
    assert len(page_.marks) == len(expected)
    for m in page_.marks:
        row = expected[m["doc"]["data-id"], int(m["data-start"]), int(m["data-end"])]
        assert m["text"] == row["text"]
        assert m["data-label"] == row["label"]
        assert float(m["data-score"]) == pytest.approx(row["score"], abs=5e-4)
    # No markup from the data: the only script is the page's own, the img is text.
    assert html_text.count("<script") == 1 and "<img" not in html_text
    assert "PWNED" not in page_.title and "pwned" not in page_.ids
    assert "contains bidirectional control characters" in html_text
    # Each document's full text is on the page, character for character (CR included).
    texts = {d: t for d, t, _ in HOSTILE}
    assert {doc["data-id"]: doc["text"] for doc in page_.docs} == texts


def test_damaged_spans_are_listed_and_not_drawn(tmp_path):
    text = "John Smith lives in Paris."
    out = write_output(
        tmp_path,
        [
            (
                "d1",
                text,
                [
                    (0, 10, "PER", 0.9),
                    (5, 15, "ORG", 0.8),
                    (20, 99, "LOC", 0.7),
                    (20, 25, "LOC", 0.6),
                ],
            )
        ],
        surface={("d1", 20): "Berlin"},
    )
    html_text, summary = build_view(out)
    problems = "\n".join(summary["problems"])
    assert "ORG span [5, 15) overlaps PER [0, 10)" in problems
    assert "[20, 99) offsets [20, 99) out of range" in problems
    assert "recorded text 'Berlin'" in problems
    marks = parse(html_text).marks
    assert [(m["data-start"], m["data-end"]) for m in marks] == [("0", "10")]
    assert '<section class="problems">' in html_text


def test_long_document_is_shown_around_its_entities(tmp_path):
    filler = " ".join(f"word{i}" for i in range(4000))
    text = filler[:1000] + " Angela Merkel " + filler[1000:20000] + " Paris " + filler[20000:]
    spans = find_spans(text, [("Angela Merkel", 0, "PER", 0.9), ("Paris", 0, "LOC", 0.8)])
    out = write_output(tmp_path, [("long", text, spans)])
    html_text, _ = build_view(out, ViewOptions(context=80))
    marks = parse(html_text).marks
    assert [m["text"] for m in marks] == ["Angela Merkel", "Paris"]
    assert filler[5000:5100] not in html_text  # far from both entities: not shown
    assert html_text.count('class="gap"') == 3  # before, between, after
    assert "long document: shown around its entities (2 excerpts)" in html_text


def many_documents(n: int = 120) -> list:
    documents = []
    for i in range(n):
        text = f"Report {i}: Person{i} met Company{i % 7} in City{i % 5}."
        wanted = [(f"Person{i}", 0, "PER", 0.3 + 0.6 * (i % 2)), (f"Company{i % 7}", 0, "ORG", 0.8)]
        if i % 3 == 0:
            wanted.append((f"City{i % 5}", 0, "LOC", 0.95))
        documents.append((f"doc{i:03d}", text, find_spans(text, wanted)))
    return documents


def shown_ids(html_text: str) -> list[str]:
    return [d["data-id"] for d in parse(html_text).docs]


def test_sample_is_seeded_bounded_and_filtered(tmp_path):
    out = write_output(tmp_path, many_documents())
    first = shown_ids(build_view(out, ViewOptions(sample=10, seed=1))[0])
    assert len(first) == 10 == len(set(first))
    assert shown_ids(build_view(out, ViewOptions(sample=10, seed=1))[0]) == first
    assert shown_ids(build_view(out, ViewOptions(sample=10, seed=2))[0]) != first
    assert sorted(first) == first  # shown in input order

    html_text, summary = build_view(out, ViewOptions(sample=50, labels=("LOC",)))
    assert summary["matching"] == 40
    ids = shown_ids(html_text)
    assert len(ids) == 40 and all(int(i[3:]) % 3 == 0 for i in ids)
    # The page's filters start at the options: only LOC is checked.
    checked = re.findall(r'<input type="checkbox" class="lab" value="(\w+)"( checked)?>', html_text)
    assert dict(checked) == {"LOC": " checked", "ORG": "", "PER": ""}

    html_text, summary = build_view(out, ViewOptions(sample=200, min_score=0.5, query="person1"))
    ids = shown_ids(html_text)
    numbers = [int(i[3:]) for i in ids]
    # Person1, Person10-19, Person100-119 whose PER entity scores 0.9 (the odd ones).
    assert numbers == [n for n in range(120) if str(n).startswith("1") and n % 2 == 1]
    assert 'id="q" value="person1"' in html_text and 'value="0.5"' in html_text


def test_frequent_entities_exact_then_bounded(tmp_path):
    out = write_output(tmp_path, many_documents())
    _, summary = build_view(out)
    assert summary["approximate"] is False
    html_text, summary = build_view(out, ViewOptions(max_distinct=8, top=3))
    assert summary["approximate"] is True
    assert "Approximate" in html_text
    html_text, _ = build_view(out, ViewOptions(top=3))
    assert "Exact, over" in html_text
    # ORG: Company0 in 18 of the 120 documents, Company1-6 in 17 (ties by text).
    frequent = html_text[html_text.index("Most frequent entities") :]
    for name, count in (("Company0", 18), ("Company1", 17), ("Company2", 17)):
        assert f'<span class="t">{name}</span></td><td>{count}</td>' in frequent
    assert "Company3" not in frequent


def test_rejects_are_summarised_with_reasons(tmp_path):
    out = write_output(
        tmp_path,
        many_documents(5),
        rejects=[
            ("x:3", 3, "not valid UTF-8 at byte 17"),
            ("x:4", 4, "not valid UTF-8 at byte 230"),
            (None, 9, "not valid JSON: Expecting value"),
        ],
    )
    html_text, summary = build_view(out)
    assert summary["problems"] == []
    assert "Rejected documents (3)" in html_text
    assert "<td>not valid UTF-N at byte N</td><td>2</td>" in html_text
    assert "<td>not valid JSON: Expecting value</td><td>1</td>" in html_text


def test_missing_and_moved_inputs(tmp_path):
    out = write_output(tmp_path / "run", many_documents(6))
    moved = tmp_path / "elsewhere" / "in"
    shutil.move(tmp_path / "run" / "in", moved)
    html_text, summary = build_view(out)
    assert "missing" in summary["problems"][0]
    assert "Text not shown: input missing" in html_text
    assert len(parse(html_text).marks) == 0 and len(parse(html_text).docs) == 6

    html_text, summary = build_view(out, ViewOptions(inputs=(str(tmp_path / "elsewhere"),)))
    assert summary["problems"] == []
    assert summary["shown_with_text"] == 6
    assert "moved: read from" in html_text
    assert len(parse(html_text).marks) == 12 + 2


def test_input_appended_to_since_the_run_is_read_up_to_its_recorded_size(tmp_path):
    documents = many_documents(3)
    out = write_output(tmp_path, documents)
    with open(tmp_path / "in" / "docs.jsonl", "a") as f:
        f.write(json.dumps({"id": "doc000", "text": "a different text entirely"}) + "\n")
    html_text, summary = build_view(out)
    assert summary["shown_with_text"] == 3
    assert any("changed since the run" in p for p in summary["problems"])
    assert not any("differs" in p for p in summary["problems"])


def test_unreadable_part_and_document_not_in_its_input(tmp_path):
    out = write_output(tmp_path, many_documents(4))
    source = tmp_path / "in" / "docs.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    source.write_text("".join(lines[:1] + lines[2:]))  # doc001 is gone
    html_text, summary = build_view(out)
    assert any("document doc001: not found in" in p for p in summary["problems"])
    assert summary["shown_with_text"] == 3

    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["parts"].append(dict(manifest["parts"][0], file="part-00001.parquet"))
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "part-00001.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    html_text, summary = build_view(out)
    assert any("part part-00001.parquet is unreadable" in p for p in summary["problems"])
    assert "Problems" in html_text


def test_incomplete_output_and_not_an_output(tmp_path):
    out = write_output(tmp_path, many_documents(3))
    (out / "_SUCCESS").unlink()
    html_text, _ = build_view(out)
    assert "incomplete: 1 parts committed so far" in html_text
    result = CliRunner().invoke(
        cli, ["view", str(tmp_path / "in"), "--out", str(tmp_path / "v.html")]
    )
    assert result.exit_code == 1
    assert "is not an annotate output (no _manifest.json)" in result.output
    result = CliRunner().invoke(cli, ["view", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_view_cli_writes_the_page(tmp_path):
    out = write_output(tmp_path, many_documents(20))
    page_path = tmp_path / "report" / "view.html"
    result = CliRunner().invoke(
        cli,
        ["view", str(out), "--out", str(page_path), "--sample", "5", "--label", "PER,ORG"]
        + ["--min-score", "0.5", "--seed", "3", "--top", "4"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {page_path}: 5 of 5 sampled documents shown")
    html_text = page_path.read_text(encoding="utf-8")
    assert len(shown_ids(html_text)) == 5
    result = CliRunner().invoke(cli, ["view", str(out), "--min-score", "2"])
    assert result.exit_code == 2


# --- on real annotate outputs (the tiny bundle) --------------------------------------------------


def test_view_of_a_real_annotate_output_with_moved_inputs(run, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [
        "John Smith visited Paris on Thursday.",
        "The European Commission met Mary in London.\r\n"
        "Acme Corp said Peter Blackburn was in Berlin.",
        "\U0001f600 Zo\u00eb and Jose\u0301 from Germany & France <b>bold</b> "
        "\u05e9\u05dc\u05d5\u05dd",
    ]
    with open(corpus / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(texts * 5):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
        f.write("{not json\n")
    (corpus / "one.txt").write_text("Peter Blackburn met John in Paris and London.\n")
    out = tmp_path / "out.parquet"
    run([corpus], out)
    spans = parquet_spans(out)
    if not spans:
        pytest.skip("the tiny random model predicted no entity on this corpus")

    page_path = tmp_path / "view.html"
    result = CliRunner().invoke(
        cli, ["view", str(out), "--out", str(page_path), "--sample", "100"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    html_text = page_path.read_text(encoding="utf-8")
    marks = parse(html_text).marks
    assert len(marks) == len(spans)
    for m in marks:
        assert (
            m["text"]
            == spans[m["doc"]["data-id"], int(m["data-start"]), int(m["data-end"])]["text"]
        )
    assert "Rejected documents (1)" in html_text and "not valid JSON" in html_text

    # The corpus moves: the page says so, then --inputs finds it again.
    shutil.move(corpus, tmp_path / "moved")
    result = CliRunner().invoke(cli, ["view", str(out), "--out", str(page_path)])
    assert result.exit_code == 0, result.output
    assert "problems listed on the page" in result.output
    html_text = page_path.read_text(encoding="utf-8")
    assert "missing" in html_text and not parse(html_text).marks
    result = CliRunner().invoke(
        cli,
        ["view", str(out), "--out", str(page_path), "--sample", "100", "--inputs"]
        + [str(tmp_path / "moved")],
    )
    assert result.exit_code == 0, result.output
    assert "problems" not in result.output
    marks = parse(page_path.read_text(encoding="utf-8")).marks
    assert len(marks) == len(spans)


try:  # the S3 server fixtures of test_object_store (moto[server], the [dev] extra)
    from test_object_store import BUCKET, s3, s3_server, upload  # noqa: F401

    HAVE_S3 = True
except (ImportError, pytest.skip.Exception):
    HAVE_S3 = False


@pytest.mark.skipif(not HAVE_S3, reason="moto[server] is needed for the S3 tests")
def test_view_of_an_s3_output_over_s3_inputs(s3, run, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus / "docs.jsonl", "w") as f:
        for i in range(8):
            f.write(
                json.dumps({"id": f"d{i}", "text": "John Smith visited Paris and Berlin."}) + "\n"
            )
    source = upload(s3, corpus, "in")
    out = f"s3://{BUCKET}/out.parquet"
    run([source], out)
    result = CliRunner().invoke(
        cli, ["view", out, "--out", str(tmp_path / "view.html")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    html_text = (tmp_path / "view.html").read_text(encoding="utf-8")
    assert "problems" not in result.output
    assert len(parse(html_text).docs) == 8 or "no documents" in html_text.lower()
    # And the page itself can go to the object store.
    result = CliRunner().invoke(cli, ["view", out, "--out", f"s3://{BUCKET}/reports/view.html"])
    assert result.exit_code == 0, result.output
    assert s3.get_file_info(f"{BUCKET}/reports/view.html").size > 1000


# --- score --html --------------------------------------------------------------------------------


def fake_report() -> dict:
    row = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 4}
    table = {"micro": row, "macro": row, "weighted": row, "per_type": {"PER": row, "LOC": row}}
    return {
        "default": table,
        "strict": table,
        "token_accuracy": 0.9,
        "n_sentences": 2,
        "n_tokens": 10,
        "source": "bundle <b>x</b>",
        "gold": "gold.txt",
        "confusion": {
            "types": ["LOC", "PER"],
            "matrix": {
                "LOC": {"LOC": 3, "PER": 1, "missed": 0},
                "PER": {"LOC": 0, "PER": 9, "missed": 2},
                "spurious": {"LOC": 1, "PER": 0, "missed": 0},
            },
        },
        "errors": {
            "false_positives": [
                {"text": "<script>", "type": "PER", "count": 2, "example": "a [<script>] b"}
            ],
            "false_negatives": [],
        },
    }


def test_score_page_builder_escapes_and_highlights_both_sides():
    from ner_batch.report import html_report

    examples = {
        "false_positives": [
            {
                "tokens": ["a", "<script>", "met", "Paris"],
                "gold": [("LOC", 3, 4)],
                "predicted": [("PER", 1, 2), ("LOC", 3, 4)],
                "focus": (1, 2),
            }
        ],
        "false_negatives": [],
    }
    epochs = [
        {
            "epoch": 1,
            "train_loss": 0.9,
            "dev_f1": 0.5,
            "dev_precision": 0.4,
            "dev_recall": 0.6,
            "dev_per_type": {"PER": {"f1": 0.5}},
        },
        {
            "epoch": 2,
            "train_loss": 0.4,
            "dev_f1": 0.7,
            "dev_precision": 0.7,
            "dev_recall": 0.7,
            "dev_per_type": {"PER": {"f1": 0.8}},
        },
    ]
    html_text = html_report(fake_report(), examples, epochs)
    assert "<script" not in html_text and "<b>x</b>" not in html_text
    marks = parse(html_text.replace('<table class="errors">', '<article class="doc">')).marks
    # gold: Paris; predicted: <script> (outlined) and Paris
    assert [(m["text"], m["data-label"]) for m in marks] == [
        ("Paris", "LOC"),
        ("<script>", "PER"),
        ("Paris", "LOC"),
    ]
    assert "focus" in marks[1]["classes"]
    assert html_text.count("<svg") == 3  # P/R/F1, loss, per type
    assert 'class="heat"' in html_text and "rgba(37,99,235,1.000)" in html_text  # the peak cell


def test_score_html_end_to_end(run, tiny_conll, tiny_checkpoint, tmp_path):
    corpus = tmp_path / "gold.jsonl"
    result = CliRunner().invoke(cli, ["gold2corpus", str(tiny_conll), str(corpus)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out.parquet"
    run([corpus], out)
    page_path = tmp_path / "score.html"
    result = CliRunner().invoke(
        cli,
        ["score", str(tiny_conll), "--predictions", str(out), "--html", str(page_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"HTML report: {page_path}" in result.output
    html_text = page_path.read_text(encoding="utf-8")
    assert "Per type" in html_text and 'class="heat"' in html_text
    assert "script-src 'none'" in html_text and "<script" not in html_text
    assert "<svg" not in html_text  # no training curves for predictions

    page_path = tmp_path / "score-checkpoint.html"
    result = CliRunner().invoke(
        cli,
        ["score", str(tiny_conll), "--model", str(tiny_checkpoint), "--html", str(page_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    html_text = page_path.read_text(encoding="utf-8")
    assert "Training curves" in html_text and html_text.count("<svg") >= 2


# --- in a real browser ---------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no headless Chromium: `make install-browser` installs Debian's chromium package "
        "(needs apt-get and root); the browser test runs where it is installed"
    )


def browser(url: str, profile: Path, *args: str) -> str:
    """Chromium's stdout for `url` (with --dump-dom: the DOM after the page's scripts ran)."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_in_headless_chromium(tmp_path):
    filler = " ".join(f"word{i}" for i in range(3000))
    long_text = filler[:600] + " Angela Merkel " + filler[600:15000] + " Paris " + filler[15000:]
    documents = [(d, text, find_spans(text, wanted)) for d, text, wanted in HOSTILE]
    documents.append(
        (
            "long",
            long_text,
            find_spans(long_text, [("Angela Merkel", 0, "PER", 0.9), ("Paris", 0, "LOC", 0.6)]),
        )
    )
    out = write_output(tmp_path, documents)
    page_path = tmp_path / "view.html"
    summary = view(out, page_path)
    assert summary["problems"] == []
    expected = parquet_spans(out)
    url = page_path.resolve().as_uri()
    profile = tmp_path / "chromium-profile"

    # After the page's script ran: every highlight is exactly its span, all shown, nothing injected.
    dom = parse(browser(url, profile, "--dump-dom"))
    assert dom.title.startswith("nerbatch view") and "PWNED" not in dom.title
    assert "pwned" not in dom.ids
    assert len(dom.marks) == len(expected)
    for m in dom.marks:
        row = expected[m["doc"]["data-id"], int(m["data-start"]), int(m["data-end"])]
        assert m["text"] == row["text"], (m["text"], row["text"])
        assert "off" not in m["classes"]
    assert not any("hidden" in d["classes"] for d in dom.docs)

    # Filters from the URL (the page applies #label=...&min=... on load).
    dom = parse(browser(url + "#label=PER&min=0.9", profile, "--dump-dom"))
    for m in dom.marks:
        row = expected[m["doc"]["data-id"], int(m["data-start"]), int(m["data-end"])]
        visible = row["label"] == "PER" and round(row["score"], 3) >= 0.9
        assert ("off" not in m["classes"]) == visible, (row, m["classes"])
    hidden = {d["data-id"] for d in dom.docs if "hidden" in d["classes"]}
    with_per = {
        d
        for (d, _, _), r in expected.items()
        if r["label"] == "PER" and np.float32(r["score"]) >= np.float32(0.9)
    }
    assert hidden == {d["data-id"] for d in dom.docs} - with_per and with_per
    dom = parse(browser(url + "#q=zalgo", profile, "--dump-dom"))
    assert [d["data-id"] for d in dom.docs if "hidden" not in d["classes"]] == ["combining"]

    # The Content-Security-Policy stops a script that got into the page some other way.
    injected = tmp_path / "injected.html"
    injected.write_text(
        page_path.read_text(encoding="utf-8").replace(
            "</main>", "<script>document.title='INJECTED'</script></main>"
        ),
        encoding="utf-8",
    )
    dom = parse(browser(injected.resolve().as_uri(), profile, "--dump-dom"))
    assert "INJECTED" not in dom.title

    # A screenshot, kept as the test's artefact (look at it: coloured, readable entities).
    shot = tmp_path / "view.png"
    browser(
        url,
        profile,
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
    )
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
