"""CoNLL reading, tag-scheme normalisation, writing, and Hugging Face datasets: every layout we
accept, every scheme normalised to the same IOB2, and one precise error for each malformed input."""

from __future__ import annotations

import pytest

from ner_batch.conll import (
    Document,
    Sentence,
    chunks,
    from_hf_dataset,
    labels_of,
    read_conll,
    sentences_of,
    split_tag,
    to_iob2,
    write_conll,
)
from ner_batch.errors import DataFormatError, SchemeError

# One sentence in each scheme, a column per scheme. "Paris London" are two adjacent LOC
# entities: the only place where IOB1 needs a B-.
TABLE = """
token    iob2   iob1   bioes  bilou
John     B-PER  I-PER  B-PER  B-PER
Smith    I-PER  I-PER  E-PER  L-PER
visited  O      O      O      O
New      B-LOC  I-LOC  B-LOC  B-LOC
York     I-LOC  I-LOC  I-LOC  I-LOC
City     I-LOC  I-LOC  E-LOC  L-LOC
with     O      O      O      O
Mary     B-PER  I-PER  S-PER  U-PER
and      O      O      O      O
Paris    B-LOC  I-LOC  S-LOC  U-LOC
London   B-LOC  B-LOC  S-LOC  U-LOC
"""
_header, *_rows = (line.split() for line in TABLE.strip().splitlines())
WORDS = [row[0] for row in _rows]
SCHEMES = {name: [row[i] for row in _rows] for i, name in enumerate(_header) if i}
IOB2 = SCHEMES["iob2"]
# The reader's name for each scheme (BILOU is read as BIOES).
READER_SCHEME = {"iob2": "iob2", "iob1": "iob1", "bioes": "bioes", "bilou": "bioes"}


