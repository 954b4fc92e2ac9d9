r"""The derivation, top to bottom: a short, unchunked BPTT of the seed's model.

This is the executable statement of ``docs/math.md`` §2-§4, written for a reader, not
for speed: one forward ``lax.scan``, the output layer over all steps at once (it holds
the ``(T, B, C)`` residuals the fast paths never build), one reverse ``lax.scan`` of
the δ recursion, then the sums. The fast paths (:mod:`.bptt`'s chunked BPTT, the deep
backward, the recurrence) are tested against it. The cell's equations come from the
cell itself (:mod:`.cell`), so it states the derivation of any cell; no options but
the cell and the products' precision. No autodiff. Written here for the vanilla
cell; the gated cells (:mod:`.lstm`, :mod:`.gru`) run through the same lines.

.. math::

    a_t = W x_t + b,\quad h_t = f(U h_{t-1} + a_t),\quad
    z_t = V h_t + c,\quad E = -\textstyle\sum_t y_t^\top \log\mathrm{softmax}(z_t)

    r_t = \hat y_t - y_t,\qquad
    \delta_t = (V^\top r_t + U^\top\delta_{t+1}) \odot f'(h_t),\quad \delta_{T+1} = 0

    \partial E/\partial V = \textstyle\sum_t r_t \otimes h_t,\
    \partial E/\partial c = \textstyle\sum_t r_t,\
    \partial E/\partial U = \textstyle\sum_t \delta_t \otimes h_{t-1},\
    \partial E/\partial W = \textstyle\sum_t \delta_t \otimes x_t,\
    \partial E/\partial b = \textstyle\sum_t \delta_t,\
    \partial E/\partial h_0 = U^\top \delta_1
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .losses import cross_entropy, log_softmax, residual
from .options import DEFAULT, Options
from .params import Params


@functools.partial(jax.jit, static_argnames=("options",))
def reference_bptt(params: Params, xs, ys, h0, *, options: Options = DEFAULT):
    r"""``(E, grads, dh0, h_T)`` of the seed's model by the equations of the module doc.

    Args:
      params: :class:`Params` ``U (H, H), V (C, H), W (H, K), b (H,), c (C,)``.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors; ys: ``(B, T)`` ids or ``(B, T, C)``.
      h0: the state, ``(B, H)`` (``(h0, c0)`` for the LSTM).
      options: the cell (its ``project``, ``forward``, ``delta``) and
        ``precision``; the other options do not apply here.

    Returns:
      The loss, the gradients as :class:`Params`, :math:`\partial E/\partial h_0`
      and :math:`h_T`, each like ``h0``.
    """
    U, V, W, c = params.U, params.V, params.W, params.c
    cell, p = options.cell, options.precision
    mm = functools.partial(jnp.matmul, precision=p)
    X, Y = jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1)  # time-major (T, B[, ·])

    # Forward (§2): a_t = W x_t + b for all steps, then the cell's step from each state.
    a = cell.project(params, X, mm, lambda m: m)  # (T, B, G·H)
    R = cell.weights(params, lambda m: m)

    def forward(s_prev, a_t):
        trace = cell.forward(mm, R, s_prev, a_t)
        return cell.state(trace), trace

    s_T, traces = lax.scan(forward, h0, a)  # the final state, every step's trace
    hs = cell.output(traces)  # (T, B, H)
    s_in = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s[:-1]]), h0,
                        cell.state(traces))  # the state each step read  # fmt: skip

    # The output layer (§3, appendix 1): E and r_t = ŷ_t − y_t at every step.
    log_yhat = log_softmax(mm(hs, V.T) + c)  # (T, B, C)
    E = cross_entropy(log_yhat, Y)
    r = residual(log_yhat, Y)  # (T, B, C)

    # The δ recursion (§4), last step first: δ_t from Vᵀ r_t + γ_{t+1}, γ_t to step t − 1.
    def backward(g, inputs):  # g = γ_{t+1}, the gradient of the state step t + 1 read
        Vr_t, trace_t, s_in_t = inputs
        return cell.delta(mm, U, cell.total(g, Vr_t), trace_t, s_in_t)

    zero = jax.tree.map(jnp.zeros_like, h0)
    dh0, deltas = lax.scan(backward, zero, (mm(r, V), traces, s_in), reverse=True)

    # The sums (§4): every gradient is a sum over the steps of an outer product.
    x1 = jax.nn.one_hot(X, W.shape[1], dtype=U.dtype) if X.ndim == 2 else X  # (T, B, K)
    outer = functools.partial(jnp.einsum, "tbi,tbj->ij", precision=p)
    grads = Params(
        U=outer(cell.u_rows(deltas), cell.h_of(s_in)), V=outer(r, hs),
        W=outer(cell.w_rows(deltas), x1), b=jnp.sum(deltas, axis=(0, 1)),
        c=jnp.sum(r, axis=(0, 1)),
    )  # fmt: skip
    return E, grads, dh0, s_T
