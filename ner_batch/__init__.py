"""nerbatch: batch named-entity recognition.

`ner_batch.load(BUNDLE)` returns a callable that tags texts in memory (see api.py); the stages
are `train`, `export`, `annotate` and `score` (one module each) and the `nerbatch` command.
"""

# 0.4: one run plan for every engine, one backend interface, manifest format 2.
__version__ = "0.5.0"


def load(bundle: str, variant: str = "auto", device: str = "cpu", **options):
    """An `api.Annotator` over the bundle: `load("export/minilm")(["text", ...])` -> spans."""
    from .api import Annotator  # onnxruntime and pyarrow load only when this is used

    return Annotator(bundle, variant, device, **options)