def write(tmp_path, text: str | bytes, name: str = "data.conll"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def conll_lines(words, tags, extra_columns=("NNP",), sep=" ") -> str:
    rows = zip(words, tags, strict=True)
    return "".join(sep.join([w, *extra_columns, t]) + "\n" for w, t in rows)


def raises_at(path, line: int | None, *fragments: str, **kwargs) -> DataFormatError:
    """read_conll(path) raises one DataFormatError at `line` whose message names the file, the
    line and each fragment (what was expected)."""
    with pytest.raises(DataFormatError) as info:
        read_conll(path, **kwargs)
    error = info.value
    assert error.path == str(path)
    assert error.line == line
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(error).startswith(where), str(error)
    for fragment in fragments:
        assert fragment in str(error), (fragment, str(error))
    # One error, not a traceback of chained ones.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


# --- split_tag, chunks, to_iob2 ---


def test_split_tag():
    assert split_tag("O") == ("O", "")
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-date-time") == ("I", "date-time")  # the type may contain hyphens
    for bad in ("PER", "B-", "X-PER", "b-PER", ""):
        with pytest.raises(SchemeError):
            split_tag(bad)


def test_split_tag_message_names_tag_and_allowed_prefixes():
    with pytest.raises(SchemeError, match=r"'X-PER' has unknown prefix 'X'; expected one of"):
        split_tag("X-PER")


def test_chunks_iob2_with_conlleval_repair():
    assert chunks(IOB2) == [
        ("PER", 0, 2),
        ("LOC", 3, 6),
        ("PER", 7, 8),
        ("LOC", 9, 10),
        ("LOC", 10, 11),
    ]
    # I- after O, and I- after another type, each open a chunk.
    assert chunks(["I-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("ORG", 4, 5),
    ]
    assert chunks([]) == []
    assert chunks(["O", "O"]) == []


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_normalises_to_the_same_iob2(scheme):
    tags = SCHEMES[scheme]
    assert to_iob2(tags) == IOB2  # auto
    assert to_iob2(tags, scheme=READER_SCHEME[scheme], strict=True) == IOB2
    assert chunks(to_iob2(tags)) == chunks(IOB2)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_reads_to_the_same_iob2(tmp_path, scheme):
    text = "-DOCSTART- -X- O\n\n" + conll_lines(WORDS, SCHEMES[scheme])
    path = write(tmp_path, text)
    for reader_scheme in ("auto", READER_SCHEME[scheme]):
        (document,) = read_conll(path, scheme=reader_scheme)
        (sentence,) = document.sentences
        assert sentence.tokens == WORDS
        assert sentence.tags == IOB2


def test_auto_repairs_iob2_transitions():
    assert to_iob2(["O", "I-PER", "I-LOC", "E-LOC", "I-LOC"]) == [
        "O",
        "B-PER",
        "B-LOC",
        "I-LOC",
        "B-LOC",
    ]


def test_unknown_scheme():
    with pytest.raises(SchemeError, match=r"unknown tag scheme 'bio'; expected one of"):
        to_iob2(["O"], scheme="bio")


@pytest.mark.parametrize(
    ("tags", "scheme", "message"),
    [
        (["O", "I-PER"], "iob2", r"token 2: 'I-PER' .* follows O or the start; expected B-PER"),
        (["B-LOC", "I-PER"], "iob2", r"token 2: 'I-PER' .* follows a LOC chunk; expected B-PER"),
        (["B-PER", "E-PER"], "iob2", r"token 2: prefix 'E' is not part of IOB2"),
        (["S-PER"], "iob1", r"token 1: prefix 'S' is not part of IOB1"),
        (["I-PER"], "bioes", r"token 1: 'I-PER' .*; expected B-PER or S-PER"),
        (["O", "E-PER"], "bioes", r"token 2: 'E-PER' .*; expected B-PER or S-PER"),
        (["B-PER", "O"], "bioes", r"token 2: 'O' follows an unclosed PER chunk; expected I-PER"),
        (["B-PER", "S-PER"], "bioes", r"token 2: 'S-PER' follows an unclosed PER chunk"),
        (["B-PER", "B-PER", "E-PER"], "bioes", r"token 2: 'B-PER' follows an unclosed PER"),
        (["B-PER", "E-LOC"], "bioes", r"token 2: 'E-LOC' follows an unclosed PER chunk"),
        (["O", "B-PER", "I-PER"], "bioes", r"token 3: .* inside a PER chunk; expected E-PER"),
        (["B-PER", "I-PER"], "bioes", r"token 2: .*; expected E-PER"),
        (["U-LOC", "B-PER"], "bioes", r"token 2: .*; expected L-PER"),  # spelt as BILOU
    ],
)
def test_strict_invalid_transitions(tags, scheme, message):
    with pytest.raises(SchemeError, match=message):
        to_iob2(tags, scheme=scheme, strict=True)


def test_scheme_error_carries_the_token_position():
    with pytest.raises(SchemeError) as info:
        to_iob2(["O", "B-PER", "I-PER"], scheme="bioes", strict=True)
    assert info.value.token == 3
    assert info.value.detail == "'I-PER' ends the sentence inside a PER chunk; expected E-PER"
    assert str(info.value) == f"token 3: {info.value.detail}"
    with pytest.raises(SchemeError) as info:
        to_iob2(["O"], scheme="bio")
    assert info.value.token is None and str(info.value) == info.value.detail


def test_strict_error_points_at_the_line_of_the_token(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("-DOCSTART- O\n\nJohn B-PER\nSmith E-PER\n\nMary S-PER\nsaid O\nhi E-PER\n")
    with pytest.raises(DataFormatError) as info:
        read_conll(path, scheme="bioes")
    assert info.value.line == 8
    assert str(info.value) == (
        f"{path}:8: 'E-PER' continues a chunk but follows O or the start; expected B-PER or S-PER"
    )


def test_strict_iob1_accepts_i_without_b():
    # In IOB1 an I- after O opens a chunk: that is the point of the scheme, not an error.
    assert to_iob2(["I-PER", "O", "I-LOC", "I-ORG"], scheme="iob1", strict=True) == [
        "B-PER",
        "O",
        "B-LOC",
        "B-ORG",
    ]


# --- read_conll: layouts ---


def test_reads_any_number_of_columns_with_configurable_columns(tmp_path):
    text = "1 John NNP B-PER x\n2 Smith NNP I-PER x\n\n1 Paris NNP B-LOC x\n"
    path = write(tmp_path, text)
    (document,) = read_conll(path, token_column=1, tag_column=3)
    assert [s.tokens for s in document.sentences] == [["John", "Smith"], ["Paris"]]
    assert [s.tags for s in document.sentences] == [["B-PER", "I-PER"], ["B-LOC"]]
    # Negative indexes count from the end.
    (document,) = read_conll(path, token_column=-4, tag_column=-2)
    assert document.sentences[0].tokens == ["John", "Smith"]
    assert document.sentences[0].tags == ["B-PER", "I-PER"]


def test_two_columns(tmp_path):
    path = write(tmp_path, "John B-PER\nsaid O\n")
    (document,) = read_conll(path)
    assert document.sentences == [Sentence(["John", "said"], ["B-PER", "O"], 1)]


def test_tabs_spaces_and_line_endings(tmp_path):
    spaces = write(tmp_path, "John   NNP  B-PER\nSmith NNP I-PER\n", "spaces.conll")
    tabs = write(tmp_path, "John\tNNP\tB-PER\nSmith\tNNP\tI-PER\n", "tabs.conll")
    crlf = write(tmp_path, b"John NNP B-PER\r\nSmith NNP I-PER\r\n\r\n", "crlf.conll")
    # Tab-separated: a column may contain spaces; spaces around a column are not part of it.
    spaced_token = write(tmp_path, "New York\tNNP \t B-LOC\nCity\tNNP\tI-LOC\n", "tok.conll")
    for path in (spaces, tabs, crlf):
        (document,) = read_conll(path)
        assert document.sentences[0].tokens == ["John", "Smith"]
        assert document.sentences[0].tags == ["B-PER", "I-PER"]
    (document,) = read_conll(spaced_token)
    assert document.sentences[0].tokens == ["New York", "City"]
    assert document.sentences[0].tags == ["B-LOC", "I-LOC"]


def test_blank_lines_separate_sentences_and_record_their_first_line(tmp_path):
    text = "\n\nJohn B-PER\nsaid O\n\n\n  \n\t\nMary B-PER\n\n"
    (document,) = read_conll(write(tmp_path, text))
    assert document.sentences == [
        Sentence(["John", "said"], ["B-PER", "O"], 3),
        Sentence(["Mary"], ["B-PER"], 9),
    ]


def test_no_trailing_newline(tmp_path):
    (document,) = read_conll(write(tmp_path, "John B-PER\n\nMary B-PER"))
    assert [s.tokens for s in document.sentences] == [["John"], ["Mary"]]


def test_docstart_boundaries_are_kept(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "John NNP B-NP B-PER\n\n"
        "Mary NNP B-NP B-PER\n\n"
        "-DOCSTART- -X- -X- O\n\n"
        "-DOCSTART- -X- -X- O\n"  # an empty document: dropped, ids stay stable
        "Paris NNP B-NP B-LOC\n"
        "-DOCSTART- -X- -X- O\n"  # no blank line before it: still ends the sentence
        "Berlin NNP B-NP B-LOC\n"
    )
    documents = read_conll(write(tmp_path, text, "gold.txt"))
    assert [d.doc_id for d in documents] == ["gold.txt#doc0", "gold.txt#doc2", "gold.txt#doc3"]
    assert [[s.tokens for s in d.sentences] for d in documents] == [
        [["John"], ["Mary"]],
        [["Paris"]],
        [["Berlin"]],
    ]
    assert [s.line for s in sentences_of(documents)] == [3, 5, 10, 12]


def test_sentences_before_the_first_docstart_form_a_document(tmp_path):
    text = "John B-PER\n\n-DOCSTART- O\n\nMary B-PER\n"
    documents = read_conll(write(tmp_path, text, "x.txt"))
    assert [d.doc_id for d in documents] == ["x.txt#doc0", "x.txt#doc1"]
    assert [d.sentences[0].tokens for d in documents] == [["John"], ["Mary"]]


def test_byte_order_mark_is_ignored(tmp_path):
    documents = read_conll(write(tmp_path, "\ufeff-DOCSTART- -X- O\n\nJohn NNP B-PER\n"))
    assert sentences_of(documents) == [Sentence(["John"], ["B-PER"], 3)]


def test_gmb_tag_set(tmp_path):
    # GMB (Kaggle "ner_dataset") layout: lower-case types, no -DOCSTART-, tab-separated.
    rows = [
        ("Thousands", "NNS", "O"),
        ("of", "IN", "O"),
        ("demonstrators", "NNS", "O"),
        ("marched", "VBN", "O"),
        ("through", "IN", "O"),
        ("London", "NNP", "B-geo"),
        ("on", "IN", "O"),
        ("Tuesday", "NNP", "B-tim"),
        ("against", "IN", "O"),
        ("the", "DT", "O"),
        ("Iraq", "NNP", "B-geo"),
        ("war", "NN", "O"),
        (",", ",", "O"),
        ("British", "JJ", "B-gpe"),
        ("Labour", "NNP", "B-org"),
        ("Party", "NNP", "I-org"),
        ("leader", "NN", "O"),
        ("Tony", "NNP", "B-per"),
        ("Blair", "NNP", "I-per"),
        ("read", "VBD", "O"),
        ("Hamlet", "NNP", "B-art"),
        ("after", "IN", "O"),
        ("the", "DT", "O"),
        ("Olympics", "NNP", "B-eve"),
        ("and", "CC", "O"),
        ("the", "DT", "O"),
        ("tsunami", "NN", "B-nat"),
    ]
    text = "".join("\t".join(row) + "\n" for row in rows)
    documents = read_conll(write(tmp_path, text))
    assert sentences_of(documents)[0].tags == [tag for _, _, tag in rows]
    assert labels_of(documents) == [
        "O",
        *[
            f"{p}-{t}"
            for t in ("art", "eve", "geo", "gpe", "nat", "org", "per", "tim")
            for p in "BI"
        ],
    ]


def test_labels_of_conll_and_hyphenated_types():
    documents = [
        Document(
            "d",
            [
                Sentence(["a", "b"], ["B-PER", "B-LOC"]),
                Sentence(["c", "d"], ["B-date-time", "I-date-time"]),
                Sentence(["e"], ["O"]),
            ],
        )
    ]
    assert labels_of(documents) == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-PER",
        "I-PER",
        "B-date-time",
        "I-date-time",
    ]
    assert labels_of([Document("d", [Sentence(["a"], ["O"])])]) == ["O"]


# --- read_conll: errors, each naming the file, the exact line and what was expected ---


def test_error_different_column_count(tmp_path):
    text = "-DOCSTART- -X- O\n\nJohn NNP B-PER\nSmith NNP I-PER\n\nsaid O\n"
    raises_at(write(tmp_path, text), 6, "expected 3 columns like line 3, found 2")


def test_error_unknown_prefix(tmp_path):
    text = "John B-PER\n\nMary X-PER\n"
    raises_at(write(tmp_path, text), 3, "'X-PER'", "unknown prefix 'X'", "expected one of")


def test_error_tag_without_prefix(tmp_path):
    raises_at(write(tmp_path, "John O\nSmith PER\n"), 2, "'PER'", "PREFIX-TYPE")


def test_error_strict_iob2_i_after_o(tmp_path):
    text = "-DOCSTART- O\n\nJohn B-PER\n\nThe O\nSmith I-PER\nsaid O\n"
    path = write(tmp_path, text)
    raises_at(path, 6, "'I-PER'", "follows O or the start; expected B-PER", scheme="iob2")
    # The same file in auto mode is repaired.
    assert sentences_of(read_conll(path))[1].tags == ["O", "B-PER", "O"]


def test_error_strict_iob2_rejects_bioes_prefix(tmp_path):
    path = write(tmp_path, "John B-PER\nSmith E-PER\n")
    raises_at(
        path, 2, "prefix 'E' is not part of IOB2", "allowed: ['B', 'I'] and 'O'", scheme="iob2"
    )


@pytest.mark.parametrize(
    ("tags", "line", "fragment"),
    [
        # Lines 1-2 hold a valid sentence, line 3 is blank; the tested sentence starts on line 4.
        (["O", "I-PER", "E-PER"], 5, "expected B-PER or S-PER"),
        (["B-PER", "O", "O"], 5, "follows an unclosed PER chunk; expected I-PER or E-PER"),
        (["B-PER", "I-PER", "S-LOC"], 6, "follows an unclosed PER chunk"),
        (["O", "O", "B-LOC"], 6, "inside a LOC chunk; expected E-LOC"),
    ],
)
def test_error_strict_bioes_transitions(tmp_path, tags, line, fragment):
    text = "Mary S-PER\nsaid O\n\n" + conll_lines(["a", "b", "c"], tags, extra_columns=())
    raises_at(write(tmp_path, text), line, fragment, scheme="bioes")


def test_error_not_utf8(tmp_path):
    text = "John B-PER\nsaid O\n\nM\xfcller B-PER\n".encode("latin-1")
    raises_at(write(tmp_path, text), 4, "not valid UTF-8 (byte 2)", "expected UTF-8")


@pytest.mark.parametrize("text", ["", "\n\n  \n", "-DOCSTART- -X- O\n\n-DOCSTART- -X- O\n"])
def test_error_no_tokens(tmp_path, text):
    # Nothing to point at: the error names the file and what was expected, without a line.
    raises_at(write(tmp_path, text), None, "no tokens found; expected CoNLL token lines")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tag_column": 3}, "tag column 3 does not exist: the line has 3 columns"),
        ({"tag_column": -4}, "tag column -4 does not exist"),
        ({"token_column": 5}, "token column 5 does not exist"),
    ],
)
def test_error_column_index_out_of_range(tmp_path, kwargs, fragment):
    path = write(tmp_path, "-DOCSTART- -X- O\n\nJohn NNP B-PER\n")
    raises_at(path, 3, fragment, **kwargs)


