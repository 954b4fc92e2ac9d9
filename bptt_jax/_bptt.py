r"""Backpropagation through time, derived by hand (the seed's §5).

No autodiff here: every gradient is the formula of ``shared/MATH.md``.

.. math::

    r_t &= \hat y_t - y_t \\
    \partial E/\partial V &= \textstyle\sum_t r_t \otimes h_t,\qquad
    \partial E/\partial c = \textstyle\sum_t r_t \\
    \delta_t &= (V^\top r_t + U^\top \delta_{t+1}) \odot (1 - h_t \odot h_t),
        \qquad \delta_{T+1} = 0 \\
    \partial E/\partial U &= \textstyle\sum_t \delta_t \otimes h_{t-1},\qquad
    \partial E/\partial W = \textstyle\sum_t \delta_t \otimes x_t,\qquad
    \partial E/\partial b = \textstyle\sum_t \delta_t \\
    \partial E/\partial h_0 &= U^\top \delta_1

where :math:`\delta_t = \partial E/\partial s_t = \sum_{t' \ge t} \delta_t^{(t')}`
sums the seed's per-loss deltas. Only the :math:`\delta` recursion is
sequential (one reverse ``lax.scan``); :math:`r_t`, :math:`V^\top r_t`,
:math:`\partial E/\partial V` and :math:`\partial E/\partial U` are single
batched products over all ``T * B`` steps, and :math:`\partial E/\partial W`
for token ids is a scatter-add of :math:`\delta_t` into column :math:`x_t`.
The backward keeps only the forward's :math:`h_t`; :math:`1 - h_t^2` is
recomputed from them inside the scan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._params import Params
from ._rnn import hidden_states, log_softmax_loss, output_logits
from ._validate import check_inputs


def input_gradient(deltas: jax.Array, xs: jax.Array, K: int) -> jax.Array:
    r""":math:`\partial E/\partial W = \sum_t \delta_t \otimes x_t`, ``(H, K)``.

    Args:
      deltas: :math:`\delta_t`, time-major ``(T, B, H)``.
      xs: ``(B, T)`` ids -- a scatter-add of each :math:`\delta_t` into
        column :math:`x_t` (repeated ids accumulate) -- or ``(B, T, K)``
        vectors, a batched outer-product sum.
      K: the vocabulary size.
    """
    H = deltas.shape[-1]
    if jnp.issubdtype(xs.dtype, jnp.integer):
        ids = xs.T.reshape(-1)  # (T*B,) in the order of deltas
        dWT = jnp.zeros((K, H), deltas.dtype).at[ids].add(deltas.reshape(-1, H))  # (K, H)
        return dWT.T
    return jnp.einsum("tbh,btk->hk", deltas, xs)


@jax.jit
def bptt_core(params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array):
    r"""Hand BPTT on the batched layout; no checks.

    Args:
      params: the model.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      ys: ``(B, T)`` class ids.
      h0: ``(B, H)``.

    Returns:
      ``(E, grads, dh0, h_T)``: the loss, the gradients as :class:`Params`,
      :math:`\partial E/\partial h_0 = U^\top \delta_1` ``(B, H)``, and the
      final state :math:`h_T` ``(B, H)`` (to carry into the next chunk of a
      long stream).
    """
    U, V, W, _, _ = params
    T = xs.shape[1]
    C = V.shape[0]

    # Forward: the only sequential part is the h recursion.
    h_T, hs = hidden_states(params, xs, h0)  # (B, H), (T, B, H)
    z = output_logits(params, hs)  # (T, B, C)
    ys_tm = ys.T  # (T, B)
    E, log_yhat = log_softmax_loss(z, ys_tm)

    # Output layer, all steps at once (seed §5.1, §5.2; appendix 1).
    r = jnp.exp(log_yhat) - jax.nn.one_hot(ys_tm, C, dtype=z.dtype)  # (T, B, C): ŷ_t − y_t
    dV = jnp.einsum("tbc,tbh->ch", r, hs)  # Σ_t r_t ⊗ h_t
    dc = jnp.sum(r, axis=(0, 1))  # Σ_t r_t
    Vr = r @ V  # (T, B, H): Vᵀ r_t for every step

    # Recurrent layer: δ_t = (Vᵀ r_t + Uᵀ δ_{t+1}) ⊙ (1 − h_t ⊙ h_t), t = T..1.
    def step(delta_next, inputs):  # (B, H), ((B, H), (B, H))
        Vr_t, h_t = inputs
        delta = (Vr_t + delta_next @ U) * (1 - h_t * h_t)
        return delta, delta

    delta_1, deltas = lax.scan(step, jnp.zeros_like(h0), (Vr, hs), reverse=True)  # (T, B, H)

    h_prev = jnp.concatenate([h0[None], hs], axis=0)[:T]  # (T, B, H): h_0 .. h_{T-1}
    dU = jnp.einsum("tbi,tbj->ij", deltas, h_prev)  # Σ_t δ_t ⊗ h_{t−1}
    dW = input_gradient(deltas, xs, W.shape[1])  # Σ_t δ_t ⊗ x_t
    db = jnp.sum(deltas, axis=(0, 1))  # Σ_t δ_t
    dh0 = delta_1 @ U  # Uᵀ δ_1 (zero for T = 0: the carry never moves)
    return E, Params(U=dU, V=dV, W=dW, b=db, c=dc), dh0, h_T


def bptt(params: Params, xs, ys, h0=None) -> tuple[jax.Array, Params]:
    r"""The loss and its gradients by hand-derived backpropagation through time.

    .. math::

        \delta_t = (V^\top (\hat y_t - y_t) + U^\top \delta_{t+1})
                   \odot (1 - h_t \odot h_t),\quad \delta_{T+1} = 0

        \frac{\partial E}{\partial U} = \sum_t \delta_t \otimes h_{t-1},\
        \frac{\partial E}{\partial W} = \sum_t \delta_t \otimes x_t,\
        \frac{\partial E}{\partial b} = \sum_t \delta_t,\
        \frac{\partial E}{\partial V} = \sum_t (\hat y_t - y_t) \otimes h_t,\
        \frac{\partial E}{\partial c} = \sum_t (\hat y_t - y_t)

    One forward ``lax.scan`` over :math:`h` and one reverse ``lax.scan`` over
    :math:`\delta`; everything else is batched over all steps. No
    ``jax.grad``: the tests referee this against ``jax.grad(loss)`` and
    finite differences.

    Args:
      params: :class:`Params` ``U (H, H), V (C, H), W (H, K), b (H,), c (C,)``.
      xs: token ids ``(T,)`` / ``(B, T)`` or input vectors ``(T, K)`` /
        ``(B, T, K)``.
      ys: class ids ``(T,)`` / ``(B, T)`` in ``0..C-1``.
      h0: ``(H,)`` / ``(B, H)``; zeros when ``None``.

    Returns:
      ``(E, grads)``: the loss :math:`E` summed over steps and sequences (as
      :func:`loss`), and the gradients :math:`\partial E/\partial U, V, W, b,
      c` as a :class:`Params`. An empty sequence (T = 0) gives ``E = 0`` and
      zero gradients.

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> E, grads = bptt(params, jnp.array([0, 3, 1]), jnp.array([3, 1, 4]))
      >>> params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    """
    params, inp = check_inputs(params, xs, ys, h0, need_ys=True)
    E, grads, _, _ = bptt_core(params, inp.xs, inp.ys, inp.h0)
    return E, grads
