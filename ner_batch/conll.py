"""CoNLL token-per-line files (and Hugging Face `datasets`) in and out.

Reads any column layout (token and tag columns are configurable), keeps `-DOCSTART-` document
boundaries, and normalises IOB1 / IOB2 / BIOES (and BILOU) tags to IOB2, the scheme every other
stage uses. The tag set comes from the data. `token_offsets` gives the text every stage builds from
gold tokens (joined by single spaces) and where each token sits in it. It does not tokenise raw
text: that is `features.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataFormatError, SchemeError

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"

# Prefix spellings of each scheme, mapped to the role they play in a chunk.
# begin: opens a chunk; inside: continues one; end: closes one; single: a one-token chunk.
PREFIX_ROLES = {"B": "begin", "I": "inside", "E": "end", "S": "single", "L": "end", "U": "single"}
SCHEMES = ("auto", "iob1", "iob2", "bioes")
SCHEME_PREFIXES = {"iob1": {"B", "I"}, "iob2": {"B", "I"}, "bioes": {"B", "I", "E", "S", "L", "U"}}


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    line: int = 0  # 1-based line of the first token in its file, for messages


@dataclass
class Document:
    doc_id: str
    sentences: list[Sentence] = field(default_factory=list)


def token_offsets(tokens: list[str]) -> tuple[str, np.ndarray, np.ndarray]:
    """The text of pre-split tokens joined by single spaces, and each token's [start, end)."""
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)  # (n_tokens,), also when there are none
    starts[1:] = np.cumsum(lengths + 1)[:-1]
    return " ".join(tokens), starts, starts + lengths


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> (`B`, `PER`); `O` -> (`O`, ``). The type may itself contain hyphens."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, label = tag.partition("-")
    if not sep or not label:
        raise SchemeError(
            f"tag {tag!r} is not 'O' or PREFIX-TYPE with PREFIX in {sorted(PREFIX_ROLES)}"
        )
    if prefix not in PREFIX_ROLES:
        raise SchemeError(
            f"tag {tag!r} has unknown prefix {prefix!r}; expected one of {sorted(PREFIX_ROLES)}"
        )
    return prefix, label


def model_label(label: str) -> tuple[str, str]:
    """(role, type) of a label of a model's `id2label`, in whatever scheme it was trained:
    `O` -> ("outside", ""); `B-PER`, `I-PER`, `E-PER`, `S-PER` (and BILOU's `L-`, `U-`) -> the
    prefix's role in PREFIX_ROLES; a label without a known prefix (`PER`, `LABEL_3`) is a type
    of its own that continues itself (the IO scheme)."""
    if label == OUTSIDE:
        return "outside", ""
    prefix, sep, kind = label.partition("-")
    if sep and kind and prefix in PREFIX_ROLES:
        return PREFIX_ROLES[prefix], kind
    return "inside", label


