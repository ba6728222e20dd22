"""Model bundles: the directory `nerbatch export` writes and `nerbatch annotate` reads.

`bundle.json` describes the bundle (format version, labels, window, tokenizer settings, one entry
per variant with its file(s), sha256 and measured agreement with PyTorch); `tokenizer.json`, the
`model*.onnx` files and the openvino variant's IR sit beside it.

Here: the format (`load_bundle` checks bundle.json's whole structure, every defect one
BundleError naming the field and what was expected), the files' checksums (`verify`, before a
variant's first use), fetching a bundle from an object store into the local cache, the
tokenizer (`encoder`) and the window. Not here: running a variant (backends.py), checking the
model it holds (model_checks.py), choosing the runtime and assembling the Tagger (runtimes.py).
It does not repair bundles (export again) or read the files of variants it does not use.
Runtime-only: tokenizers (and the cloud filesystems of pyarrow for remote bundles).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .choices import DEFAULT_VARIANT, DEVICES, PRECISIONS, RUNS
from .conll import split_tag
from .errors import BundleError, OptionError, SchemeError
from .features import WORD_RULES, TextEncoder
from .storage import Remote, copy_to_local, is_uri, local_path, open_remote
from .tagger import default_stride

BUNDLE_FILE = "bundle.json"
FORMAT_VERSION = 1
MIN_MAX_LENGTH = 10  # the Tagger needs 8 sub-tokens per window besides [CLS] and [SEP]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    path: Path  # a local directory: the bundle itself, or the cache of a remote one
    meta: dict
    remote: Remote | None = None  # where the bundle came from, for an object-store URI

    @property
    def bundle_id(self) -> str:
        return self.meta["bundle_id"]

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def max_positions(self) -> int | None:
        """The model's position limit recorded at export (None in bundles made before it was)."""
        return self.meta.get("max_positions")

    def resolve_variant(self, variant: str = "auto", device: str = "cpu") -> str:
        """The precision a run asks for (`auto`: the device's default), checked against what
        the bundle has: int8 runs the `int8` variant (ONNX Runtime) or the `openvino` one,
        bf16 runs the fp32 graph on OpenVINO."""
        if device not in DEVICES:
            raise BundleError(f"unknown device {device!r}; expected one of {list(DEVICES)}")
        if variant == "auto":
            variant = DEFAULT_VARIANT[device]
        if variant not in PRECISIONS:
            raise BundleError(
                f"unknown variant {variant!r}; expected one of {['auto', *PRECISIONS]}"
            )
        entries = {RUNS[key] for key in RUNS if key[0] == variant}
        if not entries & set(self.meta["variants"]):
            raise BundleError(
                f"bundle {self.path} has no {variant} variant (it has "
                f"{sorted(self.meta['variants'])})"
            )
        return variant

    def verify(self, variant: str) -> None:
        """Check the tokenizer's and the bundle variant's files (the IR's weights too) against
        their sha256 in bundle.json."""
        entry = self.meta["variants"][variant]
        files = [(self.meta["tokenizer"]["file"], self.meta["tokenizer"]["sha256"])]
        files.append((entry["file"], entry["sha256"]))
        if isinstance(entry.get("weights"), dict):
            files.append((entry["weights"]["file"], entry["weights"]["sha256"]))
        for name, expected in files:
            file = self.path / name
            if self.remote is not None:
                self._fetch(name, expected)
            if not file.is_file():
                raise BundleError(f"bundle {self.path} is missing {name}")
            try:
                actual = sha256_of(file)
            except OSError as e:
                raise BundleError(f"cannot read {file}: {e.strerror or e}") from e
            if actual != expected:
                raise BundleError(
                    f"bundle {self.path}: {name} does not match its checksum in {BUNDLE_FILE} "
                    f"(expected sha256 {expected[:12]}…, found {actual[:12]}…); the file is "
                    "corrupt or was changed after export: export the bundle again"
                )

    def _fetch(self, name: str, sha256: str) -> None:
        """Download one file of a remote bundle unless the cache already holds that content."""
        file = self.path / name
        if file.is_file() and sha256_of(file) == sha256:
            return
        try:
            copy_to_local(self.remote.child(name), str(file))
        except FileNotFoundError:
            raise BundleError(f"bundle {self.remote.uri} is missing {name}") from None
        except OSError as e:
            raise BundleError(f"cannot download {self.remote.child(name).uri}: {e}") from e

    def encoder(self) -> TextEncoder:
        tokenizer = self.meta["tokenizer"]
        rule = tokenizer.get("word_rule", "pre-tokenizer")  # absent in bundles before 0.2
        if rule not in WORD_RULES:
            raise BundleError(
                f"bundle {self.path}: tokenizer.word_rule {rule!r} is not one of {WORD_RULES}"
            )
        try:
            encoder = TextEncoder(
                self.path / tokenizer["file"], word_shapes=tokenizer["word_shapes"], word_rule=rule
            )
        except Exception as e:  # broad: tokenizers raises a bare Exception for a bad file
            raise BundleError(
                f"bundle {self.path}: {tokenizer['file']} is not a tokenizers file: "
                f"{' '.join(str(e).split())[:200]}"
            ) from e
        vocab = encoder.tokenizer.get_vocab_size()
        # A model may have more embedding rows than its tokenizer has entries (DeBERTa-v3: 128,100
        # for 128,001), never fewer.
        if vocab > tokenizer["vocab_size"]:
            raise BundleError(
                f"bundle {self.path}: tokenizer has {vocab} entries but the model was exported "
                f"with a vocabulary of {tokenizer['vocab_size']}: tokenizer and model do not match"
            )
        return encoder

    def window(self, max_length: int | None = None, stride: int | None = None) -> tuple[int, int]:
        """Window length (sub-tokens, specials included) and overlap: the given ones, else the
        bundle's; a window other than the bundle's gets the default overlap for its length.
        A max_length above the model's recorded `max_positions` is an OptionError (the Tagger
        checks the rest of the range)."""
        if max_length is None:
            max_length = self.meta["max_length"]
        elif self.max_positions is not None and max_length > self.max_positions:
            raise OptionError(
                f"--max-length {max_length} is longer than this model's {self.max_positions} "
                f"positions (bundle {self.path}); use at most {self.max_positions}"
            )
        if stride is None:
            stride = (
                self.meta["stride"]
                if max_length == self.meta["max_length"]
                else default_stride(max_length)
            )
        return max_length, stride


