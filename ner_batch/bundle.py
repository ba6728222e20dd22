"""Model bundles: the directory `nerbatch export` writes and `nerbatch annotate` reads.

`bundle.json` describes the bundle (format version, labels, window, tokenizer settings, one entry
per ONNX variant with its file, sha256 and measured agreement with PyTorch); `tokenizer.json` and
the `model*.onnx` files sit beside it. Loading checks the format version and the checksums of the
files it will use before any work starts. Runtime-only: onnxruntime, tokenizers, numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .choices import DEFAULT_VARIANT, DEVICES, VARIANTS
from .errors import BundleError, NerbatchError
from .features import TextEncoder
from .storage import Remote, copy_to_local, is_uri, local_path, open_remote
from .tagger import Tagger, TaggerOptions, default_stride

BUNDLE_FILE = "bundle.json"
FORMAT_VERSION = 1


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

    def resolve_variant(self, variant: str = "auto", device: str = "cpu") -> str:
        if device not in DEVICES:
            raise BundleError(f"unknown device {device!r}; expected one of {list(DEVICES)}")
        if variant == "auto":
            variant = DEFAULT_VARIANT[device]
        if variant not in VARIANTS:
            raise BundleError(f"unknown variant {variant!r}; expected one of {['auto', *VARIANTS]}")
        if variant not in self.meta["variants"]:
            raise BundleError(
                f"bundle {self.path} has no {variant} variant (it has "
                f"{sorted(self.meta['variants'])})"
            )
        return variant

    def verify(self, variant: str) -> None:
        """Check the tokenizer's and the variant's sha256 against bundle.json."""
        entry = self.meta["variants"][variant]
        for name, expected in (
            (self.meta["tokenizer"]["file"], self.meta["tokenizer"]["sha256"]),
            (entry["file"], entry["sha256"]),
        ):
            file = self.path / name
            if self.remote is not None:
                self._fetch(name, expected)
            if not file.is_file():
                raise BundleError(f"bundle {self.path} is missing {name}")
            actual = sha256_of(file)
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
        encoder = TextEncoder(self.path / tokenizer["file"], word_shapes=tokenizer["word_shapes"])
        vocab = encoder.tokenizer.get_vocab_size()
        if vocab != tokenizer["vocab_size"]:
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
            return ort.InferenceSession(str(file), options, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types: report any of them
            raise BundleError(f"ONNX Runtime cannot load {file}: {e}") from e

    def window(self, max_length: int | None = None, stride: int | None = None) -> tuple[int, int]:
        """Window length (sub-tokens, specials included) and overlap: the given ones, else the
        bundle's; a window other than the bundle's gets the default overlap for its length."""
        max_length = max_length or self.meta["max_length"]
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
        max_length: int | None = None,
        stride: int | None = None,
        threads: int = 0,
        options: TaggerOptions | None = None,
    ) -> Tagger:
        """A Tagger on one ONNX Runtime session. `threads` is the total (0: every core); with
        `options.streams` > 1 each of the concurrent batches runs on threads / streams of them."""
        options = options or TaggerOptions()
        variant = self.resolve_variant(variant, device)
        self.verify(variant)
        encoder = self.encoder()
        try:
            options.check()
        except ValueError as e:
            raise NerbatchError(str(e)) from e
        total = threads or os.cpu_count() or 1
        per_run = threads if options.streams == 1 else max(1, total // options.streams)
        session = self.session(variant, device, per_run)
        max_length, stride = self.window(max_length, stride)
        try:
            return Tagger(
                encoder, self.labels, onnx_logits_fn(session), max_length, stride, options
            )
        except ValueError as e:  # a max_length / stride the user chose: one Error: line
            raise NerbatchError(str(e)) from e


def onnx_logits_fn(session):
    names = {i.name for i in session.get_inputs()}

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = types
        return session.run(None, feed)[0].astype(np.float32, copy=False)

    return logits


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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_file} is not valid JSON: {e}") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{meta_file}: format version {version!r} is not supported by this nerbatch "
            f"(it reads version {FORMAT_VERSION}); export the bundle again or upgrade nerbatch"
        )
    for key in ("bundle_id", "labels", "max_length", "stride", "tokenizer", "variants"):
        if key not in meta:
            raise BundleError(f"{meta_file} lacks the field {key!r}")
    return Bundle(path, meta)


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
