"""Training checkpoints read back: the PyTorch model, its encoder and `nerbatch.json`.

`train` writes a checkpoint; `score` (scoring a checkpoint) and `export` (the PyTorch reference
that every ONNX variant is checked against) read one through this module, so neither depends on
the training code. It does not train, save or convert anything. Torch and transformers are
imported inside the functions: the runtime install does not have them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from .conll import label_scheme, split_tag
from .errors import MissingExtraError, NerbatchError, SchemeError
from .features import TextEncoder
from .tagger import LogitsFn

log = logging.getLogger(__name__)

CHECKPOINT_META = "nerbatch.json"


def require_train_extra() -> None:
    """Raise MissingExtraError naming the first package of the `[train]` extra that is missing."""
    for module in ("torch", "transformers", "seqeval"):
        try:
            __import__(module)
        except ImportError as e:
            raise MissingExtraError(module, "train") from e


def load_checkpoint(path: str | Path, max_length: int | None = None):
    """(model, encoder, meta) of a token classifier: a checkpoint `train` wrote (its
    nerbatch.json gives labels, window and word shapes), or any other Hugging Face token
    classifier with a fast tokenizer, as a local directory (`save_pretrained`, a `Trainer`
    output) or a Hub id. For those, meta comes from the model's config: labels from `id2label`,
    the scheme they are in, no word shapes, the pipeline's words, and a window of `max_length`
    (default: the model's positions, at most 512)."""
    require_train_extra()
    local = Path(path)
    meta_path = local / CHECKPOINT_META
    if meta_path.is_file():
        from transformers import AutoModelForTokenClassification

        meta = json.loads(meta_path.read_text())
        model = AutoModelForTokenClassification.from_pretrained(local)
        model.eval()
        encoder = TextEncoder(local / "tokenizer.json", word_shapes=meta["word_shapes"])
        if max_length is not None:
            meta["max_length"] = max_length
        return model, encoder, meta
    return _load_foreign(str(path), max_length)


def _load_foreign(name: str, max_length: int | None):
    from tokenizers import Tokenizer
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    where = "directory" if Path(name).is_dir() else "Hugging Face Hub id"
    try:
        model = AutoModelForTokenClassification.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:
        # OSError: no such directory or Hub repository (or no network); ValueError/KeyError:
        # a config of an architecture without a token-classification head.
        raise NerbatchError(
            f"cannot load a token classifier from the {where} {name!r}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from e
    model.eval()
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as e:
        raise NerbatchError(f"cannot load the tokenizer of {name!r}: {e}") from e
    if not getattr(hf_tokenizer, "is_fast", False):
        raise NerbatchError(
            f"{name!r} has no fast tokenizer (tokenizer.json); nerbatch needs its exact offsets"
        )
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        log.warning(
            "%s: the model's labels are %s...: its config has no label names, so every label "
            "but none is an entity type of its own; set id2label in config.json (e.g. O, B-PER, "
            "I-PER, ...) for meaningful spans",
            name,
            ", ".join(labels[:3]),
        )
    positions = usable_positions(model.config)
    window = max_length or min(512, positions or 512)
    meta = {
        "labels": labels,
        "scheme": _scheme_of(labels),
        "word_shapes": False,
        "shapes": None,
        "word_rule": "pipeline",
        "max_length": window,
        "base_model": name,
        "architecture": type(model).__name__,
        "train_data": None,
        "foreign": True,
    }
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    return model, TextEncoder(backend, word_shapes=False, word_rule="pipeline"), meta


def _scheme_of(labels: list[str]) -> str:
    """The bundle's scheme: the labels' prefix scheme, or IO when any label has no prefix."""
    try:
        for label in labels:
            split_tag(label)
    except SchemeError:
        return "IO"
    return label_scheme(labels)


def usable_positions(config) -> int | None:
    """The longest input (sub-tokens, specials included) a Hugging Face model config allows:
    max_position_embeddings, less the padding offset of RoBERTa-style models (their positions
    start after pad_token_id, so 514 positions hold 512); None if the config has no such limit."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(config, "model_type", None) in ROBERTA_STYLE:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


ROBERTA_STYLE = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}


def torch_logits_fn(model) -> LogitsFn:
    """A tagger LogitsFn running a PyTorch token classifier."""
    import inspect

    import torch

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if takes_types:
            inputs["token_type_ids"] = torch.from_numpy(types)
        with torch.inference_mode():
            return model(**inputs).logits.float().numpy()

    return logits
