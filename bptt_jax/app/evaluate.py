r"""How well a model does: validation loss and accuracy, the memoryless baselines,
and the ``--verify-every`` referee (hand gradients against ``jax.grad``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ..api.referees import autodiff_bptt
from ..core.params import DeepParams, Params
from ..core.step import hand_bptt
from ..referees.tolerances import AUTODIFF, max_relative_error
from .config import TrainingError
from .data import TOKEN_TYPES, Corpus
from .models import logits_core


@functools.partial(jax.jit, static_argnames=("activation",))
def _evaluate_core(params: Params | DeepParams, xs: jax.Array, ys: jax.Array, activation: str):
    z = logits_core(params, xs, activation)  # (S, L, C), every row from a zero state
    log_yhat = jax.nn.log_softmax(z, axis=-1)
    nll = -jnp.take_along_axis(log_yhat, ys[..., None], axis=-1)[..., 0]  # (S, L)
    return jnp.mean(nll), jnp.argmax(z, axis=-1)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean nats per character
    accuracy: float | None = None  # tag: fraction of characters labelled right
    per_class: dict[str, float | None] = field(default_factory=dict)  # tag: accuracy per class
    counts: dict[str, int] = field(default_factory=dict)  # tag: characters per class

    @property
    def bits(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # no OverflowError

    def line(self, step: int) -> str:
        """The validation line of step ``step``, as ``train`` prints it."""
        line = (
            f"step {step}: val loss {self.loss:.4f} nats/char, {self.bits:.3f} bits/char, "
            f"perplexity {self.perplexity:.2f}"
        )
        if self.accuracy is not None:
            line += f", accuracy {self.accuracy:.1%}"
        return line


def evaluate(
    params: Params | DeepParams, xs: np.ndarray, ys: np.ndarray, task: str,
    activation: str = "tanh",
) -> Evaluation:  # fmt: skip
    """Validation loss (and, for ``tag``, accuracy per class) of ``params``."""
    loss, pred = _evaluate_core(params, xs, ys, activation)
    if task != "tag":
        return Evaluation(loss=float(loss))
    pred, ys = np.asarray(pred), np.asarray(ys)
    per_class, counts = {}, {}
    for c, name in enumerate(TOKEN_TYPES):
        mask = ys == c
        counts[name] = int(mask.sum())
        per_class[name] = float((pred[mask] == c).mean()) if mask.any() else None
    return Evaluation(float(loss), float((pred == ys).mean()), per_class, counts)


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


def verify_gradients(
    params: Params | DeepParams,
    xs: ArrayLike,
    ys: ArrayLike,
    h0: ArrayLike,
    grad_fn: Callable | None = None,
    *,
    tol: float | None = None,
    activation: str = "tanh",
) -> dict[str, float]:
    """Hand gradients vs ``jax.grad`` on one batch: max relative error per parameter.

    Raises:
      TrainingError: if any error exceeds ``tol`` (default: the tolerance of
        ``bptt-jax check`` for the parameters' dtype; with bf16 products the
        caller passes ``AUTODIFF["bfloat16"]``).
    """
    params, xs, ys, h0 = jax.tree.map(jnp.asarray, (params, xs, ys, h0))  # one device
    E, grads, _, _ = (grad_fn or hand_bptt)(params, xs, ys, h0, None)
    E_ad, grads_ad = autodiff_bptt(params, xs, ys, h0, activation=activation)
    if tol is None:
        tol = AUTODIFF[str(params.V.dtype)]
    errors = {"E": max_relative_error(E, E_ad)}
    for (path, g), g_ad in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                               jax.tree.leaves(grads_ad), strict=True):  # fmt: skip
        name = jax.tree_util.keystr(path, simple=True, separator="/")  # "U", "layers/0/W"
        errors[name] = max_relative_error(g, g_ad)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        raise TrainingError(
            "hand BPTT disagrees with jax.grad on the current batch: "
            + ", ".join(f"{k} rel. error {v:.2e}" for k, v in bad.items())
            + f" (tolerance {tol:.0e}); training stopped, no step applied with these gradients"
        )
    return errors
