"""Model bundles: the directory `nerbatch export` writes and `nerbatch annotate` reads.

`bundle.json` describes the bundle (format version, labels, window, tokenizer settings, one entry
per variant with its file(s), sha256 and measured agreement with PyTorch); `tokenizer.json`, the
`model*.onnx` files and the openvino variant's IR sit beside it. `Bundle.tagger` runs a variant on
ONNX Runtime or OpenVINO (openvino_backend.py; `auto` times both: probe.py).

Every defect is a BundleError naming the bundle, the field or file and what was expected, before
any work starts: `load_bundle` checks bundle.json's whole
structure; `Bundle.tagger` checks the checksums of the files it will use, the session's inputs and
its number of output labels, and runs the model once on a full window so that a window longer
than the model's positions is refused up front (by the recorded `max_positions` when the bundle
has it). It does not repair bundles (export again) or read the files of variants it does not use.
Runtime-only: onnxruntime, tokenizers, numpy (and openvino, when installed and asked for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import openvino_backend, probe
from .choices import DEFAULT_VARIANT, DEVICES, PRECISIONS, RUNS, RUNTIMES, check_choice
from .conll import split_tag
from .errors import BundleError, OptionError, SchemeError
from .features import WORD_RULES, TextEncoder
from .storage import Remote, copy_to_local, is_uri, local_path, open_remote
from .tagger import Tagger, TaggerOptions, default_stride

BUNDLE_FILE = "bundle.json"
FORMAT_VERSION = 1
MIN_MAX_LENGTH = 10  # the Tagger needs 8 sub-tokens per window besides [CLS] and [SEP]
REQUIRED_INPUTS = ("input_ids", "attention_mask")  # what onnx_logits_fn feeds, with:
OPTIONAL_INPUTS = ("token_type_ids",)


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

    def runtimes(self, variant: str, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
        """The runtimes that can run the precision `variant` here, and why each other cannot."""
        usable: list[str] = []
        why_not: dict[str, str] = {}
        for runtime in RUNTIMES[1:]:
            entry = RUNS.get((variant, runtime))
            if entry is None:
                why_not[runtime] = f"{runtime} does not run {variant} models"
            elif entry not in self.meta["variants"]:
                why_not[runtime] = (
                    f"the bundle has no {entry} variant (export builds it when the [openvino] "
                    "extra is installed)"
                )
            elif runtime == "openvino" and device != "cpu":
                why_not[runtime] = f"nerbatch runs OpenVINO on the CPU only, not --device {device}"
            elif runtime == "openvino" and (missing := openvino_backend.missing()):
                why_not[runtime] = missing
            else:
                usable.append(runtime)
        return usable, why_not

    def resolve_runtime(self, variant: str, device: str, runtime: str) -> tuple[list[str], str]:
        """The runtimes to consider for `runtime` (one, or for `auto` the ones to time against
        each other) and why. `auto` times ONNX Runtime against OpenVINO only for int8, where the
        bundle has both variants; fp32 runs on ONNX Runtime and bf16 on OpenVINO."""
        try:
            check_choice("runtime", runtime, RUNTIMES)
        except ValueError as e:
            raise OptionError(str(e)) from e
        usable, why_not = self.runtimes(variant, device)
        if runtime != "auto":
            if runtime not in usable:
                raise OptionError(
                    f"--runtime {runtime} cannot run --variant {variant}: {why_not[runtime]}"
                )
            return [runtime], f"--runtime {runtime}"
        if not usable:
            raise OptionError(
                f"no runtime can run --variant {variant} here: {'; '.join(why_not.values())}"
            )
        if variant != "int8" or len(usable) == 1:
            chosen = "onnxruntime" if "onnxruntime" in usable else usable[0]
            if variant != "int8":
                return [chosen], f"{variant} runs on {chosen} under --runtime auto"
            other = next(r for r in RUNTIMES[1:] if r != chosen)
            return [chosen], f"the only runtime for int8 here ({other}: {why_not[other]})"
        return usable, "timed at start-up"

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

    def session(self, variant: str, device: str = "cpu", threads: int = 0):
        """An ONNX Runtime session for the variant; `threads` 0 lets ORT use every core."""
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BundleError(
                    "--device cuda needs onnxruntime-gpu with CUDAExecutionProvider; this "
                    f"onnxruntime has {ort.get_available_providers()} (pip install "
                    "onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA)"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        file = self.path / self.meta["variants"][variant]["file"]
        try:
            session = ort.InferenceSession(str(file), options, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types: report any of them
            raise BundleError(f"ONNX Runtime cannot load {file}: {e}") from e
        self._check_graph(session, file.name)
        return session

    def _check_graph(self, session, name: str) -> None:
        """The session's inputs are the ones onnx_logits_fn feeds, and its logits have one
        column per label of bundle.json (when the graph states that number)."""
        inputs = {i.name: i.type for i in session.get_inputs()}
        problems = [f"has no input {n!r}" for n in REQUIRED_INPUTS if n not in inputs]
        for input_name, kind in inputs.items():
            if input_name not in REQUIRED_INPUTS + OPTIONAL_INPUTS:
                problems.append(f"needs an input {input_name!r} that nerbatch does not feed")
            elif kind != "tensor(int64)":
                problems.append(f"takes {input_name!r} as {kind}, not tensor(int64)")
        if problems:
            raise BundleError(
                f"bundle {self.path}: {name} {'; '.join(problems)} (nerbatch feeds "
                f"{', '.join(REQUIRED_INPUTS + OPTIONAL_INPUTS)}: int64, (batch, sequence))"
            )
        outputs = session.get_outputs()
        shape = outputs[0].shape if outputs else None
        if not shape or len(shape) != 3:
            raise BundleError(
                f"bundle {self.path}: {name} has output shape {shape}; expected logits "
                "(batch, sequence, labels)"
            )
        if isinstance(shape[-1], int):  # else symbolic: the probe run checks it
            self._check_label_count(shape[-1], name)

    def _check_label_count(self, n_outputs: int, name: str) -> None:
        if n_outputs != len(self.labels):
            raise BundleError(
                f"bundle {self.path}: the model has {n_outputs} output labels but {BUNDLE_FILE} "
                f"lists {len(self.labels)} ({name} and {BUNDLE_FILE} do not belong together: "
                "export the bundle again)"
            )

    def _check_runs(
        self, session, encoder: TextEncoder, name: str, max_length: int, chosen: bool
    ) -> None:
        """Run the model once before any work: that it runs at all and gives one logit per
        label (also when the graph's label dimension is symbolic), and, for a window longer than
        the one the bundle was exported and validated with or a bundle without a recorded
        `max_positions`, that it takes a window of `max_length`: a window longer than the
        model's positions fails here rather than on the first long document.

        Otherwise (window() checked max_length against `max_positions`) the run is one (1, 10)
        window: measured 5 ms (int8) / 10 ms (fp32) for a MiniLM-L12-sized model on one
        thread, against 0.3-1.2 s to create its session. A full window costs one window's work
        (40-65 ms at 128, 0.2-0.3 s at 512 on that model); a window too long fails fast (< 1 ms:
        the position embedding is the first node), and the longest one that runs is then found
        by bisection, to name the limit. A graph that accepts longer inputs silently passes:
        for it only the recorded `max_positions` helps."""
        unproven = self.max_positions is None or max_length > self.meta["max_length"]
        length = max_length if unproven else MIN_MAX_LENGTH
        error = self._probe(session, encoder, name, length)
        if error is None:
            return
        good = self.meta["max_length"] if self.meta["max_length"] < length else MIN_MAX_LENGTH
        if good >= length or self._probe(session, encoder, name, good) is not None:
            raise BundleError(
                f"bundle {self.path}: {name} does not run on a window of {length} sub-tokens: "
                f"{error}"
            )
        bad = length
        # Invariant: `good` runs, `bad` does not. Usual limits are tried first (a failed run is
        # cheap, a successful one costs a window): 256 or 512 positions take one successful run.
        usual = [n + i for n in (8192, 4096, 2048, 1024, 512, 256, 128) for i in (1, 0)]
        while bad - good > 1:
            middle = next((n for n in usual if good < n < bad), (good + bad) // 2)
            if self._probe(session, encoder, name, middle) is None:
                good = middle
            else:
                bad = middle
        why = f"{name} of bundle {self.path} fails on longer windows: {error}"
        if chosen:
            raise OptionError(
                f"--max-length {max_length} is longer than this model's {good} positions "
                f"({why}); use at most {good}"
            )
        raise BundleError(
            f"bundle {self.path}: max_length {max_length} in {BUNDLE_FILE} is longer than the "
            f"model's {good} positions ({why}); pass --max-length {good} or export it again"
        )

    def _probe(self, session, encoder: TextEncoder, name: str, length: int) -> str | None:
        """ORT's error for one (1, length) window of [CLS] [UNK]... [SEP], or None if it runs;
        logits of the wrong shape are a BundleError."""
        import onnxruntime as ort

        # Not padding: RoBERTa-style models give padding no position, so pads would always fit.
        vocab = encoder.tokenizer
        filler = vocab.token_to_id("[UNK]")
        if filler is None:
            filler = vocab.token_to_id("<unk>")
        if filler is None:
            filler = (encoder.pad_id + 1) % vocab.get_vocab_size()
        ids = np.full((1, length), filler, dtype=np.int64)
        ids[0, : len(encoder.prefix_ids)] = encoder.prefix_ids
        ids[0, length - len(encoder.suffix_ids) :] = encoder.suffix_ids
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported here; ORT would also log it
        try:
            feed = _feeder(session)(ids, np.ones_like(ids), np.zeros_like(ids))
            logits = session.run(None, feed, quiet)[0]
        except Exception as e:  # broad: ORT raises its own classes (InvalidArgument, Fail, ...)
            return " ".join(str(e).split())
        if logits.shape[-1] != len(self.labels):
            self._check_label_count(logits.shape[-1], name)
        if logits.shape[:2] != (1, length):
            raise BundleError(
                f"bundle {self.path}: {name} gives logits of shape {logits.shape} for a window "
                f"of shape (1, {length}); expected (1, {length}, {len(self.labels)})"
            )
        return None

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

    def tagger(
        self,
        variant: str = "auto",
        device: str = "cpu",
        *,
        runtime: str = "auto",
        max_length: int | None = None,
        stride: int | None = None,
        threads: int = 0,
        options: TaggerOptions | None = None,
    ) -> Tagger:
        """A Tagger on one ONNX Runtime session or OpenVINO compiled model. `threads` is the
        total (0: every core); with `options.streams` > 1 each of the concurrent batches runs on
        threads / streams of them (0: the runtime's best, see TaggerOptions). `runtime`:
        onnxruntime, openvino, or auto (for int8 with both variants in the bundle: the faster
        one here, timed; see probe.py). The Tagger's `runtime` attribute says which runs and
        why."""
        options = options or TaggerOptions()
        variant = self.resolve_variant(variant, device)
        candidates, why = self.resolve_runtime(variant, device, runtime)
        length_chosen, chosen = max_length is not None, (max_length, stride) != (None, None)
        max_length, stride = self.window(max_length, stride)  # before reading any file
        try:
            options.check()
        except ValueError as e:
            raise OptionError(str(e)) from e
        for name in candidates:
            self.verify(RUNS[(variant, name)])  # the tokenizer's checksum too, before its use
        encoder = self.encoder()
        logits_fns, streams = {}, {}
        for name in candidates:
            entry = RUNS[(variant, name)]
            session, logits_fn, streams[name] = self._backend(
                name, variant, device, threads, options, (encoder.pad_id, max_length)
            )
            file = self.meta["variants"][entry]["file"]
            self._check_runs(session, encoder, file, max_length, length_chosen)
            logits_fns[name] = logits_fn
        if len(candidates) == 1:
            choice = {"runtime": candidates[0], "reason": why}
        else:
            timed = {name: (fn, streams[name]) for name, fn in logits_fns.items()}
            choice = probe.choose(timed, encoder, max_length)
        options = dataclasses.replace(options, streams=streams[choice["runtime"]])
        try:
            tagger = Tagger(
                encoder, self.labels, logits_fns[choice["runtime"]], max_length, stride, options
            )
        except ValueError as e:  # one Error: line, blaming whoever chose the window
            if chosen:
                raise OptionError(str(e)) from e
            raise BundleError(
                f"bundle {self.path}: the window in {BUNDLE_FILE} does not fit its tokenizer: {e}"
            ) from e
        tagger.runtime = choice
        return tagger

    def _backend(
        self,
        runtime: str,
        variant: str,
        device: str,
        threads: int,
        options: TaggerOptions,
        padding: tuple[int, int],
    ):
        """(a session for the bundle checks, the Tagger's LogitsFn, its number of streams) of the
        precision `variant` on `runtime`; the graph's inputs and outputs are checked. `padding`:
        the pad id and the window, for OpenVINO's sequence padding."""
        entry = RUNS[(variant, runtime)]
        file = self.path / self.meta["variants"][entry]["file"]
        if runtime == "openvino":
            precision = "bf16" if variant == "bf16" else "f32"
            compiled = openvino_backend.compile_model(file, precision, threads, options.streams)
            session = openvino_backend.SessionLike(compiled)
            self._check_graph(session, file.name)
            streams = options.streams or openvino_backend.optimal_requests(compiled)
            pad_id, max_length = padding
            return session, openvino_backend.logits_fn(compiled, pad_id, max_length), streams
        streams = options.streams or 1
        total = threads or os.cpu_count() or 1
        per_run = threads if streams == 1 else max(1, total // streams)
        session = self.session(entry, device, per_run)  # checks the graph
        return session, onnx_logits_fn(session), streams


def onnx_logits_fn(session):
    feed = _feeder(session)

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        return session.run(None, feed(ids, mask, types))[0].astype(np.float32, copy=False)

    return logits


def _feeder(session):
    """(ids, mask, types) -> the session's input feed: token_type_ids only if it takes them."""
    types_too = any(i.name == "token_type_ids" for i in session.get_inputs())

    def feed(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict:
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types_too:
            inputs["token_type_ids"] = types
        return inputs

    return feed


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
