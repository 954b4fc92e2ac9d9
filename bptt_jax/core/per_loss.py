r"""The seed's own route to the gradient: one loss at a time (seed §5.3).

For each loss :math:`E_t` the seed defines :math:`\delta_k^{(t)} =
\partial E_t/\partial s_k` for :math:`k \le t` and runs it from :math:`k = t`
down to 1:

.. math::

    \delta_t^{(t)} &= (V^\top r_t) \odot f'(h_t) \\
    \delta_k^{(t)} &= (U^\top \delta_{k+1}^{(t)}) \odot f'(h_k), \qquad k < t \\
    \frac{\partial E}{\partial U} &= \sum_t \sum_{k \le t} \delta_k^{(t)} \otimes h_{k-1},
    \quad \frac{\partial E}{\partial W} = \sum_t \sum_{k \le t} \delta_k^{(t)} \otimes x_k,
    \quad \frac{\partial E}{\partial b} = \sum_t \sum_{k \le t} \delta_k^{(t)}

This double sum costs :math:`O(T^2)`; :func:`bptt_jax.bptt` gets the same
gradient in :math:`O(T)` because :math:`\sum_{t \ge k} \delta_k^{(t)} = \delta_k`
obeys a single recursion. Both are here so that the seed's derivation runs as
written, and so that truncation has its textbook meaning: with ``truncate=τ``
each :math:`E_t` back-propagates through at most τ steps (:math:`t - τ < k \le
t`), the sliding window of Williams & Peng's BPTT(h). (The ``bptt_truncate``
of the well-known numpy RNN tutorial visits ``k = t - τ .. t``, τ + 1 steps: its
``bptt_truncate=τ`` is ``truncate=τ + 1`` here.)

Written as the seed does it: a ``lax.scan`` over the loss index :math:`t`,
whose body runs a reverse ``lax.scan`` over :math:`k`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .cell import input_gradient_of_ids
from .losses import cross_entropy, log_softmax, residual
from .options import DEFAULT, Options
from .params import Params
from .rnn import hidden_states, output_logits, time_major
from .steps import delta_step


def input_gradient(deltas: jax.Array, xs: jax.Array, K: int, options: Options) -> jax.Array:
    r""":math:`\partial E/\partial W = \sum_t \delta_t \otimes x_t`, ``(H, K)``.

    Args:
      deltas: :math:`\delta_t`, time-major ``(T, B, H)``.
      xs: ``(B, T)`` ids -- a scatter-add of each :math:`\delta_t` into
        column :math:`x_t` (repeated ids accumulate) -- or ``(B, T, K)``
        vectors, a batched outer-product sum.
      K: the vocabulary size.
      options: the product's ``precision``.
    """
    H = deltas.shape[-1]
    if jnp.issubdtype(xs.dtype, jnp.integer):
        return input_gradient_of_ids(xs.T, deltas.reshape(-1, H), K)
    return jnp.einsum("tbh,btk->hk", deltas, xs, precision=options.precision)


def output_layer(params: Params, hs: jax.Array, ys_tm: jax.Array, options: Options):
    r"""Loss and output-layer gradients for all steps at once.

    Args:
      params: the model.
      hs: :math:`h_t`, ``(T, B, H)``.
      ys_tm: labels, time-major: ids ``(T, B)`` or probabilities ``(T, B, C)``.
      options: the products' ``precision``.

    Returns:
      ``(E, r, dV, dc)``: the loss, :math:`r_t = \partial E_t/\partial z_t`
      ``(T, B, C)`` (appendix 1), :math:`\sum_t r_t \otimes h_t` and
      :math:`\sum_t r_t`.
    """
    log_yhat = log_softmax(output_logits(params, hs, options))  # (T, B, C)
    E = cross_entropy(log_yhat, ys_tm)
    r = residual(log_yhat, ys_tm)  # (T, B, C): ŷ_t − y_t
    dV = jnp.einsum("tbc,tbh->ch", r, hs, precision=options.precision)  # Σ_t r_t ⊗ h_t
    dc = jnp.sum(r, axis=(0, 1))  # Σ_t r_t
    return E, r, dV, dc


def _deltas_of_loss(t, U, Vr, hs, options: Options):
    r""":math:`\delta_k^{(t)}` for k = 1..T (zero outside :math:`t - τ < k \le t`).

    The cell's δ step (:func:`.steps.delta_step`) run back from step t with
    :math:`G_k = V^\top r_t` at k = t only: :math:`\delta_t^{(t)} = (V^\top r_t)
    \odot f'(h_t)`, :math:`\delta_k^{(t)} = (U^\top \delta_{k+1}^{(t)}) \odot f'(h_k)`
    for k < t, cut (a truncation ``keep`` off) below the window of ``options.truncate``.

    Args:
      t: the loss index, 0-based (a traced scalar).
      U: ``(H, H)``.
      Vr: :math:`V^\top r_k` for every step, ``(T, B, H)``.
      hs: :math:`h_k` for every step, ``(T, B, H)``.
      options: the cell, ``truncate`` (τ or ``None``) and the products' precision.

    Returns:
      ``(T, B, H)``, indexed by k.
    """
    T = Vr.shape[0]
    k = jnp.arange(T)
    keep = None
    if options.truncate is not None:
        keep = k > t - options.truncate  # no gradient into steps before the window
    mm, _ = options.products(U.dtype)
    step = delta_step(options.cell, mm, U)

    def scan_step(g, inputs):  # γ_{k+1} (B, H) -> γ_k, δ_k^{(t)}
        k, h_k, keep_k = inputs
        G_k = jnp.where(k == t, Vr[t], 0)  # only E_t's residual enters, at step t
        g, _, delta = step(g, None, G_k, h_k, k_t=keep_k)
        return g, delta

    zeros = jnp.zeros(Vr.shape[1:], Vr.dtype)
    _, deltas = lax.scan(scan_step, zeros, (k, hs, keep), reverse=True)
    return deltas


def _prepare(params, xs, ys, h0, options: Options):
    """Forward pass and the per-step quantities every per-loss recursion reuses."""
    _, hs = hidden_states(params, xs, h0, options)  # (T, B, H)
    E, r, dV, dc = output_layer(params, hs, time_major(ys), options)
    Vr = jnp.matmul(r, params.V, precision=options.precision)  # (T, B, H): Vᵀ r_t
    return hs, E, r, dV, dc, Vr


@functools.partial(jax.jit, static_argnames=("options",))
def per_loss_deltas_core(params, xs, ys, h0, *, options: Options = DEFAULT):
    r"""Every :math:`\delta_k^{(t)}`, ``(T_t, T_k, B, H)``, batched layout; no checks."""
    hs, _, _, _, _, Vr = _prepare(params, xs, ys, h0, options)
    T = Vr.shape[0]
    if T == 0:  # no loss, no step: nothing to map over
        return jnp.zeros((0, *Vr.shape), Vr.dtype)
    return lax.map(lambda t: _deltas_of_loss(t, params.U, Vr, hs, options), jnp.arange(T))


@functools.partial(jax.jit, static_argnames=("options",))
def bptt_per_loss_core(params, xs, ys, h0, *, options: Options = DEFAULT):
    """The seed's double sum on the batched layout; no checks. Returns ``(E, grads)``."""
    hs, E, r, _, _, Vr = _prepare(params, xs, ys, h0, options)
    precision = options.precision
    T = hs.shape[0]
    if T == 0:  # E = 0 and every gradient zero, as for bptt
        return E, jax.tree.map(jnp.zeros_like, params)
    K = params.W.shape[1]
    h_prev = jnp.concatenate([h0[None], hs], axis=0)[:T]  # (T, B, H): h_{k-1}

    def loss_t(grads, inputs):  # adds ∂E_t/∂θ for one loss E_t
        t, r_t, h_t = inputs
        deltas = _deltas_of_loss(t, params.U, Vr, hs, options)  # δ_k^(t)
        dU = jnp.einsum("kbi,kbj->ij", deltas, h_prev, precision=precision)
        return Params(
            U=grads.U + dU,  # Σ_k δ_k^(t) ⊗ h_{k−1}
            V=grads.V + jnp.matmul(r_t.T, h_t, precision=precision),  # r_t ⊗ h_t
            W=grads.W + input_gradient(deltas, xs, K, options),  # Σ_k δ_k^(t) ⊗ x_k
            b=grads.b + jnp.sum(deltas, axis=(0, 1)),  # Σ_k δ_k^(t)
            c=grads.c + jnp.sum(r_t, axis=0),  # r_t
        ), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = lax.scan(loss_t, zeros, (jnp.arange(T), r, hs))
    return E, grads
