r"""Hand BPTT for stacked, bidirectional, variable-length RNNs (``docs/math.md`` §7).

Layers :math:`\ell = 1..L`, :math:`h_t^0 = x_t`, each with a forward-in-time
direction and (if bidirectional) a backward-in-time twin; a layer above a
bidirectional layer reads both directions concatenated:

.. math::

    s_t^\ell = U^\ell h_{t\mp1}^\ell + W^\ell h_t^{\ell-1} + b^\ell,\quad
    h_t^\ell = f(s_t^\ell),\quad z_t = V h_t^L + c

The backward pass, top layer first (``docs/math.md`` §7):

.. math::

    \delta_t^L &= (V^\top r_t + U^{L\top} \delta_{t\pm1}^L) \odot f'(h_t^L) \\
    \delta_t^\ell &= (W^{\ell+1\top} \delta_t^{\ell+1} + U^{\ell\top}
        \delta_{t\pm1}^\ell) \odot f'(h_t^\ell) \\
    \partial E/\partial U^\ell &= \textstyle\sum_t \delta_t^\ell \otimes h_{t\mp1}^\ell,\quad
    \partial E/\partial W^\ell = \textstyle\sum_t \delta_t^\ell \otimes h_t^{\ell-1},\quad
    \partial E/\partial b^\ell = \textstyle\sum_t \delta_t^\ell

Each direction of each layer is one reverse ``lax.scan`` (a forward one for
the backward-in-time direction); the coupling term
:math:`W^{\ell+1\top}\delta^{\ell+1}` and the output-layer products are
single batched operations over all steps.

Variable lengths: with a prefix ``mask`` ``(B, T)`` of real steps, a padded
step contributes no loss, keeps the carried state (:math:`h_t = h_{t-1}`, so
the final state is the state at the sequence's own end), outputs zeros and gets
zero gradient. The backward-in-time direction keeps its initial state through
the padding, so it starts at each sequence's own end. In the backward pass a
padded step passes the incoming state gradient through unchanged (the identity
:math:`\partial h_t/\partial h_{t-1}` of a frozen state) and has
:math:`\delta_t = 0`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .activations import get_activation
from .bptt import input_gradient
from .losses import log_softmax
from .params import DeepParams, Layer


def _project(W: jax.Array, X: jax.Array) -> jax.Array:
    """:math:`W x_t` for all steps: ``X`` time-major ``(T, B)`` ids or ``(T, B, D_in)``."""
    if jnp.issubdtype(X.dtype, jnp.integer):
        return jnp.take(W.T, X, axis=0, mode="fill")  # (T, B, H): gather of columns
    return X @ W.T  # (T, B, H)


def _run_direction(layer: Layer, X, h0, mask, *, reverse: bool, f):
    """One direction of one layer: ``(h_final (B, H), out (T, B, H))``, zeros at padding."""
    a = _project(layer.W, X) + layer.b  # (T, B, H)
    UT = layer.U.T

    def step(h_prev, inputs):
        a_t, m_t = inputs  # (B, H), (B, 1)
        h = f(h_prev @ UT + a_t)
        h = jnp.where(m_t, h, h_prev)  # padding: the state stays frozen
        return h, jnp.where(m_t, h, 0)

    return lax.scan(step, h0, (a, mask), reverse=reverse)


def _previous_states(out, h0, mask, *, reverse: bool):
    """The state each step read: h_{t-1} (forward) or h_{t+1} (backward in time)."""
    if reverse:
        prev = jnp.concatenate([out[1:], h0[None]])  # (T, B, H)
        valid = jnp.concatenate([mask[1:], jnp.zeros_like(mask[:1])])
    else:
        prev = jnp.concatenate([h0[None], out[:-1]])
        valid = jnp.concatenate([jnp.zeros_like(mask[:1]), mask[:-1]])
    return jnp.where(valid, prev, h0)


def _backprop_direction(layer: Layer, X, h0, out, mask, G, dh_final, *, reverse, df, K):
    """Hand BPTT through one direction of one layer.

    Args:
      G: ``(T, B, H)``: ∂E/∂(this direction's outputs) from above (Vᵀ r_t or
        W^{ℓ+1}ᵀ δ^{ℓ+1}), batched over all steps.
      dh_final: ``(B, H)``: the gradient arriving at this direction's final state.

    Returns:
      ``(grads Layer, dh0 (B, H), deltas (T, B, H))``.
    """

    def step(g, inputs):  # g: ∂E/∂h_t from the steps processed after t
        G_t, h_t, m_t = inputs
        delta = jnp.where(m_t, (G_t + g) * df(h_t), 0)
        return jnp.where(m_t, delta @ layer.U, g), delta  # padding: pass g through

    dh0, deltas = lax.scan(step, dh_final, (G, out, mask), reverse=not reverse)
    h_prev = _previous_states(out, h0, mask, reverse=reverse)
    dU = jnp.einsum("tbi,tbj->ij", deltas, h_prev)  # Σ_t δ_t ⊗ h_{t∓1}
    db = jnp.sum(deltas, axis=(0, 1))
    if jnp.issubdtype(X.dtype, jnp.integer):
        dW = input_gradient(deltas, X.T, K)  # scatter-add into columns x_t
    else:
        dW = jnp.einsum("tbh,tbd->hd", deltas, X)  # Σ_t δ_t ⊗ h_t^{ℓ−1}
    return Layer(U=dU, W=dW, b=db), dh0, deltas


def _forward(params: DeepParams, xs, h0, mask, activation):
    """All layers forward. Returns ``(per-layer inputs, per-cell outputs, finals, top)``."""
    f = get_activation(activation).f
    X = xs.T if xs.ndim == 2 else jnp.swapaxes(xs, 0, 1)  # (T, B) ids or (T, B, K)
    if X.ndim == 2:
        X = jnp.where(mask, X, 0)  # ids at padding are never read: keep them in range
    m = mask[..., None]  # (T, B, 1)
    D = params.num_directions
    inputs, outs, finals = [], [], []
    for l, cell in enumerate(params.cells()):
        inputs.append(X)
        layer_outs = []
        for d, layer in enumerate(cell):
            h_fin, out = _run_direction(layer, X, h0[l * D + d], m, reverse=d == 1, f=f)
            layer_outs.append(out)
            finals.append(h_fin)
        outs.append(layer_outs)
        X = jnp.concatenate(layer_outs, axis=-1) if D == 2 else layer_outs[0]  # (T, B, D*H)
    return inputs, outs, jnp.stack(finals), X


def _output_layer(params: DeepParams, top, ys_tm, mask, reduction):
    """Loss, r_t (masked, scaled for "mean"), and ∂E/∂V, ∂E/∂c."""
    z = top @ params.V.T + params.c  # (T, B, C)
    log_yhat = log_softmax(z)
    yhat = jnp.exp(log_yhat)
    if jnp.issubdtype(ys_tm.dtype, jnp.floating):
        e = -jnp.sum(jnp.where(ys_tm == 0, 0, ys_tm * log_yhat), axis=-1)  # (T, B)
        r = yhat * jnp.sum(ys_tm, axis=-1, keepdims=True) - ys_tm
    else:
        ys_tm = jnp.where(mask, ys_tm, 0)
        e = -jnp.take_along_axis(log_yhat, ys_tm[..., None], axis=-1, mode="fill")[..., 0]
        r = yhat - jax.nn.one_hot(ys_tm, z.shape[-1], dtype=z.dtype)
    scale = 1.0
    if reduction == "mean":
        scale = 1.0 / jnp.maximum(jnp.sum(mask), 1).astype(z.dtype)
    E = jnp.sum(jnp.where(mask, e, 0)) * scale
    r = jnp.where(mask[..., None], r, 0) * scale  # (T, B, C)
    dV = jnp.einsum("tbc,tbh->ch", r, top)
    dc = jnp.sum(r, axis=(0, 1))
    logits = jnp.where(mask[..., None], z, 0)
    return E, r, dV, dc, logits


def _full_mask(xs, mask):
    """Time-major ``(T, B)`` bool mask; all True when ``mask`` is None."""
    if mask is None:
        return jnp.ones(xs.shape[1::-1], bool)  # (T, B)
    return mask.T


def cell_outputs(params: DeepParams, xs, h0, mask, activation: str):
    """``(m (T, B), outs)``: the time-major mask and ``outs[l][d]`` ``(T, B, H)`` of every
    layer and direction (zeros at padding); batched layout, ``mask`` may be None."""
    m = _full_mask(xs, mask)
    _, outs, _, _ = _forward(params, xs, h0, m, activation)
    return m, outs


@functools.partial(jax.jit, static_argnames=("activation",))
def deep_forward_core(params: DeepParams, xs, h0, mask=None, *, activation="tanh"):
    """``(hs (B, T, D*H), logits (B, T, C), h_final (L*D, B, H))``; no checks."""
    m = _full_mask(xs, mask)
    _, _, finals, top = _forward(params, xs, h0, m, activation)
    logits = jnp.where(m[..., None], top @ params.V.T + params.c, 0)
    return jnp.swapaxes(top, 0, 1), jnp.swapaxes(logits, 0, 1), finals


@functools.partial(jax.jit, static_argnames=("activation", "reduction"))
def deep_loss_core(params: DeepParams, xs, ys, h0, mask=None, *, activation="tanh",
                   reduction="sum"):  # fmt: skip
    """The loss for the batched layout; differentiable by ``jax.grad`` (the referee)."""
    m = _full_mask(xs, mask)
    _, _, _, top = _forward(params, xs, h0, m, activation)
    return _output_layer(params, top, jnp.swapaxes(ys, 0, 1), m, reduction)[0]


def backward(params: DeepParams, inputs, outs, h0, mask, r, dh_final, *, activation: str):
    r"""The backward pass of every layer and direction, top layer first (§7).

    Args:
      params: :class:`DeepParams`.
      inputs, outs: per layer, the layer's input ``(T, B[, D_in])`` and, per
        direction, its outputs ``(T, B, H)`` (from the forward pass).
      h0: ``(L*D, B, H)``; mask: time-major ``(T, B)`` bool.
      r: :math:`\partial E/\partial z_t`, ``(T, B, C)`` (zero where no loss reads).
      dh_final: ``(L*D, B, H)``: the gradient arriving at the final states.

    Returns:
      ``(cells, dh0 (L*D, B, H), deltas (L*D, T, B, H))`` with ``cells[l][d]``
      the :class:`Layer` gradients of layer ``l + 1``, direction ``d``.
    """
    df = get_activation(activation).df_from_h
    cells = params.cells()
    D, H = params.num_directions, params.layers[0].U.shape[0]
    K = params.layers[0].W.shape[1]
    m = mask[..., None]  # (T, B, 1)
    G = r @ params.V  # (T, B, D*H): ∂E/∂(top outputs), all steps at once
    grads = [[None] * D for _ in cells]
    dh0 = [None] * (len(cells) * D)
    deltas = [None] * (len(cells) * D)
    for l in reversed(range(len(cells))):
        G_below = 0
        for d, layer in enumerate(cells[l]):
            i = l * D + d
            grads[l][d], dh0[i], deltas[i] = _backprop_direction(
                layer, inputs[l], h0[i], outs[l][d], m, G[..., d * H : (d + 1) * H],
                dh_final[i], reverse=d == 1, df=df, K=K,
            )  # fmt: skip
            if l > 0:
                G_below = G_below + deltas[i] @ layer.W  # W^{ℓ}ᵀ δ^{ℓ}: one batched product
        G = G_below
    return grads, jnp.stack(dh0), jnp.stack(deltas)


def layer_grads(params: DeepParams, cells, dV: jax.Array, dc: jax.Array) -> DeepParams:
    """:func:`backward`'s per-cell gradients and the output layer's as a :class:`DeepParams`."""
    return DeepParams(
        layers=tuple(g[0] for g in cells),
        reverse_layers=tuple(g[1] for g in cells) if params.bidirectional else (),
        V=dV,
        c=dc,
    )


def forward_and_output(params: DeepParams, xs, ys, h0, mask, activation, reduction):
    """Forward pass and output layer on the batched layout.

    Returns ``(inputs, outs, finals, m (T, B), E, r (T, B, C), dV, dc)``.
    """
    m = _full_mask(xs, mask)  # (T, B)
    inputs, outs, finals, top = _forward(params, xs, h0, m, activation)
    E, r, dV, dc, _ = _output_layer(params, top, jnp.swapaxes(ys, 0, 1), m, reduction)
    return inputs, outs, finals, m, E, r, dV, dc


@functools.partial(jax.jit, static_argnames=("activation", "reduction"))
def deep_bptt_core(params: DeepParams, xs, ys, h0, mask=None, dh_final=None, *,
                   activation="tanh", reduction="sum"):  # fmt: skip
    """Hand BPTT through every layer and direction; no checks.

    Args:
      params: :class:`DeepParams`.
      xs: ``(B, T)`` ids or ``(B, T, K)``; ys: ``(B, T)`` ids or ``(B, T, C)``.
      h0: ``(L*D, B, H)``; mask: ``(B, T)`` bool or None; dh_final: like h0 or None.

    Returns:
      ``(E, grads DeepParams, dh0 (L*D, B, H), h_final (L*D, B, H))``.
    """
    inputs, outs, finals, m, E, r, dV, dc = forward_and_output(
        params, xs, ys, h0, mask, activation, reduction
    )
    if dh_final is None:
        dh_final = jnp.zeros_like(h0)
    cells, dh0, _ = backward(params, inputs, outs, h0, m, r, dh_final, activation=activation)
    return E, layer_grads(params, cells, dV, dc), dh0, finals
