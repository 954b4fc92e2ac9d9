"""The referees: gradients of the same loss NOT derived by hand.

These exist to check :func:`bptt_jax.bptt` and :func:`bptt_jax.bptt_per_loss`,
never to train with. The autodiff references differentiate the loss with
``jax.value_and_grad`` (truncation expressed by ``lax.stop_gradient`` on the
carried state, written independently of the hand code); the finite-difference
reference only evaluates the loss, so it shares no derivative code with either.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ..core.deep import deep_loss_core
from ..core.losses import cross_entropy, log_softmax
from ..core.options import DEFAULT
from ..core.rnn import hidden_states, loss_core, time_major


def _projection(params, xs, mm):
    """:math:`W x_t + b` for every step, ``(T, B, H)``: a gather for ids, else a product."""
    if jnp.issubdtype(xs.dtype, jnp.integer):
        return jnp.take(params.W.T, xs.T, axis=0, mode="fill") + params.b
    return mm(jnp.swapaxes(xs, 0, 1), params.W.T) + params.b


def chunked_loss(params, xs, ys, h0, *, options=DEFAULT):
    """The loss, with the carried state detached (``stop_gradient``) after every
    τ-th step: its autodiff gradient is BPTT cut every τ steps. Same value as
    :func:`bptt_jax.loss`. Batched layout, no checks. Every product at ``precision``
    (``jax.grad``'s transposed products too: JAX keeps a product's precision).
    ``options``: the cell's activation, ``truncate`` and ``precision``."""
    truncate, f = options.truncate, options.cell.f
    mm = functools.partial(jnp.matmul, precision=options.precision)
    if truncate is None:
        return loss_core(params, xs, ys, h0, options=options)
    a = _projection(params, xs, mm)  # (T, B, H)

    def step(h_prev, inputs):
        t, a_t = inputs  # t is 1-based
        h = f(mm(h_prev, params.U.T) + a_t)
        carried = jnp.where(t % truncate == 0, lax.stop_gradient(h), h)
        return carried, h

    _, hs = lax.scan(step, h0, (jnp.arange(1, a.shape[0] + 1), a))
    z = mm(hs, params.V.T) + params.c
    return cross_entropy(log_softmax(z), time_major(ys))


def windowed_loss(params, xs, ys, h0, *, options=DEFAULT):
    """The loss as a sum of E_t, each recomputed from a detached state τ steps
    back: its autodiff gradient is the sliding-window truncation of
    :func:`bptt_jax.bptt_per_loss`. Same value as :func:`bptt_jax.loss`.
    Batched layout, no checks; every product at ``options.precision``."""
    truncate, f = options.truncate, options.cell.f
    mm = functools.partial(jnp.matmul, precision=options.precision)
    if truncate is None:
        return loss_core(params, xs, ys, h0, options=options)
    _, hs = hidden_states(params, xs, h0, options)
    states = lax.stop_gradient(jnp.concatenate([h0[None], hs]))  # (T+1, B, H): h_0..h_T
    a = _projection(params, xs, mm)  # (T, B, H)
    ys_tm = time_major(ys)

    def E_t(t):  # 0-based loss index; the window is steps t-τ+1 .. t
        start = t - truncate + 1

        def step(h, i):
            j = start + i
            h_new = f(mm(h, params.U.T) + a[jnp.maximum(j, 0)])
            return jnp.where(j >= 0, h_new, h), None

        h, _ = lax.scan(step, states[jnp.maximum(start, 0)], jnp.arange(truncate))
        z = mm(h, params.V.T) + params.c  # (B, C)
        return cross_entropy(log_softmax(z), ys_tm[t])

    return jnp.sum(jax.vmap(E_t)(jnp.arange(xs.shape[1])))


_STATIC = ("options",)
_chunked_grad = jax.jit(jax.value_and_grad(chunked_loss), static_argnames=_STATIC)
_windowed_grad = jax.jit(jax.value_and_grad(windowed_loss), static_argnames=_STATIC)
_h0_grad = jax.jit(jax.grad(chunked_loss, argnums=3), static_argnames=_STATIC)

#: ``(E, grads)`` of :func:`bptt_jax.core.deep.deep_loss_core` (stacked,
#: bidirectional, padded, ``reduction="mean"``; the seed's Params as a one-layer
#: DeepParams) by ``jax.value_and_grad``. Batched layout, no checks.
deep_value_and_grad = jax.jit(
    jax.value_and_grad(deep_loss_core), static_argnames=("options", "reduction")
)
#: ∂E/∂h_0 ``(L*D, B, H)`` of the same loss by ``jax.grad``.
deep_h0_grad = jax.jit(
    jax.grad(deep_loss_core, argnums=3), static_argnames=("options", "reduction")
)


def zero_reset_loss(params, xs, ys, h0, resets, *, options=DEFAULT):
    r"""The loss of a training chunk whose documents start from zero: a reset at
    ``t`` makes the state entering step t zero, the row's first step reads ``h0``
    (:func:`bptt_jax.core.step.hand_bptt`'s rule), written with the public loss's
    own rule (a reset restores ``h0``) so as not to share the hand path's code.

    Each row is cut at its first reset: the part before it is a padded sequence
    from ``h0`` (``lengths`` = the first reset), the rest is shifted to the front
    and run from zeros with its resets (every later document then starts from
    zero too). The chunk's loss is the sum of the two. For a bidirectional model
    the right-to-left cells' rows of ``h0`` must be zero (as in training).

    Args:
      params: :class:`DeepParams`; xs, ys: ``(B, T)`` ids (ys may be ``(B, T, C)``);
      h0: ``(L*D, B, H)``; resets: ``(B, T)`` bool.
    """
    T = xs.shape[1]
    t = jnp.arange(T)
    first = jnp.where(jnp.any(resets, axis=1), jnp.argmax(resets, axis=1), T)  # (B,)
    head = deep_loss_core(params, xs, ys, h0, t < first[:, None], None, options=options)
    idx = jnp.minimum(t + first[:, None], T - 1)  # (B, T): the rest, shifted to the front
    shift = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    real = t < (T - first)[:, None]
    rest = deep_loss_core(params, shift(xs), shift(ys), jax.tree.map(jnp.zeros_like, h0), real,
                          shift(resets) & real, options=options)  # fmt: skip
    return head + rest


#: ``(E, grads)`` of :func:`zero_reset_loss` by ``jax.value_and_grad``.
zero_reset_value_and_grad = jax.jit(
    jax.value_and_grad(zero_reset_loss), static_argnames=("options",)
)
