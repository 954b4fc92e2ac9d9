r"""One training step with the hand gradients: the update every trainer in the package applies.

.. math::

    E, \nabla E, h_T = \mathrm{grad\_fn}(\theta, x, y, h_0, \mathrm{resets}),\qquad
    g = \nabla E / n,\qquad
    \theta := \theta + \mathrm{tx}(g)

``grad_fn`` is the hand BPTT (:func:`hand_bptt`: :func:`bptt_jax.core.deep.deep_bptt_core`
for any model, the seed's :class:`Params` as its one-layer case; possibly with options
bound, or its data-parallel twin), never ``jax.grad``; ``tx`` is an optax
transformation (clipping chained before the optimizer); ``n`` is what the loss
is a mean over (``B T`` characters for the language model, ``B`` sequences for
the delay task). Pure: no I/O, no globals; the callers jit it (the app's loop
once per setting, the lab's delay trainer inside its ``lax.scan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .deep import deep_bptt_core
from .options import DEFAULT, Options
from .params import DeepParams, Params, as_layers, like


def hand_bptt(params: Params | DeepParams, xs, ys, h0, resets=None, options: Options = DEFAULT):
    r"""The hand BPTT of any model, with per-step resets *to the zero state*.

    .. math::

        h^{\mathrm{in}}_t = \begin{cases} h_0 & t = 1 \\
            0 & \mathrm{resets}[b, t] \\ h_{t-1} & \text{otherwise} \end{cases}

    so a document that starts inside the chunk starts from zero while the rest of
    the row continues the carried state ``h0`` (the training streams' case; the
    public ``bptt(resets=)`` restores ``h0`` instead).

    Args:
      params: :class:`Params` (``h0``, ``h_T``, ``dh0`` ``(B, H)``) or
        :class:`DeepParams` (``(L*D, B, H)``).
      xs, ys: ``(B, T)`` ids (``ys`` may be ``(B, T, C)`` probabilities).
      resets: ``(B, T)`` bool or ``None`` (no resets).
      options: the cell and the backward's options
        (:class:`~bptt_jax.core.options.Options`).

    Returns:
      ``(E, grads like params, dh0, h_T)``; ``dh0`` = :math:`U^\top\delta_1` (no
      gradient flows into the zero a reset restores).
    """
    deep, h = as_layers(params, h0)
    E, grads, dh0, h_T = deep_bptt_core(deep, xs, ys, h, resets=resets, options=options,
                                        zero_resets=True)  # fmt: skip
    return E, *like(params, grads, dh0, h_T)


class StepResult(NamedTuple):
    params: Params | DeepParams  # θ after the update (the old θ if skipped)
    opt_state: Any  # the optimizer state after it (the old one if skipped)
    h_T: jax.Array  # (B, H) / (L*D, B, H) the final hidden state (zeros if skipped)
    loss: jax.Array  # () E / n
    grads: Params | DeepParams  # ∇E / n, before clipping
    finite: jax.Array  # () bool: loss, gradients and new θ all finite


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite, as a () bool array."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(
    grad_fn: Callable,
    tx: optax.GradientTransformation,
    params: Params,
    opt_state: Any,
    xs: jax.Array,
    ys: jax.Array,
    h0: jax.Array,
    resets: jax.Array | None = None,
    *,
    n: int,
    skip_nonfinite: bool = True,
) -> StepResult:
    r"""Hand gradients, their mean over ``n``, then ``tx``'s update.

    Args:
      grad_fn: ``(params, xs, ys, h0, resets) -> (E, grads, dh0, h_T)``, the hand
        BPTT (:func:`hand_bptt` or a partial of it).
      tx: the optax transformation (clipping, then the optimizer).
      params, opt_state: the current parameters and ``tx``'s state.
      xs: ``(B, T)`` ids; ys: ``(B, T)`` ids or ``(B, T, C)`` soft labels.
      h0: ``(B, H)`` (``(L*D, B, H)`` for a DeepParams) the state the chunk starts from.
      resets: ``(B, T)`` bool, True where a document starts (the state entering
        that step is zero), or ``None``.
      n: the loss and gradients are divided by it (a Python int).
      skip_nonfinite: when the loss, a gradient or a new parameter is not
        finite, return the old parameters and optimizer state and zeros for
        ``h_T`` (the update is not applied). ``False`` applies it anyway.

    Returns:
      :class:`StepResult`.
    """
    E, grads, _, h_T = grad_fn(params, xs, ys, h0, resets)
    loss = E / n
    grads = jax.tree.map(lambda g: g / n, grads)
    # optax mixes Python floats with its int32 step count (Adam's bias
    # correction, schedules); allow that inside optax only, whatever the
    # caller's promotion mode (the tests run everything else strict).
    with jax.numpy_dtype_promotion("standard"):
        updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if not skip_nonfinite:
        return StepResult(new_params, new_opt_state, h_T, loss, grads, jnp.isfinite(loss))
    finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(new_params)

    def keep(new, old):
        return jnp.where(finite, new, old)

    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    h_T = jax.tree.map(lambda h: jnp.where(finite, h, jnp.zeros_like(h)), h_T)
    return StepResult(params, opt_state, h_T, loss, grads, finite)
