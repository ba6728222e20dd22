"""The transformers `Trainer` that `train` runs: its evaluation scores dev the way `score` does.

`DevTrainer.evaluate` ignores the Trainer's eval loop (sub-token loss on padded batches) and calls
a `dev_metrics(model)` function instead (seqeval on gold tokens, from raw text), recording one row
per evaluation: the epoch, training loss and seconds since the previous one, dev P/R/F1. The
returned `eval_f1` is what `load_best_model_at_end` picks the best epoch by. It does not build
data, models or arguments: that is `train.py`, the only module that imports this one, because
importing it imports transformers and torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from transformers import Trainer

# A model -> {"precision", "recall", "f1", "per_type"} on dev.
DevMetricsFn = Callable[[object], dict]


class DevTrainer(Trainer):
    """A Trainer whose every evaluation appends a record to `epochs` (the records of metrics.json,
    plus the bookkeeping keys `log_index` and `ended` that `train` removes)."""

    def __init__(
        self,
        *args,
        dev_metrics: DevMetricsFn,
        epochs: list[dict] | None = None,
        average_from: float | None = None,
        **kwargs,
    ):
        """`average_from`: the weights at the end of every epoch from this one on (evaluations
        at `state.epoch >= average_from`) are summed, for `averaged_state`."""
        super().__init__(*args, **kwargs)
        self.dev_metrics = dev_metrics
        self.epochs: list[dict] = [] if epochs is None else epochs
        self.started = time.monotonic()  # reset when training starts (see `train`)
        self.average_from = average_from
        self._sum: dict | None = None
        self.averaged_epochs: list[float] = []

    def train(self, *args, **kwargs):
        # The first epoch's train_seconds count from here, not from the Trainer's construction.
        self.started = time.monotonic()
        return super().train(*args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict:
        history = self.state.log_history
        previous = self.epochs[-1] if self.epochs else {"log_index": 0, "ended": self.started}
        losses = [h["loss"] for h in history[previous["log_index"] :] if "loss" in h]
        record = {
            "epoch": round(self.state.epoch or 0, 3),
            "step": self.state.global_step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "train_seconds": round(time.monotonic() - previous["ended"], 1),
        }
        if self.average_from is not None and (self.state.epoch or 0) >= self.average_from - 1e-6:
            self._add_to_average()
        dev_started = time.monotonic()
        dev = self.dev_metrics(self.model)
        record.update(
            dev_precision=dev["precision"],
            dev_recall=dev["recall"],
            dev_f1=dev["f1"],
            dev_per_type=dev["per_type"],
            dev_seconds=round(time.monotonic() - dev_started, 1),
            log_index=len(history),
            ended=time.monotonic(),
        )
        self.epochs.append(record)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in dev.items() if k != "per_type"}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    def _add_to_average(self) -> None:
        import torch

        with torch.no_grad():
            state = {k: v.detach().to("cpu", torch.float32) for k, v in self._floats().items()}
            if self._sum is None:
                self._sum = {k: v.clone() for k, v in state.items()}
            else:
                for k, v in state.items():
                    self._sum[k] += v
        self.averaged_epochs.append(round(self.state.epoch or 0, 3))

    def _floats(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def averaged_state(self) -> dict | None:
        """The mean of the summed epochs' floating-point weights (None if none was summed), in
        the model's dtypes, for `model.load_state_dict(..., strict=False)`."""
        if self._sum is None:
            return None
        n = len(self.averaged_epochs)
        floats = self._floats()
        return {k: (v / n).to(floats[k].dtype) for k, v in self._sum.items()}