def test_error_single_column(tmp_path):
    path = write(tmp_path, "\nJohn\nSmith\n")
    raises_at(path, 2, "expected at least 2 columns (token and tag), found 1")


def test_error_missing_file(tmp_path):
    path = tmp_path / "nope.conll"
    with pytest.raises(DataFormatError, match="cannot read") as info:
        read_conll(path)
    assert info.value.path == str(path)
    assert info.value.line is None


# --- write_conll ---


def test_write_conll_round_trip(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "John NNP B-NP B-PER\nSmith NNP I-NP I-PER\nsaid VBD B-VP O\n\n"
        "Zürich NNP B-NP B-LOC\n\n"
        "-DOCSTART- -X- -X- O\n\n"
        "Acme NNP B-NP I-ORG\nCorp NNP I-NP I-ORG\n"
    )
    original = read_conll(write(tmp_path, text, "in.conll"))
    out = tmp_path / "out.conll"
    write_conll(out, original)
    again = read_conll(out)
    assert len(again) == len(original) == 2
    for a, b in zip(original, again, strict=True):
        assert [(s.tokens, s.tags) for s in a.sentences] == [
            (s.tokens, s.tags) for s in b.sentences
        ]
    assert sentences_of(again)[2].tags == ["B-ORG", "I-ORG"]  # written as IOB2


