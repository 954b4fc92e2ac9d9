r"""The seed's forward pass and loss.

.. math::

    s_t = U h_{t-1} + W x_t + b,\quad h_t = f(s_t),\quad
    z_t = V h_t + c,\quad \hat y_t = \mathrm{softmax}(z_t),\quad
    E = \sum_t E_t = -\sum_t y_t^\top \log \hat y_t

Only the recursion over ``h`` is sequential (one ``lax.scan``). The input
projection ``W x_t + b`` for all steps is computed before the scan (a gather of
columns of ``W`` for token ids), and the logits ``z_t`` for all steps after it,
as single batched operations over all ``T * B`` steps. ``f`` is the seed's
tanh by default, or any activation of :mod:`bptt_jax._activations`.

The private ``*_core`` functions take the batched, validated layout of
:func:`bptt_jax._validate.check_inputs` and contain no checks; the public
functions validate, then call them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._activations import get_activation
from ._losses import cross_entropy, log_softmax
from ._params import Params
from ._validate import check_activation, check_inputs


def matmuls(matmul_dtype, acc_dtype):
    """``(mm, einsum)``: plain, or with operands cast to ``matmul_dtype`` and accumulated in
    ``acc_dtype`` (mixed precision: ``matmul_dtype=jnp.bfloat16``)."""
    if matmul_dtype is None:
        return jnp.matmul, jnp.einsum

    def mm(a, b):
        return jnp.matmul(
            a.astype(matmul_dtype), b.astype(matmul_dtype), preferred_element_type=acc_dtype
        )

    def einsum(spec, a, b):
        return jnp.einsum(
            spec, a.astype(matmul_dtype), b.astype(matmul_dtype), preferred_element_type=acc_dtype
        )

    return mm, einsum


def input_projection(W: jax.Array, xs: jax.Array, matmul_dtype=None) -> jax.Array:
    r"""Returns :math:`W x_t` for every step, time-major ``(T, B, H)``.

    Args:
      W: ``(H, K)``.
      xs: ``(B, T)`` integer ids -- then :math:`W x_t` for the one-hot
        :math:`x_t` is column ``x_t`` of ``W``, a gather -- or ``(B, T, K)``
        dense vectors, then a matrix product.
      matmul_dtype: ``None``, or the dtype of that product's operands (see
        :func:`matmuls`).
    """
    if jnp.issubdtype(xs.dtype, jnp.integer):
        # mode="fill": an id out of range (only possible when validation was
        # skipped under tracing) gives NaN instead of a silently clamped column.
        return jnp.take(W.T, xs.T, axis=0, mode="fill")  # (T, B, H)
    return matmuls(matmul_dtype, W.dtype)[1]("btk,hk->tbh", xs, W)  # (T, B, H)


def hidden_states(
    params: Params,
    xs: jax.Array,
    h0: jax.Array,
    activation: str = "tanh",
    *,
    unroll: int = 1,
    matmul_dtype=None,
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

    Returns:
      ``(h_T, hs)``: the final state ``(B, H)`` (``h0`` when T = 0) and
      :math:`h_1 \ldots h_T`, time-major ``(T, B, H)``.
    """
    f = get_activation(activation).f
    mm, _ = matmuls(matmul_dtype, params.U.dtype)
    a = input_projection(params.W, xs, matmul_dtype) + params.b  # (T, B, H): W x_t + b
    UT = params.U.T if matmul_dtype is None else params.U.T.astype(matmul_dtype)  # (H, H)

    def step(h_prev, a_t):  # (B, H), (B, H)
        h = f(mm(h_prev, UT) + a_t)  # h_t = f(s_t), s_t = U h_{t-1} + W x_t + b
        return h, h

    h_T, hs = lax.scan(step, h0, a, unroll=unroll)  # (B, H), (T, B, H)
    return h_T, hs


def output_logits(params: Params, hs: jax.Array) -> jax.Array:
    r""":math:`z_t = V h_t + c` for all steps at once: ``(T, B, H) -> (T, B, C)``."""
    return hs @ params.V.T + params.c


def time_major(a: jax.Array) -> jax.Array:
    """``(B, T, ...) -> (T, B, ...)``."""
    return jnp.swapaxes(a, 0, 1)


@functools.partial(jax.jit, static_argnames="activation")
def forward_core(params: Params, xs: jax.Array, h0: jax.Array, *, activation: str = "tanh"):
    """``(B, T[, K]), (B, H) -> hs (B, T, H), logits (B, T, C)``; no checks."""
    _, hs = hidden_states(params, xs, h0, activation)  # (T, B, H)
    z = output_logits(params, hs)  # (T, B, C)
    return time_major(hs), time_major(z)


@functools.partial(jax.jit, static_argnames="activation")
def loss_core(
    params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array, *, activation: str = "tanh"
) -> jax.Array:
    """``E`` for the batched layout (``ys`` ids ``(B, T)`` or probabilities ``(B, T, C)``)."""
    _, hs = hidden_states(params, xs, h0, activation)  # (T, B, H)
    return cross_entropy(log_softmax(output_logits(params, hs)), time_major(ys))


