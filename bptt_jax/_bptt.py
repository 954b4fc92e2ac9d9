r"""Backpropagation through time, derived by hand (the seed's §5).

No autodiff here: every gradient is the formula of ``shared/MATH.md``.

.. math::

    r_t &= \hat y_t - y_t \\
    \partial E/\partial V &= \textstyle\sum_t r_t \otimes h_t,\qquad
    \partial E/\partial c = \textstyle\sum_t r_t \\
    \delta_t &= (V^\top r_t + U^\top \delta_{t+1}) \odot f'(h_t),
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
The backward keeps only the forward's :math:`h_t`; :math:`f'` (for tanh
:math:`1 - h_t^2`) is recomputed from them inside the scan.

Truncation (``truncate=τ``) cuts the gradient every τ steps, as character
RNNs are trained on long text (k1 = k2 = τ): :math:`U^\top \delta_{t+1}` does
not flow into step :math:`t` when :math:`t` is a multiple of τ, so each chunk
of τ steps back-propagates within itself only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._activations import get_activation
from ._clipping import check_clip_delta
from ._losses import cross_entropy, log_softmax, residual
from ._params import Params
from ._rnn import hidden_states, output_logits, time_major
from ._validate import check_activation, check_inputs, check_truncate


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


def output_layer(params: Params, hs: jax.Array, ys_tm: jax.Array):
    r"""Loss and output-layer gradients for all steps at once.

    Args:
      params: the model.
      hs: :math:`h_t`, ``(T, B, H)``.
      ys_tm: labels, time-major: ids ``(T, B)`` or probabilities ``(T, B, C)``.

    Returns:
      ``(E, r, dV, dc)``: the loss, :math:`r_t = \partial E_t/\partial z_t`
      ``(T, B, C)`` (appendix 1), :math:`\sum_t r_t \otimes h_t` and
      :math:`\sum_t r_t`.
    """
    log_yhat = log_softmax(output_logits(params, hs))  # (T, B, C)
    E = cross_entropy(log_yhat, ys_tm)
    r = residual(log_yhat, ys_tm)  # (T, B, C): ŷ_t − y_t
    dV = jnp.einsum("tbc,tbh->ch", r, hs)  # Σ_t r_t ⊗ h_t
    dc = jnp.sum(r, axis=(0, 1))  # Σ_t r_t
    return E, r, dV, dc


def truncation_mask(T: int, truncate: int | None):
    r"""``(T,)`` bool: where :math:`U^\top\delta_{t+1}` flows into step t (False at cuts).

    Step t (1-based) is the last of its chunk when t % τ == 0; the gradient
    from the next chunk is cut there. ``None`` when nothing is cut. The last
    step always keeps its incoming gradient (``dh_T``, given by the caller).
    """
    if truncate is None or truncate >= T:
        return None
    t = jnp.arange(1, T + 1)
    return (t % truncate != 0) | (t == T)


@functools.partial(jax.jit, static_argnames=("activation", "truncate", "clip_delta"))
def bptt_core(
    params: Params,
    xs: jax.Array,
    ys: jax.Array,
    h0: jax.Array,
    dh_T: jax.Array | None = None,
    *,
    activation: str = "tanh",
    truncate: int | None = None,
    clip_delta: float | None = None,
):
    r"""Hand BPTT on the batched layout; no checks.

    Args:
      params: the model.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      ys: ``(B, T)`` class ids or ``(B, T, C)`` probabilities.
      h0: ``(B, H)``.
      dh_T: ``(B, H)``, the gradient of a later loss with respect to this
        chunk's final state :math:`h_T`, or ``None`` (zero). It enters the
        recursion as :math:`\delta_T = (V^\top r_T + dh_T) \odot f'(h_T)`.
      activation: the name of :math:`f`.
      truncate: cut the gradient every ``truncate`` steps, or ``None``.
      clip_delta: ``None``, or θ > 0: per-step clipping of δ (see :func:`bptt`).

    Returns:
      ``(E, grads, dh0, h_T)``: the loss, the gradients as :class:`Params`,
      :math:`\partial E/\partial h_0 = U^\top \delta_1` ``(B, H)``, and the
      final state :math:`h_T` ``(B, H)`` (to carry into the next chunk of a
      long stream).
    """
    U, _, W, _, _ = params
    T = xs.shape[1]
    df = get_activation(activation).df_from_h

    # Forward: the only sequential part is the h recursion.
    h_T, hs = hidden_states(params, xs, h0, activation)  # (B, H), (T, B, H)

    # Output layer, all steps at once (seed §5.1, §5.2; appendix 1).
    E, r, dV, dc = output_layer(params, hs, time_major(ys))
    Vr = r @ params.V  # (T, B, H): Vᵀ r_t for every step

    # Recurrent layer, t = T..1. The carry g is ∂E/∂h_t from the future,
    # Uᵀ δ_{t+1} (dh_T at t = T):  δ_t = (Vᵀ r_t + g) ⊙ f'(h_t),  g ← Uᵀ δ_t.
    keep = truncation_mask(T, truncate)

    def step(g, inputs):  # (B, H), ((B, H), (B, H)[, ()])
        Vr_t, h_t = inputs[:2]
        if keep is not None:
            g = jnp.where(inputs[2], g, 0)  # cut at chunk ends
        delta = (Vr_t + g) * df(h_t)
        if clip_delta is not None:  # each sequence's δ_t rescaled to norm ≤ θ
            norm = jnp.linalg.norm(delta, axis=-1, keepdims=True)  # (B, 1)
            over = norm > clip_delta
            delta = jnp.where(over, delta * (clip_delta / jnp.where(over, norm, 1)), delta)
        return delta @ U, delta

    g_T = jnp.zeros_like(h0) if dh_T is None else dh_T
    scanned = (Vr, hs) if keep is None else (Vr, hs, keep)
    # The final carry is Uᵀ δ_1 = ∂E/∂h_0 (dh_T itself when T = 0).
    dh0, deltas = lax.scan(step, g_T, scanned, reverse=True)  # (B, H), (T, B, H)

    h_prev = jnp.concatenate([h0[None], hs], axis=0)[:T]  # (T, B, H): h_0 .. h_{T-1}
    dU = jnp.einsum("tbi,tbj->ij", deltas, h_prev)  # Σ_t δ_t ⊗ h_{t−1}
    dW = input_gradient(deltas, xs, W.shape[1])  # Σ_t δ_t ⊗ x_t
    db = jnp.sum(deltas, axis=(0, 1))  # Σ_t δ_t
    return E, Params(U=dU, V=dV, W=dW, b=db, c=dc), dh0, h_T


def bptt(
    params: Params,
    xs,
    ys,
    h0=None,
    *,
    lengths=None,
    mask=None,
    reduction="sum",
    activation="tanh",
    truncate=None,
    clip_delta=None,
) -> tuple[jax.Array, Params]:
    r"""The loss and its gradients by hand-derived backpropagation through time.

    .. math::

        \delta_t = (V^\top (\hat y_t - y_t) + U^\top \delta_{t+1})
                   \odot f'(h_t),\quad \delta_{T+1} = 0

        \frac{\partial E}{\partial U} = \sum_t \delta_t \otimes h_{t-1},\
        \frac{\partial E}{\partial W} = \sum_t \delta_t \otimes x_t,\
        \frac{\partial E}{\partial b} = \sum_t \delta_t,\
        \frac{\partial E}{\partial V} = \sum_t (\hat y_t - y_t) \otimes h_t,\
        \frac{\partial E}{\partial c} = \sum_t (\hat y_t - y_t)

    with :math:`f'(h_t) = 1 - h_t \odot h_t` for the seed's tanh. One forward
    ``lax.scan`` over :math:`h` and one reverse ``lax.scan`` over
    :math:`\delta` (per layer and direction for a :class:`DeepParams`, see
    :mod:`bptt_jax._deep`); everything else is batched over all steps. No
    ``jax.grad``: the tests referee this against ``jax.grad(loss)`` and
    finite differences.

    Args:
      params: :class:`Params` ``U (H, H), V (C, H), W (H, K), b (H,), c (C,)``,
        or a :class:`DeepParams`.
      xs: token ids ``(T,)`` / ``(B, T)`` or input vectors ``(T, K)`` /
        ``(B, T, K)``.
      ys: class ids ``(T,)`` / ``(B, T)`` in ``0..C-1``, or soft labels
        ``(T, C)`` / ``(B, T, C)`` (probability rows summing to 1).
      h0: ``(H,)`` / ``(B, H)`` (DeepParams: ``(L*D, [B,] H)``); zeros when ``None``.
      lengths: ``(B,)`` real lengths, or ``mask`` ``(B, T)`` bool prefix mask:
        padding steps contribute no loss, freeze the state and get zero
        gradient.
      reduction: ``"sum"`` (the seed's E) or ``"mean"`` over the real steps.
      activation: :math:`f`: ``"tanh"`` (the seed's), ``"sigmoid"``, ``"relu"``.
      truncate: ``None`` for full BPTT, or τ ≥ 1 to cut the gradient every τ
        steps (chunks 1..τ, τ+1..2τ, ... each back-propagate within
        themselves). The loss is unchanged.
      clip_delta: ``None`` (exact BPTT), or θ > 0 for per-step clipping of
        δ inside the recursion: whenever a sequence's :math:`\|\delta_t\|_2 >
        θ` it is replaced by :math:`\delta_t\, θ/\|\delta_t\|_2` before it
        enters :math:`\partial E/\partial U, W, b` and propagates to step
        t − 1 as :math:`U^\top\delta_t`. Steps with :math:`\|\delta_t\|_2
        \le θ` are untouched, so the result is exact when θ is never
        reached; once it is, the returned "gradient" is by design NOT the
        gradient of :math:`E` (a remedy for exploding gradients, not a
        derivative). ``dV``, ``dc`` and the loss are never affected.
        ``truncate`` and ``clip_delta`` apply to the seed's :class:`Params`
        on unpadded sequences with ``reduction="sum"`` only.

    Returns:
      ``(E, grads)``: the loss (as :func:`loss`) and its gradients, a pytree
      like ``params``. An empty sequence (T = 0) gives ``E = 0`` and zero
      gradients.

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> E, grads = bptt(params, jnp.array([0, 3, 1]), jnp.array([3, 1, 4]))
      >>> params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    """
    E, grads, _, _ = bptt_chunk(
        params, xs, ys, h0, lengths=lengths, mask=mask, reduction=reduction,
        activation=activation, truncate=truncate, clip_delta=clip_delta,
    )  # fmt: skip
    return E, grads


def bptt_chunk(
    params: Params,
    xs,
    ys,
    h0=None,
    *,
    dh_T=None,
    lengths=None,
    mask=None,
    reduction="sum",
    activation="tanh",
    truncate=None,
    clip_delta=None,
) -> tuple[jax.Array, Params, jax.Array, jax.Array]:
    r"""Hand BPTT for one chunk of a longer stream: also ∂E/∂h_0 and h_T.

    A long sequence split into chunks is processed forward chunk by chunk,
    each starting from the previous chunk's final state ``h_T``. To
    back-propagate ACROSS chunks, process them backwards in time and pass
    each chunk the ``dh0`` of the chunk after it as ``dh_T``; the gradients
    then add up to those of the whole sequence. With ``dh_T=None`` every
    chunk is cut off from the future (truncated BPTT at chunk boundaries).

    .. math::

        \delta_T = (V^\top r_T + dh_T) \odot f'(h_T),\qquad
        \frac{\partial E}{\partial h_0} = U^\top \delta_1

    Args:
      params, xs, ys, h0, lengths, mask, reduction, activation, truncate,
        clip_delta: as for :func:`bptt`.
      dh_T: shaped like ``h0``: the gradient of the later chunks' loss with
        respect to this chunk's final state(s), or ``None`` (zero).

    Returns:
      ``(E, grads, dh0, h_T)``: as :func:`bptt`, plus :math:`\partial E /
      \partial h_0` and the final hidden state(s) :math:`h_T` (each
      sequence's own end when padded), each shaped like ``h0``.
    """
    from ._deep import deep_bptt_core
    from ._params import DeepParams, from_deep, to_deep
    from ._validate import check_reduction

    activation = check_activation(activation)
    truncate = check_truncate(truncate)
    reduction = check_reduction(reduction)
    clip_delta = check_clip_delta(clip_delta)
    params, inp = check_inputs(
        params, xs, ys, h0, dh_T=dh_T, lengths=lengths, mask=mask, need_ys=True
    )
    deep = isinstance(params, DeepParams)
    if not deep and inp.mask is None and reduction == "sum":
        E, grads, dh0, h_T = bptt_core(
            params, inp.xs, inp.ys, inp.h0, inp.dh_T, activation=activation,
            truncate=truncate, clip_delta=clip_delta,
        )  # fmt: skip
        return (E, grads, dh0, h_T) if inp.batched else (E, grads, dh0[0], h_T[0])
    if truncate is not None or clip_delta is not None:
        raise ValueError(
            "truncate and clip_delta are implemented for the seed's Params on unpadded "
            "sequences with reduction='sum'; for deep or padded inputs process chunks "
            "with bptt_chunk"
        )
    lift = (lambda a: a) if deep else (lambda a: None if a is None else a[None])
    E, grads, dh0, h_T = deep_bptt_core(
        params if deep else to_deep(params), inp.xs, inp.ys, lift(inp.h0), inp.mask,
        lift(inp.dh_T), activation=activation, reduction=reduction,
    )  # fmt: skip
    if not deep:
        grads, dh0, h_T = from_deep(grads), dh0[0], h_T[0]
    if not inp.batched:
        dh0, h_T = (dh0[:, 0], h_T[:, 0]) if deep else (dh0[0], h_T[0])
    return E, grads, dh0, h_T