def test_write_conll_token_with_space_round_trips(tmp_path):
    documents = [Document("d", [Sentence(["New York", "is", "big"], ["B-LOC", "O", "O"])])]
    write_conll(tmp_path / "out.conll", documents)
    (document,) = read_conll(tmp_path / "out.conll")
    assert document.sentences[0].tokens == ["New York", "is", "big"]


def test_write_conll_with_predictions(tmp_path):
    documents = [
        Document("a", [Sentence(["John", "said"], ["B-PER", "O"]), Sentence(["Hi"], ["O"])]),
        Document("b", [Sentence(["Paris"], ["B-LOC"])]),
    ]
    predictions = [["B-PER", "B-LOC"], ["O"], ["B-ORG"]]
    out = tmp_path / "pred.conll"
    write_conll(out, documents, predictions)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == [
        "-DOCSTART- O O",
        "",
        "John B-PER B-PER",
        "said O B-LOC",
        "",
        "Hi O O",
        "",
        "-DOCSTART- O O",
        "",
        "Paris B-LOC B-ORG",
        "",
    ]
    gold = read_conll(out, tag_column=1)
    predicted = read_conll(out, tag_column=2)
    assert [s.tags for s in sentences_of(gold)] == [s.tags for s in sentences_of(documents)]
    assert [s.tags for s in sentences_of(predicted)] == predictions


