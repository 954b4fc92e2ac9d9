"""The ``--verify-every`` referee: the hand gradients of one training batch against
``jax.grad`` (:func:`verify_gradients`); training stops on a disagreement.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from ...core.cells import cell_named
from ...core.options import Options
from ...core.params import DeepParams, Params, as_layers, like
from ...core.step import hand_bptt
from ...referees.autodiff import deep_value_and_grad
from ...referees.tolerances import AUTODIFF, VERIFY_PRECISION, max_relative_error
from .config import TrainingError


def _zero_reset_split(xs, ys, h0, resets):
    """The chunk of :func:`bptt_jax.referees.autodiff.zero_reset_loss` as two padded
    batches whose losses add up to it, for a state pytree (the LSTM's ``(h, c)``; that
    loss zeroes one array): each row cut at its first reset, the part before it from
    ``h0``, the rest shifted to the front and run from zeros with its resets. Returns
    ``[(xs, ys, h0, mask, resets), ...]``; no autodiff here: the referee differentiates
    each."""
    T = xs.shape[1]
    t = jnp.arange(T)
    first = jnp.where(jnp.any(resets, axis=1), jnp.argmax(resets, axis=1), T)  # (B,)
    idx = jnp.minimum(t + first[:, None], T - 1)  # (B, T): the rest, shifted to the front
    shift = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    real = t < (T - first)[:, None]
    zeros = jax.tree.map(jnp.zeros_like, h0)
    return [(xs, ys, h0, t < first[:, None], None),
            (shift(xs), shift(ys), zeros, real, shift(resets) & real)]  # fmt: skip


def _referee(params, xs, ys, h0, resets, cell):
    """``(E, grads like params)`` by ``jax.grad`` of the chunk's loss
    (:func:`bptt_jax.core.deep.deep_loss_core`, any cell and state pytree), with
    documents starting from zero where ``resets`` says (:func:`_zero_reset_split`)."""
    deep, h0 = as_layers(params, h0)
    options = Options(cell=cell, precision=lax.Precision(VERIFY_PRECISION))
    parts = [(xs, ys, h0, None, None)] if resets is None else _zero_reset_split(xs, ys, h0, resets)
    E, grads = 0.0, None
    for part in parts:  # the gradient of the sum: the sum of the parts' gradients
        E_part, g = deep_value_and_grad(deep, *part, options=options)
        E, grads = E + E_part, g if grads is None else jax.tree.map(jnp.add, grads, g)
    return E, like(params, grads)[0]


def _hand(cell):
    """The hand BPTT of ``cell`` on any model and state (the training step's)."""

    def grad_fn(params, xs, ys, h0, resets=None):
        deep, h = as_layers(params, h0)
        E, grads, dh0, h_T = hand_bptt(deep, xs, ys, h, resets, Options(cell=cell))
        return E, *like(params, grads, dh0, h_T)

    return grad_fn


def verify_gradients(
    params: Params | DeepParams,
    xs: ArrayLike,
    ys: ArrayLike,
    h0: ArrayLike,
    grad_fn: Callable | None = None,
    *,
    tol: float | None = None,
    activation: str = "tanh",
    resets: ArrayLike | None = None,
    cell: str = "rnn",
) -> dict[str, float]:
    """Hand gradients vs ``jax.grad`` on one batch: max relative error per parameter.

    ``resets``: the chunk's ``(B, T)`` document starts, where the state restarts from
    zero; both sides then take them (the referee:
    :func:`bptt_jax.referees.autodiff.zero_reset_loss`), so the check covers the
    step the training runs. ``None`` or none set: no resets. ``cell``, ``activation``:
    the model's (:func:`bptt_jax.core.cells.cell_named`); ``h0`` is the cell's state
    (the LSTM's pair ``(h, c)``). ``grad_fn``: the hand BPTT of that cell by default.

    Raises:
      TrainingError: if any error exceeds ``tol`` (default: the tolerance of
        ``bptt-jax check`` for the parameters' dtype; with bf16 products the
        caller passes ``AUTODIFF["bfloat16"]``).

    Both sides compute at ``VERIFY_PRECISION`` (``"highest"``): the referee by its
    argument, ``grad_fn`` (any function, whose products default to JAX's precision)
    under ``jax.default_matmul_precision``, so ``tol`` means the same on every backend.
    """
    params, xs, ys, h0 = jax.tree.map(jnp.asarray, (params, xs, ys, h0))  # one device
    resets = None if resets is None or not np.any(resets) else jnp.asarray(resets)
    model_cell = cell_named(cell, activation)
    with jax.default_matmul_precision(VERIFY_PRECISION):
        E, grads, _, _ = (grad_fn or _hand(model_cell))(params, xs, ys, h0, resets)
    E_ad, grads_ad = _referee(params, xs, ys, h0, resets, model_cell)
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
