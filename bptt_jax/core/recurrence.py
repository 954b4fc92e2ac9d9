r"""A composable recurrence with a hand-derived VJP (the loss whose VJP is hand BPTT:
:mod:`bptt_jax.core.hand_loss`).

The recurrence of one direction of one layer (``docs/math.md`` §4; §7 for deep models):

.. math::

    s_t = U h^{\mathrm{in}}_t + W x_t + b,\qquad h_t = f(s_t),\qquad
    h^{\mathrm{in}}_t = \begin{cases} h_0 & t = 1 \text{ or a reset at } t \\
                                      h_{t-1} & \text{otherwise} \end{cases}

Given a cotangent :math:`g_t = \partial L/\partial h_t` for every output and
:math:`\partial L/\partial h_T` for the final state, the backward pass is the hand
recursion, one reverse ``lax.scan``:

.. math::

    \delta_t &= (g_t + \gamma_{t+1}) \odot f'(h_t),\qquad
        \gamma_{T+1} = \partial L/\partial h_T \\
    \gamma_t &= \begin{cases} 0 & \text{a reset at } t \\
                              U^\top \delta_t & \text{otherwise} \end{cases},\qquad
    \partial L/\partial h_0 = U^\top\delta_1 + \textstyle\sum_{t \in \text{resets}}
        U^\top \delta_t \\
    \partial L/\partial U &= \textstyle\sum_t \delta_t \otimes h^{\mathrm{in}}_t,\quad
    \partial L/\partial W = \textstyle\sum_t \delta_t \otimes x_t,\quad
    \partial L/\partial b = \textstyle\sum_t \delta_t,\quad
    \partial L/\partial x_t = W^\top \delta_t

So at a reset the gradient that would have flowed into step :math:`t-1` goes to
:math:`h_0` instead, as the forward pass read :math:`h_0` there. A deep model runs this
layer by layer, top first, the layer below receiving
:math:`g^{\ell-1}_t = \sum_d W^{\ell,d\top} \delta^{\ell,d}_t` (one batched product).

Padding (a prefix ``mask``): a padded step keeps the state (:math:`h_t = h^{\mathrm{in}}_t`),
outputs zero, has :math:`\delta_t = 0` and passes :math:`\gamma` through unchanged.

The backward-in-time direction of a bidirectional layer mirrors resets: a reset at
``t`` ends the previous document at ``t - 1``, so the reverse-direction state entering
step ``t - 1`` is :math:`h_0` (as the state entering step ``T``, or a sequence's last
real step, always is). Each segment between resets therefore runs exactly as if it
were a sequence of its own, in both directions.

Everything here is the hand recursion; ``jax.custom_vjp`` only registers it with JAX so
that ``jax.grad`` of a user's program calls it. No ``jax.grad``/``vjp``/``jvp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .backward import cell_backward, make_ctx, run_cell
from .cell import input_gradient_of_ids
from .losses import log_softmax
from .options import DEFAULT, Options
from .params import DeepParams, Layer
from .steps import pick, stack


def _is_ids(X) -> bool:
    return jnp.issubdtype(X.dtype, jnp.integer)


def _entry_resets(resets, mask, reverse: bool):
    """``(T, B, 1)`` bool: where the state entering a step is ``h0`` (besides the first step).

    Forward in time that is the reset itself; backward in time a reset at t makes the
    state entering step t - 1 be ``h0`` (the previous document ends at t - 1).
    """
    if resets is None:
        return None
    r = resets if mask is None else resets & mask  # (T, B, 1): resets on padding ignored
    if reverse:
        r = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])])
    return r


def _flip(a, reverse: bool):
    """``a`` in a direction's processing order (reversed in time for ``reverse``)."""
    return jnp.flip(a, 0) if reverse and a is not None else a


def _run(layer: Layer, X, h0, m, r, *, reverse: bool, options: Options):
    """One direction: ``(s_final, traces (T, B, ·))``, states frozen at padding; the
    cell's :func:`.steps.forward_step` (or the Pallas kernel) in the direction's order."""
    ctx = make_ctx(options, layer.U.dtype)
    fl = functools.partial(_flip, reverse=reverse)
    s_T, traces = run_cell(ctx, layer, fl(X), h0, h0, fl(m), fl(r))
    return s_T, jax.tree.map(fl, traces)


