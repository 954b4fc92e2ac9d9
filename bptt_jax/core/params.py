"""The seed's parameters, U, V, W, b, c, and their initialisation."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .cells import CELL_NAMES, bias_size
from .checks import check_float_dtype, check_key, check_number
from .init import DEFAULT_SCHEME, Scheme, init_layer, init_matrix


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

    def deep(self) -> DeepParams:
        """This model as the one-layer, one-direction :class:`DeepParams` (the drivers'
        one model type)."""
        layer = Layer(U=self.U, W=self.W, b=self.b)
        return DeepParams(layers=(layer,), reverse_layers=(), V=self.V, c=self.c)

    def restore(self, grads: DeepParams, *states):
        """``(grads, *states)`` of :meth:`deep`'s model in this model's layout: gradients
        as :class:`Params`, each part of a state ``(1, B, H) -> (B, H)``."""
        return from_deep(grads), *(jax.tree.map(lambda a: a[0], s) for s in states)


class Layer(NamedTuple):
    r"""One direction of one hidden layer of a deep RNN (seed §2.4).

    .. math::

        s_t^\ell = U^\ell h_{t-1}^\ell + W^\ell h_t^{\ell-1} + b^\ell,\qquad
        h_t^\ell = f(s_t^\ell),\qquad h_t^0 = x_t
    """

    U: jax.Array  # (H, H)    hidden -> hidden, within the layer
    W: jax.Array  # (H, D_in) layer below -> this layer: D_in = K for layer 1,
    #                         H above it (2H when bidirectional)
    b: jax.Array  # (H,)


class DeepParams(NamedTuple):
    r"""Parameters of a stacked (``L`` layers), optionally bidirectional RNN.

    ``layers[l]`` is layer ``l + 1`` reading the sequence forward in time;
    ``reverse_layers[l]`` its twin reading it backward in time (an empty tuple
    when the RNN is unidirectional). The output layer reads the top layer:
    :math:`z_t = V [h_t^{L,\rightarrow}; h_t^{L,\leftarrow}] + c`.

    Shapes, with ``D = 2`` if bidirectional else ``1``::

        layers[0].W           (H, K)       layers[l].W, l >= 1   (H, D*H)
        layers[l].U           (H, H)       layers[l].b           (H,)
        reverse_layers[l]     as layers[l]
        V                     (C, D*H)     c                     (C,)

    With ``L = 1`` and one direction this is the seed's model:
    ``layers[0] = Layer(U, W, b)`` (see :func:`to_deep` / :func:`from_deep`).
    States (``h0``, final states, their gradients) are stacked
    ``(L*D, H)`` per sequence, or ``(L*D, B, H)`` for a batch, in PyTorch's
    order: index ``l*D + d`` is layer ``l + 1``, direction ``d`` (0 forward,
    1 backward in time).
    """

    layers: tuple[Layer, ...]
    reverse_layers: tuple[Layer, ...]
    V: jax.Array  # (C, D*H)
    c: jax.Array  # (C,)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def bidirectional(self) -> bool:
        return len(self.reverse_layers) > 0

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def cells(self) -> list[tuple[Layer, ...]]:
        """``cells()[l][d]``: layer ``l + 1``, direction ``d``."""
        if self.bidirectional:
            return [(f, r) for f, r in zip(self.layers, self.reverse_layers, strict=True)]
        return [(f,) for f in self.layers]

    def deep(self) -> DeepParams:
        """This model, already the drivers' type."""
        return self

    def restore(self, grads: DeepParams, *states):
        """``(grads, *states)`` as they are: the drivers' layout is this model's."""
        return grads, *states


def to_deep(params: Params | DeepParams) -> DeepParams:
    """The model as a :class:`DeepParams`: the seed's :class:`Params` as one layer in one
    direction, a DeepParams as it is (a pytree restructuring: ``jax.grad`` through it
    returns the caller's type)."""
    return params.deep()  # each model type says how it is one


def from_deep(params: DeepParams) -> Params:
    """A one-layer, one-direction :class:`DeepParams` as the seed's :class:`Params`."""
    if params.num_layers != 1 or params.bidirectional:
        raise ValueError(
            f"only a 1-layer unidirectional DeepParams is the seed's Params; got "
            f"{params.num_layers} layers, bidirectional={params.bidirectional}"
        )
    (layer,) = params.layers
    return Params(U=layer.U, V=params.V, W=layer.W, b=layer.b, c=params.c)


