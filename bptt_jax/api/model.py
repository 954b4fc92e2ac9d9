r"""The public forward pass and loss: checks once, then the jitted cores.

The model is the seed's vanilla RNN (``docs/math.md`` §2); :func:`forward` and
:func:`loss` take the seed's :class:`Params` or a :class:`DeepParams`.
"""

from __future__ import annotations

import jax

from ..core.deep import deep_forward_core, deep_loss_core
from .options import build_options
from .validate import Model, as_deep, prepare, state_like, unbatch


def forward(
    params: Model,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    activation: str = "tanh",
    return_state: bool = False,
    resets: jax.Array | None = None,
    kernel: str = "auto",
    precision: str | jax.lax.Precision | None = None,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
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
      resets: ``None`` or bool ``(B, T)`` / ``(T,)``: True where a sequence starts
        afresh -- the state entering that step is ``h0`` instead of :math:`h_{t-1}`
        (a stream of documents, each from zero). The backward-in-time direction of a
        bidirectional layer mirrors it: a reset at t ends the previous document at
        t − 1. A reset on a padded step is a ValueError. ``(T,)`` with a batch:
        the same steps of every sequence (broadcast over the batch).
      kernel: ``"scan"``, ``"pallas"`` or ``"auto"``: how the h recursion runs
        (as :func:`bptt_jax.bptt`).
      precision: the precision of every matrix product: ``"default"``,
        ``"high"``, ``"highest"`` or a ``jax.lax.Precision``; ``None`` (the
        default) is JAX's default matmul precision (see :func:`bptt_jax.bptt`).

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

    params, inp = prepare(params, xs, None, h0, lengths=lengths, mask=mask,
                          activation=activation, need_ys=False, resets=resets)  # fmt: skip
    options = build_options(inp.activation, params, inp.xs, "forward", kernel=kernel,
                            precision=precision)  # fmt: skip
    deep, d = as_deep(params, inp)
    hs, z, h_T = deep_forward_core(deep, d.xs, d.h0, d.mask, d.resets, options=options)
    h_T = state_like(inp, h_T)
    hs, z = unbatch(inp, hs), unbatch(inp, z)
    return (hs, z, h_T) if return_state else (hs, z)


def loss(
    params: Model,
    xs: jax.Array,
    ys: jax.Array,
    h0: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    reduction: str = "sum",
    activation: str = "tanh",
    resets: jax.Array | None = None,
    kernel: str = "auto",
    precision: str | jax.lax.Precision | None = None,
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
      resets: per-step restarts from ``h0``, as :func:`forward`.
      kernel: ``"scan"``, ``"pallas"`` or ``"auto"`` (as :func:`bptt_jax.bptt`). The
        Pallas kernel has no autodiff rule and ``jax.grad`` of this loss is the referee,
        so here ``"auto"`` is always the scan; a forced ``"pallas"`` gives the value only.
      precision: of every matrix product, as :func:`forward`.

    Returns:
      The scalar ``E``, in the params' dtype. An empty sequence (T = 0) gives 0.
    """

    params, inp = prepare(params, xs, ys, h0, lengths=lengths, mask=mask,
                          activation=activation, reduction=reduction, resets=resets)  # fmt: skip
    options = build_options(inp.activation, params, inp.xs, "loss", precision=precision,
                            kernel="scan" if kernel == "auto" else kernel)  # fmt: skip
    deep, d = as_deep(params, inp)
    return deep_loss_core(
        deep, d.xs, d.ys, d.h0, d.mask, d.resets, options=options, reduction=d.reduction
    )
