"""The choice lists of options that the CLI, the library and the tests share, each defined once.

Plain data, no imports: `cli.py` builds its `click.Choice`s from here without loading onnxruntime,
torch or ray. The modules that act on a choice (bundle, tagger, readers, export, annotate) read
their list from here too and refuse any other value with a message that names the allowed ones.
"""

from __future__ import annotations

# Model bundle variants (what `export --variants` builds and bundle.json lists), the file each
# is stored in, and the default per device. "openvino" is an int8 OpenVINO IR (NNCF, static
# int8), whose weights sit in a second file beside it.
VARIANTS = ("fp32", "int8", "fp16", "openvino")
VARIANT_FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
    "openvino": "model.openvino.xml",
}
WEIGHT_FILES = {"openvino": "model.openvino.bin"}
# The runtime each variant's file is made for (export validates it there).
NATIVE_RUNTIME = {"fp32": "onnxruntime", "int8": "onnxruntime", "fp16": "onnxruntime"}
NATIVE_RUNTIME["openvino"] = "openvino"
DEVICES = ("cpu", "cuda")
DEFAULT_VARIANT = {"cpu": "int8", "cuda": "fp16"}

# Runtimes, and the precisions a run asks for (`annotate --variant`): which bundle variant each
# (precision, runtime) runs. OpenVINO reads the fp32 ONNX graph itself, in f32 or bf16.
RUNTIMES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8", "fp16", "bf16")
RUNS = {
    ("fp32", "onnxruntime"): "fp32",
    ("int8", "onnxruntime"): "int8",
    ("fp16", "onnxruntime"): "fp16",
    ("fp32", "openvino"): "fp32",
    ("int8", "openvino"): "openvino",
    ("bf16", "openvino"): "fp32",
}

# What the int8 variant quantizes (dynamic, per-channel int8 weights). Measured on the 8-epoch
# MiniLM, CoNLL-2003 test F1 at batch sizes 1/8/32/64 (fp32 89.12) and model tokens/s on 2
# AVX2 cores (docs/int8.md): "matmul" 88.96-89.01, ~6,700; "matmul+attention" 88.67-88.79,
# ~8,300. 7-bit weights (reduce_range) made F1 swing with batch composition (88.57-89.04).
INT8_OPS = {"matmul": ["MatMul"], "matmul+attention": ["MatMul", "Attention"]}

# annotate engines: this machine, a Ray cluster (ray_engine.py), Spark (spark.py).
ENGINES = ("local", "ray", "spark")

# How many line breaks between two sub-tokens end a segment: context never crosses a segment
# boundary. "lines": every line is tagged on its own (headlines, list items, table rows, and one
# sentence per line as in CoNLL); "paragraphs": blank lines separate; "none": whole documents.
SEGMENTS = {"lines": 1, "paragraphs": 2, "none": 0}

# Readers: a .txt file is one document or one per line; undecodable bytes reject or become U+FFFD.
TXT_MODES = ("file", "lines")
ENCODING_ERRORS = ("strict", "replace")


def check_choice(name: str, value: object, allowed) -> None:
    """Raise ValueError naming `name`, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")


# How words get their labels (`annotate --decode`, `score --decode`): each word's most probable
# label, or the most probable label sequence the labels' scheme allows (decode.py).
DECODERS = ("argmax", "viterbi")