def cache_dir() -> Path:
    """Where remote bundles are downloaded: $NERBATCH_CACHE, else ~/.cache/nerbatch."""
    root = os.environ.get("NERBATCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nerbatch"
    )
    return Path(root)


def load_bundle(path: str | Path) -> Bundle:
    """Read and check bundle.json; the model files are checked when a variant is chosen.

    `path` may be an object-store URI (`s3://bucket/bundles/minilm`): bundle.json is read from
    there, and the files a variant needs are downloaded into the cache when it is chosen (again
    only if their checksum changed).
    """
    if is_uri(str(path)):
        return _load_remote(str(path))
    path = Path(local_path(str(path)))
    meta_file = path / BUNDLE_FILE
    if not path.exists():
        raise BundleError(
            f"model bundle {path} does not exist (make one with `nerbatch export CHECKPOINT "
            f"--out {path}`, or point --model at an existing bundle)"
        )
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a model bundle: it has no {BUNDLE_FILE}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{meta_file} is not valid JSON: {e}") from e
    except OSError as e:
        raise BundleError(f"cannot read {meta_file}: {e.strerror or e}") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{meta_file}: format version {version!r} is not supported by this nerbatch "
            f"(it reads version {FORMAT_VERSION}); export the bundle again or upgrade nerbatch"
        )
    _check_meta(meta, meta_file)
    return Bundle(path, meta)


