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

from ...api.referees import autodiff_bptt
from ...core.cell import RNNCell
from ...core.options import Options
from ...core.params import DeepParams, Params, as_layers, like
from ...core.step import hand_bptt
from ...referees.autodiff import zero_reset_value_and_grad
from ...referees.tolerances import AUTODIFF, VERIFY_PRECISION, max_relative_error
from .config import TrainingError


def _zero_reset_referee(params, xs, ys, h0, resets, activation: str):
    """``(E, grads like params)`` by ``jax.grad`` of the chunk's loss with documents
    starting from zero (:func:`bptt_jax.referees.autodiff.zero_reset_loss`)."""
    deep, h0 = as_layers(params, h0)
    options = Options(cell=RNNCell(activation), precision=lax.Precision(VERIFY_PRECISION))
    E, grads = zero_reset_value_and_grad(deep, xs, ys, h0, resets, options=options)
    return E, like(params, grads)[0]


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
) -> dict[str, float]:
    """Hand gradients vs ``jax.grad`` on one batch: max relative error per parameter.

    ``resets``: the chunk's ``(B, T)`` document starts, where the state restarts from
    zero; both sides then take them (the referee:
    :func:`bptt_jax.referees.autodiff.zero_reset_loss`), so the check covers the
    step the training runs. ``None`` or none set: no resets.

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
    with jax.default_matmul_precision(VERIFY_PRECISION):
        E, grads, _, _ = (grad_fn or hand_bptt)(params, xs, ys, h0, resets)
    if resets is None:
        E_ad, grads_ad = autodiff_bptt(
            params, xs, ys, h0, activation=activation, precision=VERIFY_PRECISION
        )
    else:
        E_ad, grads_ad = _zero_reset_referee(params, xs, ys, h0, resets, activation)
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
