r"""Public, composable pieces with hand-derived VJPs: :func:`recurrence` and :func:`hand_loss`.

Both are ``jax.custom_vjp`` functions whose backward rule is the hand recursion of
:mod:`bptt_jax.core.recurrence` and :mod:`bptt_jax.core.hand_loss` (``docs/math.md`` §4,
§7), so ``jax.grad`` of a user's program that calls them runs no autodiff through the
recurrence.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ..core.hand_loss import hand_loss_jit
from ..core.params import DeepParams, Layer, Params
from ..core.recurrence import recurrence_jit
from .device import vary_alike
from .options import build_options, check_activation
from .resets import check_resets
from .validate import as_deep, check_inputs, state_like, unbatch

#: What :func:`recurrence` takes: a model, or recurrent parameters without an output layer.
Recurrent = Params | DeepParams | Layer | Sequence[Layer]


def _is_layers(params) -> bool:
    """A tuple or list of :class:`Layer` (a unidirectional stack), not a NamedTuple."""
    return (
        isinstance(params, tuple | list)
        and not hasattr(params, "_fields")
        and len(params) > 0
        and all(isinstance(layer, Layer) for layer in params)
    )


def _no_output_layer(params) -> bool:
    return (
        isinstance(params, Layer)
        or _is_layers(params)
        or (hasattr(params, "layers") and params.V is None and params.c is None)
    )


def _with_unused_head(params):
    """Recurrent parameters only (a :class:`Layer`, a sequence of them, or a
    :class:`DeepParams` with ``V = c = None``) as the model the core takes, with a
    zero output layer ``V (1, D*H)``, ``c (1,)`` that the recurrence never reads. The
    gradient of a user's program reaches the given leaves through this construction,
    so it comes back in the structure passed in."""
    if isinstance(params, Layer):
        V, c = _zero_head(params.U, 1)
        return Params(U=params.U, V=V, W=params.W, b=params.b, c=c)
    if _is_layers(params):  # a unidirectional stack
        params = DeepParams(layers=tuple(params), reverse_layers=(), V=None, c=None)
    V, c = _zero_head(params.layers[0].U if params.layers else None,
                      2 if params.reverse_layers else 1)  # fmt: skip
    return params._replace(V=V, c=c)


def _zero_head(U, D: int):
    """``V (1, D*H)``, ``c (1,)`` zeros in ``U``'s dtype (float32 when ``U`` is not a
    floating array: its own check then names it)."""
    shape, dtype = getattr(U, "shape", ()), getattr(U, "dtype", None)
    H = shape[0] if len(shape) == 2 else 1
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.zeros((1, D * H), dtype), jnp.zeros((1,), dtype)


def _setup(params, xs, ys, h0, lengths, resets, need_ys):
    params, inp = check_inputs(params, xs, ys, h0, lengths=lengths, need_ys=need_ys)
    steps_shape = inp.xs.shape[:2] if inp.batched else inp.xs.shape[1:2]
    # under jax.shard_map: every input varying over the same mesh axes (device.vary_alike)
    return vary_alike((params, inp, check_resets(resets, steps_shape, inp.mask)))


def recurrence(
    params: Recurrent,
    xs: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    activation: str = "tanh",
    lengths: ArrayLike | None = None,
    resets: ArrayLike | None = None,
    kernel: str = "auto",
    precision: str | jax.lax.Precision | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""The RNN's hidden states, as a differentiable building block with a hand VJP.

    .. math::

        h_t = f(U h^{\mathrm{in}}_t + W x_t + b),\qquad
        h^{\mathrm{in}}_t = h_0 \text{ at } t = 1 \text{ and at resets, else } h_{t-1}

    Equivalent to the loop ``h = h0; for t: h = f(U @ (h0 if reset[t] else h) + W @ x[t]
    + b); hs.append(h)``. ``jax.grad`` of any program around it calls the hand backward
    (``docs/math.md`` §4): given :math:`g_t = \partial L/\partial h_t` for every ``t`` and
    :math:`\partial L/\partial h_T`,

    .. math::

        \delta_t = (g_t + U^\top \delta_{t+1}) \odot f'(h_t),\quad
        \partial L/\partial U = \textstyle\sum_t \delta_t \otimes h^{\mathrm{in}}_t,\quad
        \partial L/\partial W = \textstyle\sum_t \delta_t \otimes x_t,\quad
        \partial L/\partial x_t = W^\top \delta_t

    with :math:`\partial L/\partial h_T` entering at ``t = T`` and no
    :math:`U^\top\delta_{t}` flowing into step ``t - 1`` across a reset (it goes to
    :math:`h_0`). The output layer ``V, c`` is unused: its cotangent is zero. Integer ids
    get no cotangent (JAX's float0 zeros).

    Reverse mode only: ``jax.jvp`` and ``jax.jacfwd`` of it raise JAX's
    ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function.``
    ``jax.hessian`` (forward over reverse) works: it differentiates the hand backward
    rule, which is plain JAX code.

    :class:`DeepParams` (any number of layers, bidirectional or not) run layer by layer
    (``docs/math.md`` §7); the result is the top layer's outputs, both directions
    concatenated. For the backward-in-time direction a reset at ``t`` ends a document at
    ``t - 1``: the reverse-direction state entering step ``t - 1`` is :math:`h_0`. So each
    segment between resets runs, in both directions, exactly as if alone.

    Args:
      params: the recurrent parameters, no output layer needed: a :class:`Layer`
        ``(U (H, H), W (H, K), b (H,))``; a tuple or list of Layers, a unidirectional
        stack (``W (H, H)`` above the first); a :class:`DeepParams`, whose ``V`` and
        ``c`` may be ``None``; or the seed's :class:`Params` (``V``, ``c`` unused, their
        cotangent zero). ``jax.grad`` returns the gradients in the structure passed in.
      xs: ids ``(T,)`` / ``(B, T)`` or vectors ``(T, K)`` / ``(B, T, K)`` (in the params'
        dtype: these get a gradient, :math:`W^\top\delta_t`).
      h0: ``(H,)`` / ``(B, H)`` (a stack, DeepParams: ``(L*D, [B,] H)``); zeros when
        ``None``. Also the state every reset restarts from.
      activation: :math:`f`: ``"tanh"``, ``"sigmoid"`` or ``"relu"``.
      lengths: ``None`` or ``(B,)`` (a scalar for one sequence): past its length a
        sequence's state is frozen and its outputs are zero.
      resets: ``None`` or bool ``(B, T)`` / ``(T,)``: True where a sequence starts afresh
        (the state entering that step is ``h0``); ``(T,)`` with a batch: the same steps
        of every sequence. A reset on a padded step is a ValueError (checked on
        concrete arrays; ignored under tracing).
      kernel: ``"scan"``, ``"pallas"`` or ``"auto"`` for both recursions, the forward
        one and the hand backward's δ one (as :func:`bptt_jax.bptt`).
      precision: of every matrix product, forward and hand backward: ``"default"``,
        ``"high"``, ``"highest"`` or a ``jax.lax.Precision``; ``None`` (the default) is
        JAX's default matmul precision (see :func:`bptt_jax.bptt`).

    Returns:
      ``(hs, h_T)``: ``hs`` ``([B,] T, D*H)`` (``D*H = H`` for a Layer, Params or a
      unidirectional stack) and the final state(s), shaped like ``h0``.

    Example:
      >>> params = bptt_jax.init_params(jax.random.key(0), vocab_size=5, hidden_size=3)
      >>> hs, h_T = recurrence(params, jnp.array([[0, 1, 2]]))
      >>> hs.shape, h_T.shape
      ((1, 3, 3), (1, 3))
      >>> layer = bptt_jax.Layer(U=params.U, W=params.W, b=params.b)  # no V, c
      >>> jax.grad(lambda l: recurrence(l, jnp.array([0, 1]))[0].sum())(layer)._fields
      ('U', 'W', 'b')
    """
    activation = check_activation(activation)
    if _no_output_layer(params):
        params = _with_unused_head(params)
    params, inp, resets = _setup(params, xs, None, h0, lengths, resets, need_ys=False)
    options = build_options(activation, params, inp.xs, "recurrence", kernel=kernel,
                            precision=precision)  # fmt: skip
    deep, d = as_deep(params, inp)  # the seed's Params as one layer (differentiably)
    hs, h_T = recurrence_jit(deep, d.xs, d.h0, d.mask, resets, options)
    return unbatch(inp, hs), state_like(inp, h_T)


