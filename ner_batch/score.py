"""`nerbatch score`: seqeval precision / recall / F1 against CoNLL gold.

Two sources of predictions: a model (a training checkpoint or an ONNX bundle) run over the gold
sentences, or an annotate output (Parquet spans) made from a corpus that `nerbatch gold2corpus`
built from the gold file, whose spans are mapped back onto the gold tokens. Both go through the
same span -> token-tag mapping, so the two numbers differ only by what the model saw.
It does not train or export: a checkpoint is read through `checkpoint.py`, a bundle (a local
directory or an object-store URI) through `bundle.py`. Reports go through `storage.write_file`:
whole or not at all, to local paths or URIs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .conll import Document, read_conll, sentences_of, token_offsets
from .errors import MissingExtraError, NerbatchError, OptionError
from .storage import is_uri, local_path, write_file
from .tagger import Tagger, TaggerOptions, default_stride, token_tags

MODES = ("default", "strict")

# How a model is batched when it is scored (score, and export's validation of its variants):
# windows per batch, and padded positions per batch at most (annotate's default is 4096).
SCORING_BATCH_SIZE = 64
SCORING_MAX_BATCH_TOKENS = 8192


def scoring_options(
    batch_size: int = SCORING_BATCH_SIZE, decode: str = TaggerOptions.decode
) -> TaggerOptions:
    """The TaggerOptions a model is scored with."""
    return TaggerOptions(
        batch_size=batch_size, max_batch_tokens=SCORING_MAX_BATCH_TOKENS, decode=decode
    )


def predict_gold(tagger: Tagger, documents: Sequence[Document], chunk: int = 512):
    """Predicted IOB2 tags for every gold sentence, the model seeing one sentence at a time."""
    sentences = sentences_of(documents)
    predictions: list[list[str]] = []
    for begin in range(0, len(sentences), chunk):
        part = sentences[begin : begin + chunk]
        joined = [token_offsets(s.tokens) for s in part]
        spans = tagger.tag([text for text, _, _ in joined])
        for (_, starts, ends), found in zip(joined, spans, strict=True):
            predictions.append(token_tags(starts, ends, found))
    return predictions


def _rate(value) -> float:
    # seqeval's macro average over no entity types is NaN (the mean of nothing), which JSON
    # cannot hold; zero_division=0 already reports every other undefined rate as 0.
    value = float(value)
    return 0.0 if math.isnan(value) else value


def seqeval_report(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """P/R/F1 per type plus micro, macro and weighted averages, in seqeval's default
    (conlleval-compatible) mode and its strict IOB2 mode; token accuracy alongside."""
    try:
        from seqeval.metrics import classification_report
        from seqeval.scheme import IOB2
    except ImportError as e:
        raise MissingExtraError("seqeval", "score") from e
    report: dict = {}
    for mode in MODES:
        kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
        raw = classification_report(gold, predicted, output_dict=True, zero_division=0, **kwargs)
        table = {
            name: {
                "precision": _rate(v["precision"]),
                "recall": _rate(v["recall"]),
                "f1": _rate(v["f1-score"]),
                "support": int(v["support"]),
            }
            for name, v in raw.items()
        }
        report[mode] = {
            "micro": table.pop("micro avg"),
            "macro": table.pop("macro avg"),
            "weighted": table.pop("weighted avg"),
            "per_type": dict(sorted(table.items())),
        }
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in predicted for t in s]
    report["token_accuracy"] = (
        sum(g == p for g, p in zip(flat_gold, flat_pred, strict=True)) / len(flat_gold)
        if flat_gold
        else 0.0
    )
    report["n_sentences"] = len(gold)
    report["n_tokens"] = len(flat_gold)
    return report


def evaluate_tagger(tagger: Tagger, documents: Sequence[Document]) -> dict:
    gold = [s.tags for s in sentences_of(documents)]
    report = seqeval_report(gold, predict_gold(tagger, documents))
    return report


def markdown_report(report: dict, title: str = "nerbatch score") -> str:
    lines = [f"# {title}", ""]
    if "source" in report:
        lines += [f"- predictions: `{report['source']}`", f"- gold: `{report['gold']}`"]
    lines += [
        f"- sentences: {report['n_sentences']}, tokens: {report['n_tokens']}, "
        f"token accuracy: {100 * report['token_accuracy']:.2f}%",
        "",
    ]
    for mode in MODES:
        heading = "seqeval default (conlleval-compatible)" if mode == "default" else "strict IOB2"
        lines += [
            f"## {heading}",
            "",
            "| type | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        table = report[mode]
        rows = list(table["per_type"].items()) + [
            ("**micro avg**", table["micro"]),
            ("**macro avg**", table["macro"]),
            ("**weighted avg**", table["weighted"]),
        ]
        for name, v in rows:
            lines.append(
                f"| {name} | {100 * v['precision']:.2f} | {100 * v['recall']:.2f} | "
                f"{100 * v['f1']:.2f} | {v['support']} |"
            )
        lines.append("")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The terminal table: per type and averages, both modes side by side (F1 in %)."""
    header = f"{'type':<14}{'P':>8}{'R':>8}{'F1':>8}{'strict F1':>11}{'support':>9}"
    lines = [header, "-" * len(header)]
    default, strict = report["default"], report["strict"]
    # (name, default-mode row, strict-mode row); a type that strict mode never sees scores 0.
    rows = [
        (name, v, strict["per_type"].get(name, {"f1": 0.0}))
        for name, v in default["per_type"].items()
    ]
    rows += [(f"{key} avg", default[key], strict[key]) for key in ("micro", "macro", "weighted")]
    for name, v, s in rows:
        lines.append(
            f"{name:<14}{100 * v['precision']:>8.2f}{100 * v['recall']:>8.2f}"
            f"{100 * v['f1']:>8.2f}{100 * s['f1']:>11.2f}{v['support']:>9}"
        )
    lines.append(
        f"token accuracy: {100 * report['token_accuracy']:.2f}%  "
        f"({report['n_sentences']} sentences, {report['n_tokens']} tokens)"
    )
    return "\n".join(lines)


