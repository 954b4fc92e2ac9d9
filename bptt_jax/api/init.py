"""The public constructor of a model: :func:`init_params`, its keywords checked in
:func:`bptt_jax.core.params.init_params` (which takes the scheme as one value)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..core.init import Scheme
from ..core.params import DeepParams, Params
from ..core.params import init_params as _init_params


def init_params(
    key: jax.Array,
    vocab_size: int,
    hidden_size: int,
    *,
    num_classes: int | None = None,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: jnp.dtype | str | type = jnp.float32,
    init: str = "uniform",
    spectral_radius: float | None = None,
    cell: str = "rnn",
    forget_bias: float = 0.0,
) -> Params | DeepParams:
    r"""Initialise the parameters for a vocabulary of ``K`` and ``H`` hidden units.

    By default every weight matrix (``U``, ``W``, ``V``) is drawn from
    :math:`\mathcal{U}(-1/\sqrt{H}, 1/\sqrt{H})`, PyTorch's ``nn.RNN``
    convention, which keeps :math:`\|U\|_2` near 1 and the pre-activations
    :math:`s_t` of order 1; biases start at zero. ``init`` picks another
    scheme by name (:mod:`bptt_jax.core.init`): ``"normal"`` (the seed's
    :math:`\mathcal N(0, 0.01^2)`), ``"uniform"`` (the default above),
    ``"orthogonal"``, ``"identity"`` (IRNN, for ReLU) or ``"spectral"``; it
    applies to every layer and direction of a deep RNN.

    Args:
      key: a ``jax.random`` key.
      vocab_size: ``K``, the number of input ids (columns of the first ``W``).
      hidden_size: ``H``, the number of hidden units per layer and direction.
      num_classes: ``C``, the number of output classes; defaults to ``K``
        (the seed's language model, where the label is the next input).
      num_layers: ``L >= 1`` stacked hidden layers (seed §2.4).
      bidirectional: add a backward-in-time twin to every layer.
      dtype: a floating dtype for every parameter; float64 needs x64 enabled
        (``jax.config.update("jax_enable_x64", True)``): without it, a ValueError.
      init: the name of the initialisation scheme (``bptt_jax.inits``).
      spectral_radius: ``None``, or ρ > 0: rescale ``U`` so that its largest
        :math:`|\lambda_i(U)|` is ρ (required by ``init="spectral"``); for a gated
        cell, each gate's ``(H, H)`` block.
      cell: ``"rnn"`` (the seed's), ``"lstm"`` or ``"gru"`` (``docs/math.md`` §10,
        §11): ``U (G·H, H)``, ``W (G·H, D_in)`` with ``G`` = 1, 4 (gates i, f, g, o)
        or 3 (r, z, n), each gate's block drawn as the scheme draws an ``(H, H)``
        / ``(H, D_in)`` matrix; ``b`` is ``(H,)``, ``(4H,)`` or the GRU's ``(4H,)``
        ``[b_r; b_z; b_in; b_hn]``, zero.
      forget_bias: the LSTM's forget-gate bias (the f block of ``b``); 0 as in
        PyTorch's ``nn.LSTM`` (whose biases are drawn around 0). Only for
        ``cell="lstm"``.

    Returns:
      The seed's ``Params(U (H, H), V (C, H), W (H, K), b (H,), c (C,))`` when
      ``num_layers == 1`` and not bidirectional; otherwise a
      :class:`DeepParams` (see its shapes).

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=65, hidden_size=128)
      >>> params.W.shape
      (128, 65)
      >>> deep = init_params(jax.random.key(0), 65, 128, num_layers=2, bidirectional=True)
      >>> deep.layers[1].W.shape, deep.V.shape
      ((128, 256), (65, 256))
    """
    scheme = Scheme(init=init, spectral_radius=spectral_radius, cell=cell, forget_bias=forget_bias)
    return _init_params(
        key, vocab_size, hidden_size, num_classes=num_classes, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype, scheme=scheme,
    )  # fmt: skip
