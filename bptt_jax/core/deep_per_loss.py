r"""The per-loss form for stacked, bidirectional, padded RNNs (``docs/math.md`` §5, §7).

For each loss :math:`E_t` the hand deep backward pass of
:mod:`bptt_jax.core.deep` runs with the output residual restricted to step t,
:math:`r_{t'} = 0` for :math:`t' \ne t`, which gives
:math:`\delta_k^{(t),\ell,d} = \partial E_t/\partial s_k^{\ell,d}` for every
step k, layer :math:`\ell` and direction d:

.. math::

    \delta_k^{(t),L} &= (V^\top r_t\,[k = t] + U^{L\top}
        \delta_{k\pm1}^{(t),L}) \odot f'(h_k^L) \\
    \delta_k^{(t),\ell} &= (W^{\ell+1\top} \delta_k^{(t),\ell+1} + U^{\ell\top}
        \delta_{k\pm1}^{(t),\ell}) \odot f'(h_k^\ell)

(:math:`k \pm 1`: the step processed after k, k + 1 forward in time, k − 1
for a backward-in-time direction). Summed over t, the gradients are those of
:func:`bptt_jax.core.deep.deep_bptt_core` up to round-off, because the
backward pass is linear in :math:`r`. Unlike the seed's single layer,
:math:`\delta_k^{(t)}` is not zero for :math:`k > t` in a bidirectional net:
the backward direction, and every cell that reads it, carry :math:`E_t`'s
signal to later steps. :math:`O(T)` backward passes, :math:`O(T^2)` work: for
inspection and diagnostics. No autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .deep import backward, forward_and_output, layer_grads
from .params import DeepParams


def _losses(params: DeepParams, xs, ys, h0, mask, activation, reduction):
    """``(E, dV, dc, one_loss)``: ``one_loss(t)`` runs the backward pass of E_t alone."""
    inputs, outs, _, m, E, r, dV, dc = forward_and_output(
        params, xs, ys, h0, mask, activation, reduction
    )
    steps = jnp.arange(r.shape[0])
    no_dh = jnp.zeros_like(h0)  # E_t reads no state after the sequence

    def one_loss(t):
        r_t = jnp.where((steps == t)[:, None, None], r, 0)  # (T, B, C): E_t's residual only
        return backward(params, inputs, outs, h0, m, r_t, no_dh, activation=activation)

    return E, dV, dc, one_loss


@functools.partial(jax.jit, static_argnames=("activation", "reduction"))
def deep_per_loss_deltas_core(params: DeepParams, xs, ys, h0, mask=None, *,
                              activation="tanh", reduction="sum"):  # fmt: skip
    r"""Every :math:`\delta_k^{(t)}` per cell, ``(T_t, T_k, L*D, B, H)``; no checks.

    Batched layout as :func:`bptt_jax.core.deep.deep_bptt_core`; cell index
    ``l*D + d`` (layer l + 1, direction d). Zero at padding steps.
    """
    _, _, _, one_loss = _losses(params, xs, ys, h0, mask, activation, reduction)
    T, (LD, B, H) = xs.shape[1], h0.shape
    if T == 0:
        return jnp.zeros((0, 0, LD, B, H), h0.dtype)
    deltas = lax.map(lambda t: one_loss(t)[2], jnp.arange(T))  # (T_t, L*D, T_k, B, H)
    return jnp.swapaxes(deltas, 1, 2)  # (T_t, T_k, L*D, B, H)


@functools.partial(jax.jit, static_argnames=("activation", "reduction"))
def deep_bptt_per_loss_core(params: DeepParams, xs, ys, h0, mask=None, *,
                            activation="tanh", reduction="sum"):  # fmt: skip
    r"""``(E, grads)`` as :math:`\sum_t \partial E_t/\partial\theta`, one loss at a time.

    :math:`\partial E/\partial V, c` come from the output layer of all steps
    (:math:`\sum_t r_t \otimes h_t^L`); the layers' gradients are summed over
    one hand backward pass per loss :math:`E_t`. No checks.
    """
    E, dV, dc, one_loss = _losses(params, xs, ys, h0, mask, activation, reduction)

    def add_loss(acc, t):  # acc: the layers' gradients of E_1..E_{t-1}
        cells, _, _ = one_loss(t)
        return jax.tree.map(jnp.add, acc, cells), None

    zeros = [[jax.tree.map(jnp.zeros_like, layer) for layer in cell] for cell in params.cells()]
    cells, _ = lax.scan(add_loss, zeros, jnp.arange(xs.shape[1]))
    return E, layer_grads(params, cells, dV, dc)
