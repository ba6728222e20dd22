"""Training checkpoints read back: the PyTorch model, its encoder and `nerbatch.json`.

`train` writes a checkpoint; `score` (scoring a checkpoint) and `export` (the PyTorch reference
that every ONNX variant is checked against) read one through this module, so neither depends on
the training code. It does not train, save or convert anything. Torch and transformers are
imported inside the functions: the runtime install does not have them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import MissingExtraError, NerbatchError
from .features import TextEncoder
from .tagger import LogitsFn

CHECKPOINT_META = "nerbatch.json"


def require_train_extra() -> None:
    """Raise MissingExtraError naming the first package of the `[train]` extra that is missing."""
    for module in ("torch", "transformers", "seqeval"):
        try:
            __import__(module)
        except ImportError as e:
            raise MissingExtraError(module, "train") from e


def load_checkpoint(path: str | Path):
    """(model, encoder, meta) of a checkpoint written by `train`."""
    require_train_extra()
    from transformers import AutoModelForTokenClassification

    path = Path(path)
    meta_path = path / CHECKPOINT_META
    if not meta_path.is_file():
        raise NerbatchError(
            f"{path} is not a nerbatch checkpoint: no {CHECKPOINT_META} (train one with "
            "`nerbatch train`)"
        )
    meta = json.loads(meta_path.read_text())
    model = AutoModelForTokenClassification.from_pretrained(path)
    model.eval()
    encoder = TextEncoder(path / "tokenizer.json", word_shapes=meta["word_shapes"])
    return model, encoder, meta


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