def label_scheme(labels: Sequence[str]) -> str:
    """The scheme a model's labels are in: "BIOES", "BILOU", "IOB2" (IOB1 decodes the same
    way), or "IO" for labels without prefixes."""
    prefixes = {label.partition("-")[0] for label in labels if model_label(label)[0] != "outside"}
    prefixes = {p for p in prefixes if p in PREFIX_ROLES}
    if prefixes & {"E", "S"}:
        return "BIOES"
    if prefixes & {"L", "U"}:
        return "BILOU"
    return "IOB2" if prefixes else "IO"


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity chunks (type, start, end-exclusive) of an IOB2 tag sequence, with lenient repair:
    an I- after O or after another type opens a new chunk (as conlleval does)."""
    found: list[tuple[str, int, int]] = []
    current: list | None = None
    for i, tag in enumerate(tags):
        prefix, label = split_tag(tag)
        if prefix == OUTSIDE:
            current = None
            continue
        if prefix == "B" or current is None or current[0] != label:
            current = [label, i, i + 1]
            found.append(current)  # type: ignore[arg-type]
        else:
            current[2] = i + 1
    return [tuple(c) for c in found]  # type: ignore[misc]


def to_iob2(tags: Sequence[str], scheme: str = "auto", strict: bool = False) -> list[str]:
    """Normalise one sentence's tags from `scheme` to IOB2.

    With `strict`, an invalid transition raises SchemeError naming the position: in IOB2 an I-
    without a B- of its type; in BIOES (or BILOU) also a chunk that does not close with E- (L-)
    before the next tag or the end of the sentence. IOB1 has no invalid transitions (an I- after
    O or after another type opens a chunk). Without `strict`, chunks are repaired the conlleval
    way.
    """
    if scheme not in SCHEMES:
        raise SchemeError(f"unknown tag scheme {scheme!r}; expected one of {list(SCHEMES)}")
    parsed = [split_tag(t) for t in tags]
    allowed = SCHEME_PREFIXES.get(scheme)
    if allowed is not None:
        for i, (prefix, _) in enumerate(parsed):
            if prefix != OUTSIDE and prefix not in allowed:
                raise SchemeError(
                    f"prefix {prefix!r} is not part of {scheme.upper()} "
                    f"(allowed: {sorted(allowed)} and 'O')",
                    token=i + 1,
                )
    check_opening = strict and scheme != "iob1"
    check_closing = strict and scheme == "bioes"
    # Name the closing/single prefixes the way the input spells them (BIOES or BILOU).
    bilou = any(prefix in ("L", "U") for prefix, _ in parsed)
    end, single = ("L", "U") if bilou else ("E", "S")
    out: list[str] = []
    prev_label = ""  # type of the open chunk, "" when none is open
    for i, (prefix, label) in enumerate(parsed):
        role = PREFIX_ROLES.get(prefix, OUTSIDE)
        continues = role in ("inside", "end") and prev_label == label
        if check_closing and prev_label and not continues:
            raise SchemeError(
                f"{tags[i]!r} follows an unclosed {prev_label} chunk; "
                f"expected I-{prev_label} or {end}-{prev_label}",
                token=i + 1,
            )
        if check_opening and role in ("inside", "end") and not continues:
            follows = f"a {prev_label} chunk" if prev_label else "O or the start"
            expected = f"B-{label} or {single}-{label}" if scheme == "bioes" else f"B-{label}"
            raise SchemeError(
                f"{tags[i]!r} continues a chunk but follows {follows}; expected {expected}",
                token=i + 1,
            )
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
            prev_label = ""
            continue
        out.append(f"I-{label}" if continues else f"B-{label}")
        prev_label = "" if role in ("end", "single") else label
    if check_closing and prev_label:
        raise SchemeError(
            f"{tags[-1]!r} ends the sentence inside a {prev_label} chunk; "
            f"expected {end}-{prev_label}",
            token=len(tags),
        )
    return out


def _split_columns(line: str) -> list[str]:
    # Tab-separated files may have spaces inside a column (but not around one: `tok \t B-PER`);
    # otherwise any run of spaces separates.
    if "\t" in line:
        return [column.strip(" ") for column in line.split("\t")]
    return re.split(r" +", line)


def _line_text(path: Path, number: int, line_bytes: bytes) -> str:
    try:
        line = line_bytes.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataFormatError(
            str(path), number, f"not valid UTF-8 (byte {e.start + 1}); expected UTF-8 text"
        ) from None
    # A byte-order mark (Windows editors) would glue itself to -DOCSTART- or a token.
    return line.removeprefix("\ufeff") if number == 1 else line


def _first_layout(
    path: Path, number: int, columns: list[str], token_column: int, tag_column: int
) -> tuple[int, int]:
    """(columns, line) of the first token line, once its token and tag columns are checked:
    every later token line must have as many columns."""
    n_columns = len(columns)
    for name, index in (("token", token_column), ("tag", tag_column)):
        if not -n_columns <= index < n_columns:
            raise DataFormatError(
                str(path),
                number,
                f"{name} column {index} does not exist: the line has {n_columns} columns",
            )
    if n_columns < 2:
        raise DataFormatError(
            str(path), number, "expected at least 2 columns (token and tag), found 1"
        )
    return n_columns, number


def read_conll(
    path: str | Path,
    token_column: int = 0,
    tag_column: int = -1,
    scheme: str = "auto",
) -> list[Document]:
    """Read a CoNLL file into documents of sentences with IOB2 tags.

    `scheme="auto"` accepts IOB1, IOB2, BIOES and BILOU and repairs I- without B-; naming a
    scheme makes the reader strict: a prefix outside it or an invalid transition is an error.
    Every error names the file, the line and what was expected.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFormatError(str(path), None, f"cannot read: {e.strerror or e}") from e
    documents: list[Document] = []
    document: Document | None = None
    sentence_lines: list[tuple[int, list[str]]] = []
    layout: tuple[int, int] | None = None  # (columns, line) of the first token line

    def flush() -> None:
        nonlocal document
        if not sentence_lines:
            return
        tokens = [cols[token_column] for _, cols in sentence_lines]
        raw_tags = [cols[tag_column] for _, cols in sentence_lines]
        try:
            tags = to_iob2(raw_tags, scheme=scheme, strict=scheme != "auto")
        except SchemeError as e:
            # Point at the exact line of the bad token (the first line when none is named).
            line = sentence_lines[e.token - 1][0] if e.token else sentence_lines[0][0]
            raise DataFormatError(str(path), line, e.detail) from None
        if document is None:
            document = Document(doc_id=f"{path.name}#doc{len(documents)}")
            documents.append(document)
        document.sentences.append(Sentence(tokens, tags, sentence_lines[0][0]))
        sentence_lines.clear()

    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        line = _line_text(path, number, line_bytes)
        if not line.strip():
            flush()
            continue
        columns = _split_columns(line.strip())
        if columns[0] == DOCSTART:
            flush()
            document = Document(doc_id=f"{path.name}#doc{len(documents)}")
            documents.append(document)
            continue
        layout = layout or _first_layout(path, number, columns, token_column, tag_column)
        if len(columns) != layout[0]:
            raise DataFormatError(
                str(path),
                number,
                f"expected {layout[0]} columns like line {layout[1]}, found {len(columns)}",
            )
        try:
            split_tag(columns[tag_column])
        except SchemeError as e:
            raise DataFormatError(str(path), number, str(e)) from None
        sentence_lines.append((number, columns))
    flush()
    # Drop empty documents (a -DOCSTART- followed by nothing) but keep the numbering stable.
    documents = [d for d in documents if d.sentences]
    if not documents:
        raise DataFormatError(str(path), None, "no tokens found; expected CoNLL token lines")
    return documents


