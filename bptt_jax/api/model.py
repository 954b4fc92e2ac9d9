r"""The public forward pass and loss: checks once, then the jitted cores.

The model is the seed's vanilla RNN (``docs/math.md`` §2); :func:`forward` and
:func:`loss` take the seed's :class:`Params` or a :class:`DeepParams`.
"""

from __future__ import annotations

import jax

from ..core.deep import deep_forward_core, deep_loss_core
from ..core.params import DeepParams, Params, to_deep
from ..core.rnn import forward_core, loss_core
from .validate import check_activation, check_inputs, check_reduction


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