def as_layers(params: Params | DeepParams, state: jax.Array) -> tuple[DeepParams, jax.Array]:
    """The one model type of the drivers: the seed's :class:`Params` as a one-layer
    :class:`DeepParams` and its state ``(B, H)`` as ``(1, B, H)``; a DeepParams as is.
    :func:`like` turns results back."""
    deep = to_deep(params)
    return deep, (state if deep is params else jax.tree.map(lambda s: s[None], state))


def like(params: Params | DeepParams, grads: DeepParams, *states: jax.Array):
    """``(grads, *states)`` of :func:`as_layers`'s model in the layout of ``params``."""
    return params.restore(grads, *states)


def seed_case(params: DeepParams, mask=None, resets=None, reduction: str = "sum",
              cell=None) -> bool:  # fmt: skip
    """Whether a call is the seed's own setting: the vanilla cell (``cell`` ``None`` or
    named ``"rnn"``), one layer in one direction, no padding, no resets, the summed
    loss. The one test the core makes before a path that exists
    only there (the per-loss form's sliding window, :mod:`.deep_per_loss`)."""
    one_cell = params.num_layers == 1 and not params.bidirectional
    one_cell = one_cell and (cell is None or cell.name == "rnn")
    return one_cell and mask is None and resets is None and reduction == "sum"


def _check_cell(cell: object, forget_bias: object) -> tuple[int, float]:
    """``(G, forget_bias)`` of a checked ``cell`` name; a one-line error otherwise."""
    if not isinstance(cell, str) or cell not in CELL_NAMES:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELL_NAMES))}, got {cell!r}")
    forget_bias = check_number(forget_bias, "forget_bias", minimum=-math.inf, strict=False)
    if cell != "lstm" and forget_bias != 0:
        raise ValueError(f"forget_bias is the LSTM's forget-gate bias; cell={cell!r} has none")
    return {"rnn": 1, "lstm": 4, "gru": 3}[cell], forget_bias


def _count(value: object, name: str) -> int:
    return check_number(value, name, integer=True, minimum=1, strict=False)


def init_params(
    key: jax.Array,
    vocab_size: int,
    hidden_size: int,
    *,
    num_classes: int | None = None,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: jnp.dtype | str | type = jnp.float32,
    scheme: Scheme = DEFAULT_SCHEME,
) -> Params | DeepParams:
    """The parameters of :func:`bptt_jax.init_params` (documented there), with the
    initialisation and the cell as one value, ``scheme``
    (:class:`~bptt_jax.core.init.Scheme`); checked here, as the lab and the
    application call it directly."""
    key = check_key(key)
    K = check_number(vocab_size, "vocab_size", integer=True, minimum=1, strict=False)
    H = check_number(hidden_size, "hidden_size", integer=True, minimum=1, strict=False)
    C = (
        K
        if num_classes is None
        else check_number(num_classes, "num_classes", integer=True, minimum=1, strict=False)
    )
    L = check_number(num_layers, "num_layers", integer=True, minimum=1, strict=False)
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
    dtype = check_float_dtype(dtype)  # float64 without x64: an error, not float32
    init, spectral_radius, cell, forget_bias = scheme
    G, forget_bias = _check_cell(cell, forget_bias)
    D = 2 if bidirectional else 1

    def layer(kU, kW, D_in):  # each gate's block as the scheme draws one (H, H) / (H, D_in)
        keys = (jax.random.split(kU, G), jax.random.split(kW, G))
        pairs = zip(*keys, strict=True) if G > 1 else [(kU, kW)]
        blocks = [init_layer(ku, kw, D_in, H, init=init, spectral_radius=spectral_radius,
                             dtype=dtype) for ku, kw in pairs]  # fmt: skip
        U, W = (jnp.concatenate(m) if G > 1 else m[0] for m in zip(*blocks, strict=True))
        b = jnp.zeros((bias_size(cell, H),), dtype)
        return Layer(U=U, W=W, b=b.at[H : 2 * H].set(forget_bias) if cell == "lstm" else b)

    if L == 1 and not bidirectional:
        kU, kV, kW = jax.random.split(key, 3)
        one = layer(kU, kW, K)
        V = init_matrix(kV, (C, H), H, init=init, dtype=dtype)
        return Params(U=one.U, V=V, W=one.W, b=one.b, c=jnp.zeros((C,), dtype))

    kV, *kcells = jax.random.split(key, 1 + L * D)

    cells = [[layer(*jax.random.split(kcells[l * D + d]), K if l == 0 else D * H)
              for d in range(D)] for l in range(L)]  # fmt: skip
    return DeepParams(
        layers=tuple(c[0] for c in cells),
        reverse_layers=tuple(c[1] for c in cells) if bidirectional else (),
        V=init_matrix(kV, (C, D * H), H, init=init, dtype=dtype),
        c=jnp.zeros((C,), dtype),
    )
