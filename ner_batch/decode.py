"""Word labels from word label probabilities: each word's most probable label ("argmax"), or
the most probable label sequence that the labels' scheme allows ("viterbi").

Argmax can give sequences no annotator would write (`O I-PER`, `B-PER I-LOC`, an `E-` with
nothing open); the span decoder then repairs them leniently, as conlleval does. Viterbi instead
searches the valid sequences only, maximising the product of the words' probabilities (the
words are scored independently, so the only coupling is which label may follow which). Where
the argmax sequence is already valid it is that maximum, so Viterbi runs only on texts where
argmax breaks the scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .choices import DECODERS
from .conll import label_scheme, model_label

SCHEMES = ("IOB1", "IOB2", "BIOES", "BILOU", "IO")
# log(0) stand-in: probabilities rounded to 0 in float32 stay comparable, never -inf.
_FLOOR = np.float32(1e-30)


@dataclass(frozen=True)
class Transitions:
    """Which label may open a sequence, follow another, and close a sequence (all bool)."""

    start: np.ndarray  # (n_labels,)
    follow: np.ndarray  # (n_labels, n_labels): [previous, next]
    end: np.ndarray  # (n_labels,)

    @property
    def constrains(self) -> bool:
        return not (self.start.all() and self.follow.all() and self.end.all())


def transitions(labels: Sequence[str], scheme: str | None = None) -> Transitions:
    """The scheme's allowed transitions between `labels` (a model's labels in id order).

    `scheme` is the one the model was trained in (a bundle's or checkpoint's `scheme`); None or
    "auto" infers it from the prefixes ("IOB2" for B-/I- labels: IOB1 looks the same, so a
    model trained in IOB1 must say so). IOB2: I-X only after B-X or I-X. IOB1: I-X anywhere,
    B-X only right after an X entity. BIOES/BILOU: I-/E- (L-) only inside an open entity of
    their type, which E- or S- (L-, U-) closes; O, B- and S- only where none is open; a
    sequence ends with none open. IO (no prefixes): no constraint.
    """
    if scheme in (None, "auto"):
        scheme = label_scheme(labels)
    scheme = scheme.upper()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {list(SCHEMES)}")
    parsed = [model_label(label) for label in labels]
    role = np.array([r for r, _ in parsed])
    kind = np.array([t for _, t in parsed])
    n = len(labels)
    everything = np.ones(n, dtype=bool)
    if scheme == "IO" or not (role != "inside").any():
        return Transitions(everything, np.ones((n, n), dtype=bool), everything)
    same_type = kind[:, None] == kind[None, :]
    inside_prev = np.isin(role, ("begin", "inside"))[:, None]  # (n, 1): an entity stays open
    continues = np.isin(role, ("inside", "end"))[None, :]  # (1, n): needs an open entity
    if scheme == "IOB1":
        begins = (role == "begin")[None, :]
        follow = ~begins | (inside_prev & same_type)
        start = role != "begin"
        return Transitions(start, follow, everything)
    follow = np.where(continues, inside_prev & same_type, True)
    if scheme in ("BIOES", "BILOU"):
        follow &= continues | ~inside_prev  # O, B-, S- need the entity before closed
        end = ~np.isin(role, ("begin", "inside"))
    else:
        end = everything
    start = ~continues[0]
    return Transitions(start, follow, end)


def is_valid(path: np.ndarray, rules: Transitions, restarts: np.ndarray | None = None) -> bool:
    """Whether label ids `path` (n_words,) are a sequence the rules allow; `restarts` (n_words,)
    marks words that open a new sequence (the one before them must be able to end one)."""
    if not len(path):
        return True
    ok_follow = rules.follow[path[:-1], path[1:]]
    if restarts is not None:
        boundary = restarts[1:]
        ok_follow = np.where(boundary, rules.end[path[:-1]] & rules.start[path[1:]], ok_follow)
        if restarts[0] and not rules.start[path[0]]:
            return False
    return bool(rules.start[path[0]] and rules.end[path[-1]] and ok_follow.all())


def viterbi(
    probs: np.ndarray, rules: Transitions, restarts: np.ndarray | None = None
) -> np.ndarray:
    """The most probable allowed label sequence (n_words,) for word probabilities (n_words,
    n_labels); `restarts` as in `is_valid`. Ties go to the lower label id, as argmax's do."""
    n, n_labels = probs.shape
    if not n:
        return np.zeros(0, dtype=np.int64)
    scores = np.log(np.maximum(probs, _FLOOR)).astype(np.float64)
    forbidden = np.float64(-np.inf)
    step = np.where(rules.follow, 0.0, forbidden)  # (prev, next)
    restart = np.where(rules.end[:, None] & rules.start[None, :], 0.0, forbidden)
    back = np.zeros((n, n_labels), dtype=np.int64)
    columns = np.arange(n_labels)
    delta = scores[0] + np.where(rules.start, 0.0, forbidden)
    for t in range(1, n):
        moves = delta[:, None] + (restart if restarts is not None and restarts[t] else step)
        best = moves.argmax(0)
        back[t] = best
        delta = moves[best, columns] + scores[t]
    delta = delta + np.where(rules.end, 0.0, forbidden)
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(delta.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def decode_words(
    probs: np.ndarray,
    rules: Transitions,
    method: str = "argmax",
    restarts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(label id, its probability) per word from word probabilities (n_words, n_labels)."""
    labels = probs.argmax(-1)
    if method == "viterbi" and rules.constrains and not is_valid(labels, rules, restarts):
        labels = viterbi(probs, rules, restarts)
    elif method not in DECODERS:
        raise ValueError(f"unknown decoding {method!r}; expected one of {list(DECODERS)}")
    chosen = np.take_along_axis(probs, labels[:, None], -1)[:, 0]
    return labels, chosen