def score(
    gold: str | Path,
    model: str | Path | None = None,
    predictions: str | Path | None = None,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    png_prefix: str | Path | None = None,
    variant: str = "auto",
    runtime: str = "auto",
    batch_size: int = SCORING_BATCH_SIZE,
    label_map: dict[str, str] | None = None,
    html_path: str | Path | None = None,
    decode: str = TaggerOptions.decode,
) -> dict:
    """Score a checkpoint or bundle (`model`) or an annotate output (`predictions`) against
    `gold`; write JSON / Markdown / PNG reports where asked and return the report.

    Predicted types are matched to the gold types by name; `label_map` maps others (a model
    trained on OntoNotes: {"PERSON": "PER", "GPE": "LOC"}). Predicted entities of a type that
    is neither in the gold data nor mapped are left out of the scores and counted in the
    report's `unmapped_types`.

    `png_prefix` P writes `P.per_type.png` and `P.confusion.png`; by default they go beside the
    Markdown report (same name without `.md`). Each report may be a local path or an object-store
    URI, and so may `model` when it is a bundle. `html_path` writes one self-contained HTML page:
    the tables, the confusion heat map, the error examples with gold and predicted entities side
    by side, and the training curves when `model` is a checkpoint with a metrics.json. `decode`
    (argmax or viterbi) is how the model's words get their labels, as annotate's `--decode`.
    """
    from .report import markdown_details, plot_confusion, plot_per_type, top_errors, type_confusion

    if (model is None) == (predictions is None):
        raise NerbatchError("give exactly one of a model (--model) or predictions (--predictions)")
    documents = read_conll(gold)
    sentences = sentences_of(documents)
    gold_tags = [s.tags for s in sentences]
    if model is not None:
        tagger, source = load_tagger(model, variant, batch_size, runtime, decode)
        predicted = predict_gold(tagger, documents)
    else:
        predicted = tags_from_predictions(predictions, documents)
        source = str(predictions)
    predicted, unmapped = map_types(predicted, gold_tags, label_map or {})
    report = seqeval_report(gold_tags, predicted)
    report["unmapped_types"] = unmapped
    report["source"] = source
    if model is not None:
        report["decode"] = decode
    report["gold"] = str(gold)
    report["confusion"] = type_confusion(gold_tags, predicted)
    report["errors"] = top_errors([s.tokens for s in sentences], gold_tags, predicted)
    if png_prefix is None and markdown_path is not None:
        png_prefix = _without_suffix(str(markdown_path))
    if png_prefix is not None:
        title = f"{Path(str(source).split(' (')[0].split()[-1]).name} on {Path(gold).name}"
        report["charts"] = {
            "per_type": f"{png_prefix}.per_type.png",
            "confusion": f"{png_prefix}.confusion.png",
        }
        plot_per_type(report, report["charts"]["per_type"], f"P / R / F1 per type: {title}")
        plot_confusion(
            report["confusion"], report["charts"]["confusion"], f"type confusion: {title}"
        )
    if json_path:
        write_file(json_path, json.dumps(report, indent=2))
    if markdown_path:
        text = (
            markdown_report(report) + "\n" + markdown_details(report["confusion"], report["errors"])
        )
        if "charts" in report:
            text += "".join(
                f"\n![{name}]({Path(file).name})\n" for name, file in report["charts"].items()
            )
        write_file(markdown_path, text)
    if html_path:
        write_html_report(report, html_path, sentences, gold_tags, predicted, model)
    return report