def sentences_of(documents: Iterable[Document]) -> list[Sentence]:
    return [s for d in documents for s in d.sentences]


def labels_of(documents: Iterable[Document]) -> list[str]:
    """The IOB2 label list of a corpus: O first, then B-/I- of each type, types sorted."""
    types = sorted({split_tag(t)[1] for d in documents for s in d.sentences for t in s.tags} - {""})
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def write_conll(
    path: str | Path,
    documents: Sequence[Document],
    predictions: Sequence[Sequence[str]] | None = None,
) -> None:
    """Write documents back as `TOKEN TAG` lines (or `TOKEN GOLD PRED` when `predictions`, one
    tag list per sentence in corpus order, is given), with -DOCSTART- lines between documents.
    A line whose token contains a space is tab-separated, so that `read_conll` reads it back."""
    sentences = sentences_of(documents)
    if predictions is not None:
        if len(predictions) != len(sentences):
            raise ValueError(
                f"predictions has {len(predictions)} tag lists; expected one per sentence "
                f"({len(sentences)})"
            )
        for n, (sentence, predicted) in enumerate(zip(sentences, predictions, strict=True)):
            if len(predicted) != len(sentence.tokens):
                raise ValueError(
                    f"predictions for sentence {n} have {len(predicted)} tags; expected one per "
                    f"token ({len(sentence.tokens)})"
                )
    pred_iter = iter(predictions) if predictions is not None else None
    with open(path, "w", encoding="utf-8") as f:
        for document in documents:
            f.write(f"{DOCSTART} O{' O' if pred_iter else ''}\n\n")
            for sentence in document.sentences:
                predicted = next(pred_iter) if pred_iter else None
                for i, (token, tag) in enumerate(zip(sentence.tokens, sentence.tags, strict=True)):
                    columns = [token, tag] + ([predicted[i]] if predicted is not None else [])
                    f.write(("\t" if " " in token else " ").join(columns) + "\n")
                f.write("\n")


def from_hf_dataset(dataset, token_column: str = "tokens", tag_column: str = "ner_tags"):
    """Documents from a `datasets.Dataset` with a token list column and a ClassLabel tag column
    (the usual Hub NER layout); the tag names are read from the dataset's features."""
    missing = [c for c in (token_column, tag_column) if c not in dataset.column_names]
    if missing:
        raise DataFormatError(
            "dataset",
            None,
            f"missing column(s) {missing}; it has {dataset.column_names}",
        )
    feature = dataset.features[tag_column]
    names = getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        raise DataFormatError(
            "dataset",
            None,
            f"column {tag_column!r} is not a sequence of ClassLabel; cannot name its tags",
        )
    document = Document(doc_id="dataset#doc0")
    for i, row in enumerate(dataset):
        tags = [names[t] for t in row[tag_column]]
        if len(tags) != len(row[token_column]):
            raise DataFormatError(
                "dataset",
                i,
                f"row has {len(row[token_column])} tokens but {len(tags)} tags; expected one tag "
                "per token",
            )
        try:
            iob2 = to_iob2(tags)
        except SchemeError as e:
            raise DataFormatError("dataset", i, str(e)) from None
        if row[token_column]:
            document.sentences.append(Sentence(list(row[token_column]), iob2, i))
    if not document.sentences:
        raise DataFormatError("dataset", None, "no tokens found")
    return [document]


def load_hf_dataset(
    name: str, split: str, token_column: str = "tokens", tag_column: str = "ner_tags"
) -> list[Document]:
    """Load a split of a Hub (or local `save_to_disk`) dataset; needs the `[train]` extra."""
    try:
        import datasets
    except ImportError as e:
        from .errors import MissingExtraError

        raise MissingExtraError("datasets", "train") from e
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        dataset = datasets.load_dataset(name, split=split)
    return from_hf_dataset(dataset, token_column, tag_column)