def _backprop(layer: Layer, X, h0, traces, m, r, G, dh_final, *, reverse: bool,
              options: Options):  # fmt: skip
    """The hand backward through one direction of one layer: the chunked driver's cell
    backward (:func:`.backward.cell_backward`, one chunk) in reverse processing order.

    Args:
      G: ``(T, B, H)``, ∂L/∂(outputs), zero at padding.
      dh_final: like the state, ∂L/∂(final state).
      options: the cell and the products' precision.

    Returns:
      ``(grads Layer, dh0 like the state, deltas (T, B, ·))``.
    """
    ctx = make_ctx(options, layer.U.dtype)
    fl = functools.partial(_flip, reverse=reverse)
    acc = None if r is None else jax.tree.map(jnp.zeros_like, h0)
    tr = jax.tree.map(fl, traces)
    g, acc, (dU, dW, db), deltas = cell_backward(
        ctx, layer, fl(X), tr, h0, h0, (dh_final, acc), fl(G), (fl(m), fl(r), None)
    )
    dh0 = g if acc is None else jax.tree.map(jnp.add, g, acc)  # the first step read h0
    if _is_ids(X):  # Σ_t δ_t ⊗ x_t for one-hot x_t: a scatter-add into column x_t
        dW = input_gradient_of_ids(fl(X), dW, layer.W.shape[1])
    return Layer(U=dU, W=dW, b=db), dh0, fl(deltas)


def _time_major(a):
    return None if a is None else jnp.swapaxes(a, 0, 1)


def _masks(mask, resets):
    """``(B, T)`` bool masks (or None) -> time-major ``m (T, B, 1)``, ``r (T, B, 1)``."""
    m = None if mask is None else mask.T[..., None]
    r = None if resets is None else resets.T[..., None]
    return m, r


def _prepare(xs, mask, resets):
    """Batch-major user layout -> time-major ``X``, ``m (T, B, 1)``, ``r (T, B, 1)``."""
    X = _time_major(xs)  # (T, B) ids or (T, B, K)
    m, r = _masks(mask, resets)
    if m is not None and _is_ids(X):
        X = jnp.where(m[..., 0], X, 0)  # ids at padding are never read: keep them in range
    return X, m, r


def _forward(cells, X, h0s, m, r, options: Options):
    """All layers forward: ``(layer inputs, states per cell, finals (L*D, B, H), top)``."""
    D = len(cells[0])
    inputs, states, finals = [], [], []
    for l, cell in enumerate(cells):
        inputs.append(X)
        outs = []
        for d, layer in enumerate(cell):
            rev = d == 1
            h_fin, traces = _run(layer, X, pick(h0s, l * D + d), m, _entry_resets(r, m, rev),
                                 reverse=rev, options=options)  # fmt: skip
            states.append(traces)
            finals.append(h_fin)
            hs = options.cell.output(traces)
            outs.append(hs if m is None else jnp.where(m, hs, 0))  # zeros at padding
        X = outs[0] if D == 1 else jnp.concatenate(outs, axis=-1)  # (T, B, D*H)
    return inputs, states, stack(finals), X


def _backward(cells, inputs, states, h0s, m, r, G, dfinals, options: Options):
    """All layers backward, top first: ``(grads per cell, dh0 (L*D, B, H), dX or None)``."""
    D = len(cells[0])
    H = cells[0][0].U.shape[1]
    grads = [[None] * D for _ in cells]
    dh0 = [None] * (len(cells) * D)
    for l in reversed(range(len(cells))):
        G_below = None
        for d, layer in enumerate(cells[l]):
            i, rev = l * D + d, d == 1
            G_d = G[..., d * H : (d + 1) * H]
            if m is not None:
                G_d = jnp.where(m, G_d, 0)  # outputs at padding are constants
            grads[l][d], dh0[i], deltas = _backprop(
                layer, inputs[l], pick(h0s, i), states[i], m, _entry_resets(r, m, rev), G_d,
                pick(dfinals, i), reverse=rev, options=options,
            )  # fmt: skip
            if l > 0 or not _is_ids(inputs[0]):
                term = jnp.matmul(
                    options.cell.w_rows(deltas), layer.W, precision=options.precision
                )  # W^{ℓ}ᵀ δ^{ℓ}_t
                G_below = term if G_below is None else G_below + term
        G = G_below
    return grads, stack(dh0), G


