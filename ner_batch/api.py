"""The in-memory API: tag texts with a bundle in your own process (a notebook, a Spark or Ray UDF).

    import ner_batch
    tagger = ner_batch.load("export/minilm")
    tagger(["Angela Merkel visited Paris."])
    # [[{'start': 0, 'end': 13, 'label': 'PER', 'text': 'Angela Merkel', 'score': 0.99...},
    #   {'start': 22, 'end': 27, 'label': 'LOC', 'text': 'Paris', 'score': 0.99...}]]

The spans are the rows `nerbatch annotate` writes for the same texts with the same tagger
options and the default `--part-docs`, as one JSONL file of them without rejects: same windows,
same batches (so int8 scores too), scores rounded to float32 as in the Parquet output. It does
not read files, write outputs or resume: that is `annotate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .bundle import load_bundle
from .output import SPAN_FIELDS, span_columns
from .run import AnnotateConfig, tag_in_chunks
from .runtimes import open_tagger
from .tagger import TaggerOptions


class Annotator:
    """A bundle's tagger, called on a list of texts; each text gets a list of span dicts
    (start, end, label, text, score), in order."""

    def __init__(
        self,
        bundle: str,
        variant: str = "auto",
        device: str = "cpu",
        *,
        runtime: str = "auto",
        max_length: int | None = None,
        stride: int | None = None,
        threads: int = 0,
        options: TaggerOptions | None = None,
        decode: str | None = None,
    ):
        """`decode` (argmax or viterbi) overrides `options.decode` (default: viterbi)."""
        if decode is not None:
            options = dataclasses.replace(options or TaggerOptions(), decode=decode)
        self.bundle = load_bundle(bundle)
        self.variant = self.bundle.resolve_variant(variant, device)
        self.tagger = open_tagger(
            self.bundle,
            variant,
            device,
            runtime=runtime,
            max_length=max_length,
            stride=stride,
            threads=threads,
            options=options,
        )
        defaults = AnnotateConfig([], "")  # annotate's chunking, so that batches are the same
        self.chunk_docs = defaults.chunk_docs
        self.chunk_chars = defaults.chunk_chars
        self.part_docs = defaults.part_docs

    def __call__(self, texts: Iterable[str]) -> list[list[dict]]:
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, not str")
        tagged = tag_in_chunks(
            self.tagger, texts, self.chunk_docs, self.chunk_chars, self.part_docs
        )
        columns, counts = span_columns(texts, [spans for _, spans in tagged])
        rows = [
            dict(zip(SPAN_FIELDS, values, strict=True))
            for values in zip(*(columns[name].to_pylist() for name in SPAN_FIELDS), strict=True)
        ]
        result, start = [], 0
        for count in counts:
            result.append(rows[start : start + count])
            start += count
        return result

    @property
    def runtime(self) -> str:
        """The runtime that runs the model (why: `self.tagger.runtime`)."""
        return self.tagger.runtime["runtime"]

    def __repr__(self) -> str:
        return (
            f"Annotator({self.bundle.bundle_id!r}, variant={self.variant!r}, "
            f"runtime={self.runtime!r})"
        )
