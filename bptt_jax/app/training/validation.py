r"""How well a model does: validation loss and accuracy over ALL held-out text, and
the memoryless baselines (the ``--verify-every`` referee is :mod:`.verify`).

Every held-out file is read from the zero state with its state carried through the
whole file (:func:`score`): the files, longest first, are dealt to ``rows`` parallel
rows and read ``segment`` characters per jitted forward call
(:func:`bptt_jax.core.deep.deep_forward_core` with the rows' ``mask``); a row whose file
ends takes the next file at the next segment, its state set to zero there. The loss is

.. math::

    \bar E = \frac{\sum_{\text{files}} \sum_t -\log \hat y_t[y_t]}{\#\text{targets}}

in nats per character (bits: :math:`\bar E / \ln 2`, perplexity :math:`e^{\bar E}`).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...core.deep import deep_forward_core
from ...core.losses import log_softmax
from ...core.options import DEFAULT, Options
from ...core.params import DeepParams, Params, to_deep
from ..io.corpus import TOKEN_TYPES, Corpus, file_spans
from .models import zeros_like_state

#: Parallel rows and characters per forward call of :func:`score`: on the 2-core CPU
#: the whole standard-library held-out set (539,454 characters, 39 files, the longest
#: 106,216) is read in about 210 calls.
ROWS, SEGMENT = 8, 512


class HeldOut(NamedTuple):
    """The text an evaluation scores: one ``(xs, ys)`` pair per file."""

    xs: tuple  # per file (n_f,) int32 inputs
    ys: tuple  # per file (n_f,) int32 targets
    names: tuple  # per file
    chars: int  # targets scored
    total: int  # targets in all the held-out files (more than ``chars`` when capped)

    @property
    def capped(self) -> bool:
        return self.chars < self.total

    def describe(self) -> str:
        what = (
            f"{self.chars:,} held-out characters in {len(self.xs)} files, each from a zero state"
        )
        if self.capped:
            what += f" (capped by --val-chars: {self.total:,} characters in all)"
        return what


def held_out(ids, labels, starts, names, max_chars: int | None = None) -> HeldOut:
    """The files of a concatenation as :class:`HeldOut`, whole files in order up to
    ``max_chars`` targets (the last one cut there).

    Args:
      ids: ``(N,)`` int32, the files one after another; ``starts``: where each begins.
      labels: ``(N,)`` token types (``tag``: ``y_t`` of ``x_t``), or ``None`` (``lm``:
        ``y_t = x_{t+1}`` within the file, so a file of n characters has n - 1 targets).
      names: the files' names, as many as ``starts``.
      max_chars: the most targets scored, or ``None`` (all).
    """
    shift = 1 if labels is None else 0
    xs, ys, kept, total, scored = [], [], [], 0, 0
    for (a, b), name in zip(file_spans(starts, len(ids)), _names(names, starts), strict=True):
        n = b - a - shift
        if n < 1:
            continue
        total += n
        room = n if max_chars is None else min(n, max_chars - scored)
        if room < 1:
            continue
        scored += room
        xs.append(np.asarray(ids[a : a + room], np.int32))
        ys.append(np.asarray(ids[a + 1 : a + 1 + room] if labels is None
                             else labels[a : a + room], np.int32))  # fmt: skip
        kept.append(name)
    return HeldOut(tuple(xs), tuple(ys), tuple(kept), scored, total)


def _names(names, starts) -> list[str]:
    names = list(names)
    return names if len(names) == len(starts) else [f"file {i + 1}" for i in range(len(starts))]


@functools.partial(jax.jit, static_argnames=("cell",))
def _segment_core(params: DeepParams, xs, ys, mask, fresh, h, *, cell):
    """One forward call: rows with ``fresh`` start from zero; ``(h, nll (R,), pred (R, S))``."""
    h = jax.tree.map(lambda a: jnp.where(fresh[None, :, None], 0, a), h)  # (L*D, R, H) each
    _, logits, h = deep_forward_core(params, xs, h, mask, options=Options(cell=cell))
    nll = -jnp.take_along_axis(log_softmax(logits), ys[..., None], axis=-1)[..., 0]
    return h, jnp.sum(jnp.where(mask, nll, 0), axis=1), jnp.argmax(logits, -1).astype(jnp.int32)


class Scores(NamedTuple):
    nll: np.ndarray  # (F,) nats summed over each file's targets
    counts: np.ndarray  # (F,) targets per file
    confusion: np.ndarray | None  # (C, C) [true, predicted] counts, or None


def score(
    params: Params | DeepParams,
    held: HeldOut,
    *,
    cell=DEFAULT.cell,
    num_classes: int | None = None,
    rows: int = ROWS,
    segment: int = SEGMENT,
) -> Scores:
    """Every file of ``held`` from the zero state, its state carried through the file.

    Args:
      params: any model (the seed's :class:`Params` run as a one-layer DeepParams).
      held: from :func:`held_out`.
      cell: the model's cell (:func:`~bptt_jax.app.training.config.model_cell`; the
        seed's tanh cell by default); its state is carried, every part of it.
      num_classes: C; when given, the confusion table of the argmax predictions.
      rows, segment: parallel rows and characters per call. A bidirectional model
        reads each file in one call (its backward direction starts at the file's end).
    """
    deep = to_deep(params)
    if deep.bidirectional:  # one call per row and file: the segment holds the longest file
        longest = max((len(x) for x in held.xs), default=1)
        segment = -(-longest // segment) * segment
    R, S = rows, segment
    h = zeros_like_state(cell, deep, R)
    queue = deque(sorted(range(len(held.xs)), key=lambda i: -len(held.xs[i])))
    row_file, row_pos, calls = [-1] * R, [0] * R, []
    while True:
        fresh = np.zeros(R, bool)
        for r in range(R):
            if row_file[r] < 0 or row_pos[r] >= len(held.xs[row_file[r]]):
                row_file[r], row_pos[r] = (queue.popleft(), 0) if queue else (-1, 0)
                fresh[r] = True
        if all(f < 0 for f in row_file):
            break
        X, Y, M = np.zeros((R, S), np.int32), np.zeros((R, S), np.int32), np.zeros((R, S), bool)
        for r, (f, p) in enumerate(zip(row_file, row_pos, strict=True)):
            if f >= 0:
                n = min(S, len(held.xs[f]) - p)
                X[r, :n], Y[r, :n], M[r, :n] = held.xs[f][p : p + n], held.ys[f][p : p + n], True
        h, nll, pred = _segment_core(deep, X, Y, M, fresh, h, cell=cell)
        calls.append((tuple(row_file), tuple(row_pos), nll, pred if num_classes else None))
        row_pos = [p + S for p in row_pos]
    return _collect(held, calls, num_classes, S)


def _collect(held: HeldOut, calls, num_classes: int | None, S: int) -> Scores:
    """The device results of :func:`score`'s calls, per file and as a confusion table."""
    fetched = jax.device_get([(nll, pred) for _, _, nll, pred in calls])
    F = len(held.xs)
    nll = np.zeros(F)
    confusion = None if not num_classes else np.zeros((num_classes, num_classes), np.int64)
    for (files, positions, _, _), (row_nll, pred) in zip(calls, fetched, strict=True):
        for r, (f, p) in enumerate(zip(files, positions, strict=True)):
            if f < 0:
                continue
            nll[f] += float(row_nll[r])
            if confusion is not None:
                n = min(S, len(held.ys[f]) - p)
                np.add.at(confusion, (held.ys[f][p : p + n], pred[r, :n]), 1)
    counts = np.array([len(y) for y in held.ys], np.int64)
    return Scores(nll, counts, confusion)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean nats per character
    accuracy: float | None = None  # tag: fraction of characters labelled right
    per_class: dict[str, float | None] = field(default_factory=dict)  # tag: accuracy per class
    counts: dict[str, int] = field(default_factory=dict)  # tag: characters per class
    chars: int = 0  # characters scored
    file_bits: tuple = ()  # bits/char of each file scored
    confusion: tuple | None = None  # tag: [true][predicted] counts

    @property
    def bits(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # no OverflowError

    def spread(self) -> str:
        """``files min/median/max`` bits/char, or ``""`` with fewer than two files."""
        b = self.file_bits
        if len(b) < 2:
            return ""
        return (f"{len(b)} files {min(b):.2f}/{statistics.median(b):.2f}/{max(b):.2f} "
                "bits/char min/median/max")  # fmt: skip

    def line(self, step: int) -> str:
        """The validation line of step ``step``, as ``train`` prints it."""
        line = (
            f"step {step}: val loss {self.loss:.4f} nats/char, {self.bits:.3f} bits/char, "
            f"perplexity {self.perplexity:.2f}"
        )
        if self.accuracy is not None:
            line += f", accuracy {self.accuracy:.1%}"
        if self.spread():
            line += f" ({self.spread()})"
        return line


def evaluation(scores: Scores, task: str) -> Evaluation:
    """The :class:`Evaluation` of :func:`score`'s results."""
    chars = int(scores.counts.sum())
    loss = float(scores.nll.sum() / max(chars, 1))
    real = scores.counts > 0
    file_bits = tuple(float(b) for b in scores.nll[real] / scores.counts[real] / math.log(2))
    if task != "tag" or scores.confusion is None:
        return Evaluation(loss=loss, chars=chars, file_bits=file_bits)
    m = scores.confusion
    per_class, counts = {}, {}
    for c, name in enumerate(TOKEN_TYPES):
        counts[name] = int(m[c].sum())
        per_class[name] = float(m[c, c] / m[c].sum()) if m[c].sum() else None
    accuracy = float(np.trace(m) / max(m.sum(), 1))
    confusion = tuple(tuple(int(v) for v in row) for row in m)
    return Evaluation(loss, accuracy, per_class, counts, chars, file_bits, confusion)


def evaluate(params, held: HeldOut, task: str, cell=DEFAULT.cell) -> Evaluation:
    """Validation loss (and, for ``tag``, accuracy per class) of ``params`` (a model of
    ``cell``) on ``held``."""
    C = len(TOKEN_TYPES) if task == "tag" else None
    return evaluation(score(params, held, cell=cell, num_classes=C), task)


def baselines(corpus: Corpus, ys_val: np.ndarray, xs_val: np.ndarray) -> dict[str, float]:
    """What a model without memory gets on the same validation characters.

    ``unigram_bits``: the cross-entropy (bits/char) of the training text's
    unigram distribution of the targets (add-one smoothed): characters for
    ``lm``, token types for ``tag``. ``tag`` also: the accuracy of always
    answering the most frequent class, and of answering each character's most
    frequent class in the training text.
    """
    K = corpus.vocab.size
    if corpus.task == "lm":
        p = (np.bincount(corpus.train_ids, minlength=K) + 1.0) / (len(corpus.train_ids) + K)
        return {"unigram_bits": float(-np.mean(np.log2(p[ys_val])))}
    C = len(TOKEN_TYPES)
    labels = corpus.train_labels
    p = (np.bincount(labels, minlength=C) + 1.0) / (len(labels) + C)
    majority = int(np.argmax(np.bincount(labels, minlength=C)))
    table = np.zeros((K, C), np.int64)
    np.add.at(table, (corpus.train_ids, labels), 1)
    best = np.where(table.sum(1) > 0, table.argmax(1), majority)  # (K,)
    return {
        "unigram_bits": float(-np.mean(np.log2(p[ys_val]))),
        "majority": float(np.mean(ys_val == majority)),
        "majority_class": TOKEN_TYPES[majority],
        "char_unigram": float(np.mean(best[xs_val] == ys_val)),
    }
