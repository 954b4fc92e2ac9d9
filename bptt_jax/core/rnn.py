r"""The seed's forward pass and loss.

.. math::

    s_t = U h_{t-1} + W x_t + b,\quad h_t = f(s_t),\quad
    z_t = V h_t + c,\quad \hat y_t = \mathrm{softmax}(z_t),\quad
    E = \sum_t E_t = -\sum_t y_t^\top \log \hat y_t

Only the recursion over ``h`` is sequential (one ``lax.scan``). The input
projection ``W x_t + b`` for all steps is computed before the scan (a gather of
columns of ``W`` for token ids), and the logits ``z_t`` for all steps after it,
as single batched operations over all ``T * B`` steps. ``f`` is the seed's
tanh by default, or any activation of :mod:`bptt_jax.core.activations`.

The private ``*_core`` functions take the batched, validated layout of
:func:`bptt_jax.api.validate.check_inputs` and contain no checks; the public
functions validate, then call them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .activations import get_activation
from .kernels import forward_recursion
from .losses import cross_entropy, log_softmax
from .params import Params


def matmuls(matmul_dtype, acc_dtype, precision=None):
    """``(mm, einsum)``: plain, or with operands cast to ``matmul_dtype`` and accumulated in
    ``acc_dtype`` (mixed precision: ``matmul_dtype=jnp.bfloat16``); every product at
    ``precision`` (a ``jax.lax.Precision``, or ``None``: JAX's default matmul precision,
    the ``jax_default_matmul_precision`` config when the product is traced)."""
    if matmul_dtype is None:
        return (
            functools.partial(jnp.matmul, precision=precision),
            functools.partial(jnp.einsum, precision=precision),
        )

    def mm(a, b):
        return jnp.matmul(
            a.astype(matmul_dtype), b.astype(matmul_dtype), precision=precision,
            preferred_element_type=acc_dtype,
        )  # fmt: skip

    def einsum(spec, a, b):
        return jnp.einsum(
            spec, a.astype(matmul_dtype), b.astype(matmul_dtype), precision=precision,
            preferred_element_type=acc_dtype,
        )  # fmt: skip

    return mm, einsum


def input_projection(W: jax.Array, xs: jax.Array, matmul_dtype=None, precision=None) -> jax.Array:
    r"""Returns :math:`W x_t` for every step, time-major ``(T, B, H)``.

    Args:
      W: ``(H, K)``.
      xs: ``(B, T)`` integer ids -- then :math:`W x_t` for the one-hot
        :math:`x_t` is column ``x_t`` of ``W``, a gather -- or ``(B, T, K)``
        dense vectors, then a matrix product.
      matmul_dtype: ``None``, or the dtype of that product's operands (see
        :func:`matmuls`).
      precision: that product's ``jax.lax.Precision`` (see :func:`matmuls`).
    """
    if jnp.issubdtype(xs.dtype, jnp.integer):
        # mode="fill": an id out of range (only possible when validation was
        # skipped under tracing) gives NaN instead of a silently clamped column.
        return jnp.take(W.T, xs.T, axis=0, mode="fill")  # (T, B, H)
    return matmuls(matmul_dtype, W.dtype, precision)[1]("btk,hk->tbh", xs, W)  # (T, B, H)


def hidden_states(
    params: Params,
    xs: jax.Array,
    h0: jax.Array,
    activation: str = "tanh",
    *,
    unroll: int = 1,
    matmul_dtype=None,
    kernel: str = "scan",
    precision=None,
) -> tuple[jax.Array, jax.Array]:
    r"""Runs :math:`h_t = f(U h_{t-1} + W x_t + b)` for t = 1..T.

    Args:
      params: the model.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      h0: ``(B, H)``.
      activation: the name of :math:`f` (default the seed's ``"tanh"``).
      unroll: ``lax.scan``'s ``unroll``.
      matmul_dtype: ``None``, or the dtype of every product's operands (see
        :func:`matmuls`).
      kernel: ``"scan"`` (a ``lax.scan``) or ``"pallas"`` (the fused kernel of
        :mod:`bptt_jax.core.kernels`; ``unroll`` then unused).
      precision: every product's ``jax.lax.Precision`` (see :func:`matmuls`).

    Returns:
      ``(h_T, hs)``: the final state ``(B, H)`` (``h0`` when T = 0) and
      :math:`h_1 \ldots h_T`, time-major ``(T, B, H)``.
    """
    f = get_activation(activation).f
    mm, _ = matmuls(matmul_dtype, params.U.dtype, precision)
    a = input_projection(params.W, xs, matmul_dtype, precision) + params.b  # (T, B, H): W x_t + b
    UT = params.U.T if matmul_dtype is None else params.U.T.astype(matmul_dtype)  # (H, H)
    if kernel == "pallas":
        hs = forward_recursion(a, h0, UT, activation=activation, precision=precision)
        return (hs[-1] if hs.shape[0] else h0), hs

    def step(h_prev, a_t):  # (B, H), (B, H)
        h = f(mm(h_prev, UT) + a_t)  # h_t = f(s_t), s_t = U h_{t-1} + W x_t + b
        return h, h

    h_T, hs = lax.scan(step, h0, a, unroll=unroll)  # (B, H), (T, B, H)
    return h_T, hs


def output_logits(params: Params, hs: jax.Array, precision=None) -> jax.Array:
    r""":math:`z_t = V h_t + c` for all steps at once: ``(T, B, H) -> (T, B, C)``."""
    return jnp.matmul(hs, params.V.T, precision=precision) + params.c


def time_major(a: jax.Array) -> jax.Array:
    """``(B, T, ...) -> (T, B, ...)``."""
    return jnp.swapaxes(a, 0, 1)


@functools.partial(jax.jit, static_argnames=("activation", "kernel", "precision"))
def forward_core(
    params: Params, xs: jax.Array, h0: jax.Array, *, activation: str = "tanh", kernel="scan",
    precision=None,
):  # fmt: skip
    """``(B, T[, K]), (B, H) -> hs (B, T, H), logits (B, T, C)``; no checks."""
    _, hs = hidden_states(params, xs, h0, activation, kernel=kernel, precision=precision)
    z = output_logits(params, hs, precision)  # (T, B, C)
    return time_major(hs), time_major(z)


@functools.partial(jax.jit, static_argnames=("activation", "kernel", "precision"))
def loss_core(
    params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array, *, activation: str = "tanh",
    kernel: str = "scan", precision=None,
) -> jax.Array:  # fmt: skip
    """``E`` for the batched layout (``ys`` ids ``(B, T)`` or probabilities ``(B, T, C)``)."""
    _, hs = hidden_states(params, xs, h0, activation, kernel=kernel, precision=precision)
    z = output_logits(params, hs, precision)
    return cross_entropy(log_softmax(z), time_major(ys))