def _as_params(params: DeepParams, grads, zero_output: bool, dV=None, dc=None) -> DeepParams:
    """Cell gradients (and the output layer's) as a :class:`DeepParams` like ``params``."""
    if zero_output:
        dV, dc = jnp.zeros_like(params.V), jnp.zeros_like(params.c)
    return DeepParams(
        layers=tuple(g[0] for g in grads),
        reverse_layers=tuple(g[1] for g in grads) if params.bidirectional else (),
        V=dV,
        c=dc,
    )


# --- the recurrence ------------------------------------------------------------------


def _recurrence_fwd_impl(params, xs, h0, mask, resets, options):
    X, m, r = _prepare(xs, mask, resets)
    inputs, states, finals, top = _forward(params.cells(), X, h0, m, r, options)
    return (_time_major(top), finals), (inputs, states)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def recurrence_core(params, xs, h0, mask, resets, options=DEFAULT):
    r"""The hidden states and final states; a ``jax.custom_vjp`` with the hand backward.

    Batched layout, no checks: a :class:`DeepParams` (the seed's model is its one-layer
    case), ``xs (B, T)`` ids or ``(B, T, K)`` vectors in the params'
    dtype, ``h0 (L*D, B, H)``, ``mask`` and
    ``resets`` ``(B, T)`` bool or ``None``. Returns ``hs (B, T, D*H)`` (zeros at padding)
    and ``h_T`` like ``h0``. ``options``: the cell, ``kernel`` (``"scan"`` or
    ``"pallas"``, both recursions) and ``precision`` (every product's, forward and hand
    backward; ``None``: JAX's default).
    """
    return _recurrence_fwd_impl(params, xs, h0, mask, resets, options)[0]


def _recurrence_fwd(params, xs, h0, mask, resets, options):
    out, (inputs, states) = _recurrence_fwd_impl(params, xs, h0, mask, resets, options)
    return out, (params, inputs, states, h0, mask, resets)


def _recurrence_bwd(options, res, cts):
    params, inputs, states, h0, mask, resets = res
    d_hs, d_hT = cts  # (B, T, D*H), like h0
    m, r = _masks(mask, resets)
    grads, dh0, dX = _backward(
        params.cells(), inputs, states, h0, m, r, _time_major(d_hs), d_hT, options
    )
    dparams = _as_params(params, grads, zero_output=True)
    dxs = None if dX is None else _time_major(dX)  # integer ids: no cotangent
    return dparams, dxs, dh0, None, None


recurrence_core.defvjp(_recurrence_fwd, _recurrence_bwd)
#: ``recurrence_core`` compiled (one dispatch when called eagerly); ``options`` static.
recurrence_jit = jax.jit(recurrence_core, static_argnums=(5,))


# --- the output layer of the loss (:mod:`.hand_loss`, :mod:`.deep`) -------------------


def _output_layer(params, top, Y, m, reduction, options: Options):
    """Loss, :math:`r_t` (masked, scaled), ∂E/∂V, ∂E/∂c, and log ŷ (time-major); the
    products at ``options.precision``."""
    precision = options.precision
    z = jnp.matmul(top, params.V.T, precision=precision) + params.c  # (T, B, C)
    log_yhat = log_softmax(z)
    yhat = jnp.exp(log_yhat)
    if jnp.issubdtype(Y.dtype, jnp.floating):
        e = -jnp.sum(jnp.where(Y == 0, 0, Y * log_yhat), axis=-1)  # (T, B)
        r = yhat * jnp.sum(Y, axis=-1, keepdims=True) - Y  # ŷ_t Σ_j y_j − y_t
    else:
        if m is not None:
            Y = jnp.where(m[..., 0], Y, 0)
        e = -jnp.take_along_axis(log_yhat, Y[..., None], axis=-1, mode="fill")[..., 0]
        r = yhat - jax.nn.one_hot(Y, z.shape[-1], dtype=z.dtype)  # ŷ_t − y_t
    scale = jnp.ones((), z.dtype)
    if reduction == "mean":
        n = e.size if m is None else jnp.sum(m)
        scale = 1 / jnp.maximum(n, 1).astype(z.dtype)
    if m is not None:
        e = jnp.where(m[..., 0], e, 0)
        r = jnp.where(m, r, 0)
    E = jnp.sum(e) * scale
    r = r * scale
    dV = jnp.einsum("tbc,tbh->ch", r, top, precision=precision)  # Σ_t r_t ⊗ h_t
    dc = jnp.sum(r, axis=(0, 1))  # Σ_t r_t
    return E, r, dV, dc, log_yhat, scale
