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

from .backward import make_ctx, run_cell
from .losses import cross_entropy, log_softmax
from .options import DEFAULT, Options
from .params import Layer, Params


def hidden_states(
    params: Params | Layer, xs: jax.Array, h0: jax.Array, options: Options = DEFAULT
) -> tuple[jax.Array, jax.Array]:
    r"""Runs :math:`h_t = f(U h_{t-1} + W x_t + b)` for t = 1..T (the cell of ``options``).

    The input projection :math:`a_t = W x_t + b` of every step is one batched
    operation before the scan (a gather of columns of ``W`` for ids); only the
    recursion over :math:`h` is sequential: a ``lax.scan`` of the cell's step, or the
    fused Pallas kernel (``options.kernel == "pallas"``; ``unroll`` then unused) -- the
    chunked driver's own runner (:mod:`.backward`), without padding or resets.

    Args:
      params: the model (its ``U``, ``W``, ``b``).
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      h0: ``(B, H)`` (the LSTM's: a pair).
      options: the cell and how to run it (:class:`~bptt_jax.core.options.Options`).

    Returns:
      ``(h_T, hs)``: the final state (like ``h0``: ``(B, H)``, the LSTM's a pair;
      ``h0`` when T = 0) and the outputs :math:`h_1 \ldots h_T`, time-major
      ``(T, B, H)``.
    """
    ctx = make_ctx(options, params.U.dtype)
    s_T, traces = run_cell(ctx, params, time_major(xs), h0, h0, None, None)  # no padding/resets
    return s_T, options.cell.output(traces)


def output_logits(params: Params, hs: jax.Array, options: Options = DEFAULT) -> jax.Array:
    r""":math:`z_t = V h_t + c` for all steps at once: ``(T, B, H) -> (T, B, C)``, the
    product at ``options.precision``."""
    return jnp.matmul(hs, params.V.T, precision=options.precision) + params.c


def time_major(a: jax.Array) -> jax.Array:
    """``(B, T, ...) -> (T, B, ...)``."""
    return jnp.swapaxes(a, 0, 1)


@functools.partial(jax.jit, static_argnames=("options",))
def forward_core(params: Params, xs: jax.Array, h0: jax.Array, *, options: Options = DEFAULT):
    """``(B, T[, K]), (B, H) -> hs (B, T, H), logits (B, T, C)``; no checks."""
    _, hs = hidden_states(params, xs, h0, options)
    z = output_logits(params, hs, options)  # (T, B, C)
    return time_major(hs), time_major(z)


@functools.partial(jax.jit, static_argnames=("options",))
def loss_core(
    params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array, *, options: Options = DEFAULT
) -> jax.Array:
    """``E`` for the batched layout (``ys`` ids ``(B, T)`` or probabilities ``(B, T, C)``)."""
    _, hs = hidden_states(params, xs, h0, options)
    z = output_logits(params, hs, options)
    return cross_entropy(log_softmax(z), time_major(ys))