def write_html_report(
    report: dict,
    html_path: str | Path,
    sentences: Sequence,
    gold_tags: list[list[str]],
    predicted: list[list[str]],
    model: str | Path | None = None,
) -> None:
    """The HTML page of `report`: error examples in context from the sentences, and the training
    curves of a checkpoint (its metrics.json) when `model` is one."""
    from .report import error_examples, html_report

    examples = error_examples([s.tokens for s in sentences], gold_tags, predicted, report["errors"])
    epochs = None
    local_model = model is not None and not is_uri(str(model))
    metrics = Path(local_path(str(model))) / "metrics.json" if local_model else None
    if metrics is not None and metrics.is_file():
        try:
            epochs = json.loads(metrics.read_text()).get("epochs")
        except (OSError, ValueError, AttributeError):
            epochs = None  # an unreadable metrics.json only costs the curves
    write_file(html_path, html_report(report, examples, epochs))


def _without_suffix(location: str) -> str:
    """`location` without the suffix of its last name (`s3://b/score.md` -> `s3://b/score`)."""
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        return f"{scheme}://{PurePosixPath(rest).with_suffix('')}"
    return str(Path(location).with_suffix(""))


def map_types(
    predicted: list[list[str]], gold: list[list[str]], label_map: dict[str, str]
) -> tuple[list[list[str]], dict[str, int]]:
    """Predicted IOB2 tags with types renamed by `label_map`; tags of a type that is neither in
    the gold data nor mapped become O. Returns the tags and {unmapped type: entities}."""
    gold_types = {t[2:] for sentence in gold for t in sentence if t != "O"}
    unmapped: dict[str, int] = {}
    mapped = []
    for sentence in predicted:
        tags = []
        for tag in sentence:
            if tag == "O":
                tags.append(tag)
                continue
            prefix, kind = tag[:2], tag[2:]
            kind = label_map.get(kind, kind)
            if kind not in gold_types and kind not in label_map.values():
                if prefix == "B-":
                    unmapped[kind] = unmapped.get(kind, 0) + 1
                tags.append("O")
            else:
                tags.append(prefix + kind)
        mapped.append(tags)
    return mapped, dict(sorted(unmapped.items()))


def parse_label_map(text: str | None) -> dict[str, str]:
    """`PERSON=PER,GPE=LOC` -> {"PERSON": "PER", "GPE": "LOC"}; raises ValueError naming a bad
    pair."""
    pairs = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"{item!r} is not MODEL_TYPE=GOLD_TYPE (e.g. PERSON=PER)")
        pairs[source.strip()] = target.strip()
    return pairs


def load_tagger(
    model: str | Path,
    variant: str = "auto",
    batch_size: int = SCORING_BATCH_SIZE,
    runtime: str = "auto",
    decode: str = TaggerOptions.decode,
) -> tuple[Tagger, str]:
    """A Tagger over a bundle (ONNX) or a training checkpoint (PyTorch), and a description.

    `model` is a bundle when it is an object-store URI (a checkpoint is only ever local) or a
    local directory with a bundle.json; anything else is read as a checkpoint."""
    from .bundle import BUNDLE_FILE, load_bundle
    from .runtimes import open_tagger

    try:
        options = scoring_options(batch_size, decode)
        options.check()
    except ValueError as e:
        raise OptionError(str(e)) from e
    location = str(model)
    path = Path(local_path(location))
    if is_uri(location) or (path / BUNDLE_FILE).is_file():
        bundle = load_bundle(location)
        tagger = open_tagger(bundle, variant=variant, runtime=runtime, options=options)
        where = location if is_uri(location) else path
        return tagger, (
            f"bundle {where} ({bundle.resolve_variant(variant)} on {tagger.runtime['runtime']})"
        )
    from .checkpoint import load_checkpoint, torch_logits_fn

    torch_model, encoder, meta = load_checkpoint(path)
    tagger = Tagger(
        encoder,
        meta["labels"],
        torch_logits_fn(torch_model),
        meta["max_length"],
        stride=default_stride(meta["max_length"]),
        options=options,
        scheme=meta.get("scheme"),
    )
    return tagger, f"checkpoint {path} (PyTorch)"


def tags_from_predictions(predictions: str | Path, documents: Sequence[Document]):
    """Gold-token tags from annotate's Parquet spans. Documents must come from `gold2corpus`
    on the same gold file: their ids say which sentences they hold."""
    from .corpus import gold_layout
    from .output import read_spans

    layout = gold_layout(documents)  # doc_id -> [(sentence index, offset of its text)]
    spans_by_doc = read_spans(predictions)
    unknown = sorted(set(spans_by_doc) - set(layout))
    if unknown:
        raise NerbatchError(
            f"{predictions}: {len(unknown)} document ids (e.g. {unknown[0]!r}) are not in the "
            "gold file; was the corpus made from it with `nerbatch gold2corpus`?"
        )
    sentences = sentences_of(documents)
    predicted = [["O"] * len(s.tokens) for s in sentences]
    # Only records that have spans: the layout holds both units (document and sentence ids), and a
    # record without spans leaves its sentences all O.
    for doc_id, found in spans_by_doc.items():
        for index, offset in layout[doc_id]:
            _, starts, ends = token_offsets(sentences[index].tokens)
            predicted[index] = token_tags(starts + offset, ends + offset, found)
    return predicted