def test_write_conll_rejects_predictions_that_do_not_fit(tmp_path):
    documents = [Document("a", [Sentence(["John", "said"], ["B-PER", "O"])])]
    with pytest.raises(ValueError, match="predictions has 2 tag lists; expected one per sentence"):
        write_conll(tmp_path / "x", documents, [["O", "O"], ["O"]])
    with pytest.raises(ValueError, match="sentence 0 have 1 tags; expected one per token"):
        write_conll(tmp_path / "x", documents, [["O"]])


# --- Hugging Face datasets ---

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def hf_dataset(tokens, tags, names=NAMES):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(len(tokens))], "tokens": tokens, "ner_tags": tags},
        features=features,
    )


def test_from_hf_dataset():
    dataset = hf_dataset(
        [["John", "Smith", "visited", "New", "York"], [], ["Paris"]],
        [[1, 2, 0, 3, 5], [], [6]],  # BIOES in the dataset is normalised too
    )
    (document,) = from_hf_dataset(dataset)
    assert document.doc_id == "dataset#doc0"
    assert document.sentences == [  # the empty row is skipped; `line` is the row index
        Sentence(
            ["John", "Smith", "visited", "New", "York"],
            ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
            0,
        ),
        Sentence(["Paris"], ["B-LOC"], 2),
    ]
    assert labels_of([document]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_from_hf_dataset_other_column_names():
    dataset = hf_dataset([["Mary"]], [[1]]).rename_columns({"tokens": "words", "ner_tags": "tags"})
    (document,) = from_hf_dataset(dataset, token_column="words", tag_column="tags")
    assert document.sentences[0].tags == ["B-PER"]


def test_from_hf_dataset_missing_column():
    dataset = hf_dataset([["Mary"]], [[1]]).remove_columns("ner_tags")
    with pytest.raises(
        DataFormatError, match=r"missing column\(s\) \['ner_tags'\]; it has \['id', 'tokens'\]"
    ):
        from_hf_dataset(dataset)


def test_from_hf_dataset_tags_without_names():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"tokens": [["Mary"]], "ner_tags": [[1]]})
    with pytest.raises(DataFormatError, match="is not a sequence of ClassLabel"):
        from_hf_dataset(dataset)


def test_from_hf_dataset_length_mismatch():
    dataset = hf_dataset([["Mary"], ["John", "Smith"]], [[1], [1]])
    with pytest.raises(DataFormatError, match=r"^dataset:1: row has 2 tokens but 1 tags"):
        from_hf_dataset(dataset)


def test_from_hf_dataset_empty():
    with pytest.raises(DataFormatError, match="no tokens found"):
        from_hf_dataset(hf_dataset([[]], [[]]))