def forward(
    params: Params,
    xs,
    h0=None,
    *,
    lengths=None,
    mask=None,
    activation="tanh",
    return_state=False,
):
    r"""All hidden states and all logits of the RNN.

    .. math::

        s_t = U h_{t-1} + W x_t + b,\quad h_t = f(s_t),\quad z_t = V h_t + c

    Args:
      params: the seed's :class:`Params` ``U (H, H), V (C, H), W (H, K), b (H,),
        c (C,)``, or a :class:`DeepParams` (stacked / bidirectional).
      xs: token ids ``(T,)`` or ``(B, T)`` (integers in ``0..K-1``), or input
        vectors ``(T, K)`` / ``(B, T, K)`` (the seed's :math:`x_t`: one-hot or
        any dense input; cast to the params' dtype).
      h0: initial state :math:`h_0`, ``(H,)`` for one sequence or ``(B, H)``
        for a batch (DeepParams: ``(L*D, H)`` / ``(L*D, B, H)``); zeros when
        ``None``.
      lengths: ``(B,)`` (a scalar for one sequence): the number of real steps
        of each sequence; steps past it are padding. Or give ``mask``.
      mask: ``(B, T)`` (``(T,)``) bool, True on real steps, a prefix per row.
      activation: :math:`f`, one of ``"tanh"`` (the seed's), ``"sigmoid"``,
        ``"relu"``.
      return_state: also return the final state(s).

    Returns:
      ``(hs, logits)``: the top layer's :math:`h_1..h_T` ``(T, H)`` /
      ``(B, T, H)`` (``D*H`` wide for a bidirectional DeepParams) and
      :math:`z_1..z_T` ``(T, C)`` / ``(B, T, C)``, zero at padding; with
      ``return_state`` also the final state, shaped like ``h0`` (at each
      sequence's own end when padded).

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> hs, logits = forward(params, jnp.array([0, 3, 1]))
      >>> hs.shape, logits.shape
      ((3, 8), (3, 5))
    """
    from ._deep import deep_forward_core
    from ._params import DeepParams, to_deep

    activation = check_activation(activation)
    params, inp = check_inputs(params, xs, None, h0, lengths=lengths, mask=mask, need_ys=False)
    if isinstance(params, Params) and inp.mask is None:
        hs, z = forward_core(params, inp.xs, inp.h0, activation=activation)
        h_T = hs[:, -1] if hs.shape[1] else inp.h0
    else:
        deep = isinstance(params, DeepParams)
        h0 = inp.h0 if deep else inp.h0[None]
        hs, z, h_T = deep_forward_core(
            params if deep else to_deep(params), inp.xs, h0, inp.mask, activation=activation
        )
        h_T = h_T if deep else h_T[0]
    if not inp.batched:
        hs, z = hs[0], z[0]
        h_T = h_T[0] if h_T.ndim == 2 else h_T[:, 0]
    return (hs, z, h_T) if return_state else (hs, z)


def loss(
    params: Params,
    xs,
    ys,
    h0=None,
    *,
    lengths=None,
    mask=None,
    reduction="sum",
    activation="tanh",
) -> jax.Array:
    r"""The seed's loss :math:`E = \sum_t E_t = -\sum_t y_t^\top \log \hat y_t`.

    Summed over the steps and, for a batch, over the sequences (or, with
    ``reduction="mean"``, averaged over the real steps). Differentiable with
    ``jax.grad`` (that is how the tests referee :func:`bptt`).

    Args:
      params: :class:`Params` or :class:`DeepParams`.
      xs: ids ``(T,)`` / ``(B, T)`` or vectors ``(T, K)`` / ``(B, T, K)``.
      ys: class ids ``(T,)`` / ``(B, T)`` in ``0..C-1``, or soft labels:
        probability vectors ``(T, C)`` / ``(B, T, C)`` (rows summing to 1).
      h0: ``(H,)`` / ``(B, H)`` (DeepParams: ``(L*D, [B,] H)``), zeros when ``None``.
      lengths, mask: the real steps of each sequence (see :func:`forward`);
        padding steps contribute nothing.
      reduction: ``"sum"`` (the seed's E) or ``"mean"`` over the real steps.
      activation: ``"tanh"`` (default), ``"sigmoid"`` or ``"relu"``.

    Returns:
      The scalar ``E``, in the params' dtype. An empty sequence (T = 0) gives 0.
    """
    from ._deep import deep_loss_core
    from ._params import DeepParams, to_deep
    from ._validate import check_reduction

    activation = check_activation(activation)
    reduction = check_reduction(reduction)
    params, inp = check_inputs(params, xs, ys, h0, lengths=lengths, mask=mask, need_ys=True)
    if isinstance(params, Params) and inp.mask is None and reduction == "sum":
        return loss_core(params, inp.xs, inp.ys, inp.h0, activation=activation)
    deep = isinstance(params, DeepParams)
    return deep_loss_core(
        params if deep else to_deep(params),
        inp.xs,
        inp.ys,
        inp.h0 if deep else inp.h0[None],
        inp.mask,
        activation=activation,
        reduction=reduction,
    )
