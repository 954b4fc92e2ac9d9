"""The seed's parameters, U, V, W, b, c, and their initialisation."""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._init import init_layer, init_matrix


class Params(NamedTuple):
    r"""Parameters of the seed's vanilla RNN.

    .. math::

        s_t = U h_{t-1} + W x_t + b,\quad h_t = \tanh(s_t),\quad z_t = V h_t + c

    ``K`` is the vocabulary (input) size, ``H`` the number of hidden units and
    ``C`` the number of output classes (``C == K`` for the seed's language
    model, different for sequence labelling). Being a ``NamedTuple`` it is a
    pytree: ``optax`` and ``jax.tree_util`` take it as is, and the gradients
    returned by :func:`bptt_jax.bptt` are a ``Params`` of the same shapes.
    """

    U: jax.Array  # (H, H) hidden -> hidden
    V: jax.Array  # (C, H) hidden -> output
    W: jax.Array  # (H, K) input -> hidden
    b: jax.Array  # (H,)   hidden bias
    c: jax.Array  # (C,)   output bias


def _positive_int(value, name: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def init_params(
    key: jax.Array,
    vocab_size: int,
    hidden_size: int,
    *,
    num_classes: int | None = None,
    dtype=jnp.float32,
    init: str = "uniform",
    spectral_radius: float | None = None,
) -> Params:
    r"""Initialise :class:`Params` for a vocabulary of ``K`` and ``H`` hidden units.

    ``U``, ``W`` and ``V`` are drawn from :math:`\mathcal{U}(-1/\sqrt{H}, 1/\sqrt{H})`,
    PyTorch's ``nn.RNN`` convention, which keeps :math:`\|U\|_2` near 1 and the
    pre-activations :math:`s_t` of order 1; ``b`` and ``c`` start at zero.
    ``init`` picks another scheme by name (:mod:`bptt_jax._init`): ``"normal"``
    (the seed's :math:`\mathcal N(0, 0.01^2)`), ``"uniform"`` (the default
    above), ``"orthogonal"``, ``"identity"`` (IRNN, for ReLU) or ``"spectral"``.

    Args:
      key: a ``jax.random`` key.
      vocab_size: ``K``, the number of input ids (columns of ``W``).
      hidden_size: ``H``, the number of hidden units.
      num_classes: ``C``, the number of output classes; defaults to ``K``
        (the seed's language model, where the label is the next input).
      dtype: a floating dtype for every parameter.
      init: the name of the initialisation scheme (``bptt_jax.inits``).
      spectral_radius: ``None``, or ρ > 0: rescale ``U`` so that its largest
        :math:`|\lambda_i(U)|` is ρ (required by ``init="spectral"``).

    Returns:
      ``Params(U (H, H), V (C, H), W (H, K), b (H,), c (C,))``.

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=65, hidden_size=128)
      >>> params.W.shape
      (128, 65)
    """
    K = _positive_int(vocab_size, "vocab_size")
    H = _positive_int(hidden_size, "hidden_size")
    C = K if num_classes is None else _positive_int(num_classes, "num_classes")
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype (float32, float64, ...), got {dtype}")
    kU, kV, kW = jax.random.split(key, 3)
    U, W = init_layer(kU, kW, K, H, init=init, spectral_radius=spectral_radius, dtype=dtype)
    return Params(
        U=U,
        V=init_matrix(kV, (C, H), H, init=init, dtype=dtype),
        W=W,
        b=jnp.zeros((H,), dtype),
        c=jnp.zeros((C,), dtype),
    )
