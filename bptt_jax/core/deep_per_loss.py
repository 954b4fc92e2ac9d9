r"""The per-loss form for stacked, bidirectional, padded RNNs (``docs/math.md`` §5, §7).

For each loss :math:`E_t` the hand deep backward pass of
:mod:`bptt_jax.core.recurrence` runs with the output residual restricted to step t,
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

from .options import DEFAULT, Options
from .params import DeepParams, from_deep, seed_case, to_deep
from .per_loss import bptt_per_loss_core, per_loss_deltas_core
from .recurrence import _backprop, _forward, _output_layer, _prepare, _time_major
from .steps import pick


def _backward(cells, inputs, states, h0, m, G, options: Options):
    """Every cell's hand backward (:mod:`.recurrence`), top first: ``(cells, deltas)``."""
    D = len(cells[0])
    H = cells[0][0].U.shape[1]
    grads = [[None] * D for _ in cells]
    deltas = [None] * (len(cells) * D)
    for l in reversed(range(len(cells))):
        G_below = 0
        for d, layer in enumerate(cells[l]):
            i = l * D + d
            G_d = jnp.where(m, G[..., d * H : (d + 1) * H], 0)
            grads[l][d], _, deltas[i] = _backprop(
                layer, inputs[l], pick(h0, i), states[i], m, None, G_d,
                jax.tree.map(jnp.zeros_like, pick(h0, i)),
                reverse=d == 1, options=options,
            )  # fmt: skip
            term = jnp.matmul(
                options.cell.w_rows(deltas[i]), layer.W, precision=options.precision
            )  # W^{ℓ}ᵀ δ^{ℓ}_t
            G_below = G_below + term
        G = G_below
    return grads, jnp.stack(deltas)  # every cell's δ has one width


def _losses(params: DeepParams, xs, ys, h0, mask, options: Options, reduction):
    """``(E, dV, dc, one_loss)``: ``one_loss(t)`` runs the backward pass of E_t alone."""
    precision = options.precision
    if mask is None:
        mask = jnp.ones(xs.shape[:2], bool)
    X, m, _ = _prepare(xs, mask, None)
    cells = params.cells()
    inputs, states, _, top = _forward(cells, X, h0, m, None, options)
    E, r, dV, dc, _, _ = _output_layer(params, top, _time_major(ys), m, reduction, options)
    steps = jnp.arange(r.shape[0])

    def one_loss(t):
        r_t = jnp.where((steps == t)[:, None, None], r, 0)  # (T, B, C): E_t's residual only
        G = jnp.matmul(r_t, params.V, precision=precision)  # Vᵀ r_t
        return _backward(cells, inputs, states, h0, m, G, options)

    return E, dV, dc, one_loss


def layer_grads(params: DeepParams, cells, dV, dc) -> DeepParams:
    """Per-cell gradients and the output layer's as a :class:`DeepParams`."""
    return DeepParams(
        layers=tuple(g[0] for g in cells),
        reverse_layers=tuple(g[1] for g in cells) if params.bidirectional else (),
        V=dV,
        c=dc,
    )


@functools.partial(jax.jit, static_argnames=("options", "reduction"))
def deep_per_loss_deltas_core(params: DeepParams, xs, ys, h0, mask=None, *, options=DEFAULT,
                              reduction="sum"):  # fmt: skip
    r"""Every :math:`\delta_k^{(t)}` per cell, ``(T_t, T_k, L*D, B, H)``; no checks.

    Batched layout as :func:`bptt_jax.core.deep.deep_bptt_core`; cell index
    ``l*D + d`` (layer l + 1, direction d). Zero at padding steps. The seed's setting
    (:func:`~bptt_jax.core.params.seed_case`) runs the seed's double sum, which also
    takes ``options.truncate`` (a sliding window).
    """
    if seed_case(params, mask, None, reduction, options.cell):
        deltas = per_loss_deltas_core(from_deep(params), xs, ys, h0[0], options=options)
        return deltas[:, :, None]  # (T_t, T_k, 1, B, H)
    _, _, _, one_loss = _losses(params, xs, ys, h0, mask, options, reduction)
    T, (LD, B, _) = xs.shape[1], jax.tree.leaves(h0)[0].shape
    if T == 0:
        width = params.layers[0].b.shape[0]  # δ's width: the cell's gate rows
        return jnp.zeros((0, 0, LD, B, width), params.V.dtype)
    deltas = lax.map(lambda t: one_loss(t)[1], jnp.arange(T))  # (T_t, L*D, T_k, B, H)
    return jnp.swapaxes(deltas, 1, 2)  # (T_t, T_k, L*D, B, H)


@functools.partial(jax.jit, static_argnames=("options", "reduction"))
def deep_bptt_per_loss_core(params: DeepParams, xs, ys, h0, mask=None, *, options=DEFAULT,
                            reduction="sum"):  # fmt: skip
    r"""``(E, grads)`` as :math:`\sum_t \partial E_t/\partial\theta`, one loss at a time.

    :math:`\partial E/\partial V, c` come from the output layer of all steps
    (:math:`\sum_t r_t \otimes h_t^L`); the layers' gradients are summed over
    one hand backward pass per loss :math:`E_t`. No checks. The seed's setting
    (:func:`~bptt_jax.core.params.seed_case`) runs the seed's double sum, which also
    takes ``options.truncate`` (a sliding window).
    """
    if seed_case(params, mask, None, reduction, options.cell):
        E, grads = bptt_per_loss_core(from_deep(params), xs, ys, h0[0], options=options)
        return E, to_deep(grads)
    E, dV, dc, one_loss = _losses(params, xs, ys, h0, mask, options, reduction)

    def add_loss(acc, t):  # acc: the layers' gradients of E_1..E_{t-1}
        cells, _ = one_loss(t)
        return jax.tree.map(jnp.add, acc, cells), None

    zeros = [[jax.tree.map(jnp.zeros_like, layer) for layer in cell] for cell in params.cells()]
    cells, _ = lax.scan(add_loss, zeros, jnp.arange(xs.shape[1]))
    return E, layer_grads(params, cells, dV, dc)
