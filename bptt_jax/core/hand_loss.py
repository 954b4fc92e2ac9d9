r"""A loss whose VJP is the hand BPTT of the whole model (``docs/math.md`` §3, §4, §7).

``hand_loss_core`` returns the seed's loss :math:`E` (``reduction="sum"``) or its mean
over the real steps; it is a ``jax.custom_vjp`` whose forward rule runs the hand BPTT
and keeps the gradients, and whose backward rule scales them by the cotangent:

.. math::

    \bar\theta = \bar E\,\partial E/\partial\theta,\qquad
    \partial E/\partial V = \textstyle\sum_t r_t \otimes h_t,\ \ r_t = \hat y_t - y_t,
    \qquad \delta_t = (V^\top r_t + U^\top\delta_{t+1}) \odot f'(h_t),\ \ldots

The model is a :class:`~bptt_jax.core.params.DeepParams` (the seed's is its one-layer
case). Which hand BPTT runs (all give the same gradients up to rounding):

- token ids in and class ids out: the chunked backward of :func:`bptt_jax.bptt`,
  :func:`~bptt_jax.core.deep.deep_bptt_core`. No ``(T, B, C)`` array, the same cost as
  ``bptt``;
- dense inputs or soft labels: :mod:`.recurrence`'s unchunked hand backward, which also
  returns :math:`\partial E/\partial x_t = W^\top\delta_t` and
  :math:`\partial E/\partial y_t = -\log\hat y_t` (scaled as ``E``).

Everything here is the hand recursion; ``jax.custom_vjp`` only registers it with JAX.
No ``jax.grad``/``vjp``/``jvp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .deep import deep_bptt_core
from .options import Options
from .recurrence import (
    _as_params,
    _backward,
    _forward,
    _is_ids,
    _output_layer,
    _prepare,
    _time_major,
)


def _loss_chunked(params, xs, ys, h0, mask, resets, options: Options, reduction):
    """Ids in and out: ``(E, grads, dh0)`` of the chunked hand BPTT, as ``bptt`` runs it."""
    E, grads, dh0, _ = deep_bptt_core(
        params, xs, ys, h0, mask, None, resets, options=options, reduction=reduction
    )
    return E, grads, dh0


def _loss_general(params, xs, ys, h0, mask, resets, options: Options, reduction):
    """Hand forward and backward of the full model: ``(E, grads, dxs, dys, dh0)``."""
    precision = options.precision
    X, m, r = _prepare(xs, mask, resets)
    cells = params.cells()
    inputs, states, _, top = _forward(cells, X, h0, m, r, options)
    Y = _time_major(ys)
    E, r_out, dV, dc, log_yhat, scale = _output_layer(params, top, Y, m, reduction, options)
    G = jnp.matmul(r_out, params.V, precision=precision)  # (T, B, D*H): ∂E/∂h_t = Vᵀ r_t
    zero = jax.tree.map(jnp.zeros_like, h0)  # no gradient at the final state
    grads, dh0, dX = _backward(cells, inputs, states, h0, m, r, G, zero, options)
    dparams = _as_params(params, grads, zero_output=False, dV=dV, dc=dc)
    dxs = None if dX is None else _time_major(dX)
    dys = None
    if jnp.issubdtype(ys.dtype, jnp.floating):  # ∂E/∂y_t = −log ŷ_t
        dY = -log_yhat * scale
        dys = _time_major(dY if m is None else jnp.where(m, dY, 0))
    return E, dparams, dxs, dys, dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def hand_loss_core(params, xs, ys, h0, mask, resets, options: Options, reduction: str):
    """The loss ``E`` (batched layout, no checks); its VJP is the hand BPTT of the model.
    ``options``: the cell, ``kernel`` (``"scan"`` or ``"pallas"``) and ``precision``
    (every product's ``jax.lax.Precision``; ``None``: JAX's default)."""
    X, m, r = _prepare(xs, mask, resets)
    _, _, _, top = _forward(params.cells(), X, h0, m, r, options)
    return _output_layer(params, top, _time_major(ys), m, reduction, options)[0]


def _hand_loss_fwd(params, xs, ys, h0, mask, resets, options, reduction):
    args = (params, xs, ys, h0, mask, resets, options, reduction)
    if _is_ids(xs) and _is_ids(ys):  # the chunked backward of bptt: no (T, B, C) array
        E, grads, dh0 = _loss_chunked(*args)
        return E, (grads, None, None, dh0)
    E, grads, dxs, dys, dh0 = _loss_general(*args)
    return E, (grads, dxs, dys, dh0)


def _hand_loss_bwd(options, reduction, res, ct):
    grads, dxs, dys, dh0 = res
    scale = lambda a: None if a is None else ct * a  # noqa: E731
    return jax.tree.map(scale, grads), scale(dxs), scale(dys), jax.tree.map(scale, dh0), None, None


hand_loss_core.defvjp(_hand_loss_fwd, _hand_loss_bwd)
#: ``hand_loss_core`` compiled; ``options`` and ``reduction`` static.
hand_loss_jit = jax.jit(hand_loss_core, static_argnums=(6, 7))