def hand_loss(
    params: Params | DeepParams,
    xs: ArrayLike,
    ys: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    activation: str = "tanh",
    lengths: ArrayLike | None = None,
    resets: ArrayLike | None = None,
    reduction: str = "sum",
    kernel: str = "auto",
    precision: str | jax.lax.Precision | None = None,
) -> jax.Array:
    r"""The seed's loss :math:`E = -\sum_t y_t^\top \log \hat y_t`, whose VJP is hand BPTT.

    The value equals :func:`bptt_jax.loss` (with ``resets`` as in :func:`recurrence`);
    ``jax.grad(hand_loss)`` returns the hand gradients of the whole model, output layer
    included (:math:`r_t = \hat y_t - y_t`, :math:`\partial E/\partial V = \sum_t r_t
    \otimes h_t`, :math:`\partial E/\partial c = \sum_t r_t`, then the δ recursion with
    :math:`g_t = V^\top r_t`), computed in the forward pass and scaled by the cotangent.
    With token ids in and class ids out (any model, ``lengths``, ``resets``, either
    reduction) that is one call of the chunked hand BPTT that :func:`bptt_jax.bptt` runs,
    at its cost and with no ``(T, B, C)`` array. Dense inputs get
    :math:`W^\top\delta_t`, soft labels :math:`-\log\hat y_t`, ``h0``
    :math:`U^\top\delta_1` (plus the reset steps' terms).
    Reverse mode only, as :func:`recurrence`.

    Args:
      params, xs, h0, activation, lengths, resets, precision: as :func:`recurrence`.
      ys: class ids ``(T,)`` / ``(B, T)`` or probabilities ``(T, C)`` / ``(B, T, C)``.
      reduction: ``"sum"`` (the seed's E) or ``"mean"`` over the real steps.
      kernel: ``"scan"``, ``"pallas"`` or ``"auto"``, as :func:`recurrence`.

    Returns:
      The scalar ``E``.

    Example:
      >>> grads = jax.grad(hand_loss)(params, xs, ys)  # a Params: dU, dV, dW, db, dc
    """
    activation = check_activation(activation)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if _no_output_layer(params):
        raise TypeError(
            "hand_loss needs the output layer: a Params or a DeepParams with V and c; "
            "recurrent parameters alone (a Layer, a sequence of them) are for recurrence"
        )
    params, inp, resets = _setup(params, xs, ys, h0, lengths, resets, need_ys=True)
    options = build_options(activation, params, inp.xs, "hand_loss", kernel=kernel,
                            precision=precision)  # fmt: skip
    deep, d = as_deep(params, inp)  # the seed's Params as one layer (differentiably)
    return hand_loss_jit(deep, d.xs, d.ys, d.h0, d.mask, resets, options, reduction)