def _is_int(minimum: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_file_name(value) -> bool:
    """A plain file name: bundle files sit beside bundle.json, never elsewhere."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        return False
    return "/" not in value and "\\" not in value


def _is_sha256(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


_FILE = (_is_file_name, "a file name in the bundle directory")
_SHA256 = (_is_sha256, "a sha256 of 64 lowercase hex digits")
# bundle.json's required fields (dotted: nested), checked in order: a child is not looked at when
# its parent is missing or not an object. Each entry of `variants` has VARIANT_FIELDS.
FIELDS: dict[str, tuple] = {
    "bundle_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "labels": (lambda v: isinstance(v, list) and v != [], "a non-empty list of labels"),
    "max_length": (_is_int(MIN_MAX_LENGTH), f"an integer >= {MIN_MAX_LENGTH}"),
    "stride": (_is_int(0), "an integer >= 0"),
    "tokenizer": (lambda v: isinstance(v, dict), "an object"),
    "tokenizer.file": _FILE,
    "tokenizer.sha256": _SHA256,
    "tokenizer.vocab_size": (_is_int(1), "an integer >= 1"),
    "tokenizer.word_shapes": (lambda v: isinstance(v, bool), "true or false"),
    "variants": (
        lambda v: isinstance(v, dict) and v != {},
        'an object with an entry per variant ({"fp32": {...}, ...})',
    ),
}
VARIANT_FIELDS: dict[str, tuple] = {"file": _FILE, "sha256": _SHA256}
OPTIONAL_FIELDS: dict[str, tuple] = {
    "max_positions": (_is_int(MIN_MAX_LENGTH), f"an integer >= {MIN_MAX_LENGTH}"),
}
_ABSENT, _UNCHECKED = object(), object()


def _lookup(meta: dict, field: str):
    """The value of a dotted field; _ABSENT if missing, _UNCHECKED if a parent is malformed
    (reported for the parent)."""
    value = meta
    for key in field.split("."):
        if not isinstance(value, dict):
            return _UNCHECKED
        if key not in value:
            return _ABSENT
        value = value[key]
    return value


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_meta(meta: dict, meta_file: Path) -> None:
    """Raise one BundleError listing every field of bundle.json that is missing or malformed
    (each named with what was expected), so that no defect surfaces mid-run."""
    problems = []

    def check(field: str, value, valid, expected: str) -> None:
        if value is _ABSENT:
            problems.append(f"lacks the field {field!r} (expected {expected})")
        elif value is not _UNCHECKED and not valid(value):
            problems.append(f"field {field!r} is {_show(value)}; expected {expected}")

    for field, (valid, expected) in FIELDS.items():
        check(field, _lookup(meta, field), valid, expected)
    variants = meta.get("variants")
    # Every entry, also one a run does not use (names other than VARIANTS are never used).
    for variant, entry in variants.items() if isinstance(variants, dict) else ():
        field = f"variants.{variant}"
        if not isinstance(entry, dict):
            check(field, entry, lambda v: False, "an object with file and sha256")
            continue
        for key, (valid, expected) in VARIANT_FIELDS.items():
            check(f"{field}.{key}", entry.get(key, _ABSENT), valid, expected)
        weights = entry.get("weights", _ABSENT)  # an IR's second file (the openvino variant)
        if weights is not _ABSENT:
            if not isinstance(weights, dict):
                check(
                    f"{field}.weights", weights, lambda v: False, "an object with file and sha256"
                )
                continue
            for key, (valid, expected) in VARIANT_FIELDS.items():
                check(f"{field}.weights.{key}", weights.get(key, _ABSENT), valid, expected)
    for field, (valid, expected) in OPTIONAL_FIELDS.items():
        value = meta.get(field)
        if value is not None and not valid(value):
            problems.append(f"field {field!r} is {_show(value)}; expected {expected} or null")
    if not problems:
        problems += _window_problems(meta)
    if isinstance(meta.get("labels"), list):
        problems += _label_problems(meta["labels"], meta.get("scheme", "IOB2"))
    if problems:
        raise BundleError(f"{meta_file}: " + "; ".join(problems))


def _window_problems(meta: dict) -> list[str]:
    max_length, stride, positions = meta["max_length"], meta["stride"], meta.get("max_positions")
    problems = []
    if stride >= max_length:
        problems.append(f"stride {stride} is not smaller than max_length {max_length}")
    if positions is not None and max_length > positions:
        problems.append(f"max_length {max_length} is longer than max_positions {positions}")
    return problems


def _label_problems(labels: list, scheme: str) -> list[str]:
    """Labels are distinct tags (the model's output ids, in order): each 'O' or PREFIX-TYPE, or,
    in a bundle of the prefix-less IO scheme, any non-empty name."""
    problems, seen = [], set()
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            problems.append(f"labels[{i}] is {_show(label)}; expected a tag string")
            continue
        if scheme != "IO":
            try:
                split_tag(label)
            except SchemeError as e:
                problems.append(f"labels[{i}]: {e}")
        if label in seen:
            problems.append(f"labels[{i}] {label!r} is listed twice")
        seen.add(label)
    return problems


def _load_remote(uri: str) -> Bundle:
    remote = open_remote(uri)
    key = hashlib.sha256(remote.uri.encode()).hexdigest()[:16]
    local = cache_dir() / "bundles" / key
    local.mkdir(parents=True, exist_ok=True)
    try:
        copy_to_local(remote.child(BUNDLE_FILE), str(local / BUNDLE_FILE))
    except FileNotFoundError:
        raise BundleError(
            f"{uri} is not a model bundle: it has no {BUNDLE_FILE} (or does not exist)"
        ) from None
    except OSError as e:
        raise BundleError(f"cannot read the model bundle {uri}: {e}") from e
    bundle = load_bundle(local)
    bundle.remote = remote
    return bundle
