"""The model's checks: a :class:`Params` or :class:`DeepParams`, its shapes and dtypes,
and the cell the shapes say (:mod:`bptt_jax.core.cells`: ``U`` is ``(G·H, H)``). Part
of the one way in (:mod:`.validate`); each error one line naming what was expected.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ..core.cells import bias_size, cell_name_of_shape
from ..core.params import DeepParams, Layer, Params
from .arrays import as_array

Model = Params | DeepParams

_FIELD_NDIM = {"U": 2, "V": 2, "W": 2, "b": 1, "c": 1}
#: Row blocks of U and W per cell.
CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


class Dims(NamedTuple):
    K: int  # vocabulary size: columns of W
    H: int  # hidden units
    C: int  # output classes: rows of V
    cell: str = "rnn"  # the cell the shapes say (core.cells): U is (G·H, H)


def check_params(params: object) -> tuple[Params, Dims]:
    """Validates the shapes and dtypes of ``params``; returns them and (K, H, C)."""
    if not (isinstance(params, tuple) and len(params) == len(Params._fields)):
        raise TypeError(
            "params must be a bptt_jax.Params(U, V, W, b, c) "
            f"(see bptt_jax.init_params), got {type(params).__name__}"
        )
    params = Params(*params)  # a plain 5-tuple too
    leaves = {}
    for name in Params._fields:
        leaf = _leaf(getattr(params, name), f"params.{name}")
        if leaf.ndim != _FIELD_NDIM[name]:
            raise ValueError(
                f"params.{name} must have {_FIELD_NDIM[name]} dimensions, got shape {leaf.shape}"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"params.{name} must be floating point, got dtype {leaf.dtype}")
        leaves[name] = leaf
    params = Params(**leaves)
    U, V, W = params.U, params.V, params.W
    H, cell = U.shape[1], cell_of_U(U.shape, "params.U")
    G = U.shape[0] // max(H, 1)
    expected = {
        "W": (G * H, W.shape[1]),
        "b": (bias_size(cell, H),),
        "V": (V.shape[0], H),
        "c": (V.shape[0],),
    }
    for name, shape in expected.items():
        if getattr(params, name).shape != shape:
            raise ValueError(
                f"params.{name} has shape {getattr(params, name).shape}, expected {shape} "
                f"(the {cell} cell: U {(G * H, H)}, V (C, H), W {(G * H, 'K')}, b "
                f"{(bias_size(cell, H),)}, c (C,) with H = U.shape[1] = {H})"
            )
    dtypes = {name: getattr(params, name).dtype for name in Params._fields}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"params must share one floating dtype, got {dtypes}")
    return params, _dims(K=W.shape[1], H=H, C=V.shape[0], cell=cell)


def cell_of_U(shape: tuple[int, ...], name: str) -> str:
    """The cell a recurrent matrix's shape ``(G·H, H)`` says (``core.cells``), or a
    one-line ValueError naming the shapes each cell takes."""
    H = shape[1]
    cell = cell_name_of_shape(shape[0], H) if H >= 1 else "rnn"
    if cell is None:
        raise ValueError(
            f"{name} has shape {tuple(shape)}, expected (H, H) for the rnn cell, (4H, H) "
            f"for the lstm or (3H, H) for the gru, with H = {name}.shape[1] = {H}"
        )
    return cell


def _leaf(leaf: object, name: str):
    """A parameter as an array (kept as given when it already is one), or a TypeError."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return leaf
    if leaf is None or isinstance(leaf, str | bytes):
        raise TypeError(f"{name} must be a floating point array, got {leaf!r}")
    return as_array(leaf, name)


def _dims(K: int, H: int, C: int, cell: str = "rnn") -> Dims:
    """``Dims``, refusing a model without hidden units or classes (nothing to compute)."""
    if H < 1:
        raise ValueError(f"the model has H = {H} hidden units (U.shape[1]); expected H >= 1")
    if C < 1:
        raise ValueError(f"the model has C = {C} classes (V.shape[0]); expected C >= 1")
    return Dims(K=K, H=H, C=C, cell=cell)


def check_model(params: object) -> tuple[Model, Dims, bool]:
    """Validates a :class:`Params` or :class:`DeepParams`; returns it, (K, H, C) and
    whether it is the seed's :class:`Params`: the one test of the model's type the
    public calls make (kept in :attr:`Inputs.seed`)."""
    if isinstance(params, DeepParams):
        return (*check_deep_params(params), False)
    return (*check_params(params), True)


def _check_layer(layer, name: str, H: int, D_in: int, dtype, cell: str = "rnn") -> Layer:
    if not isinstance(layer, Layer):
        if isinstance(layer, tuple) and len(layer) == len(Layer._fields):
            layer = Layer(*layer)
        else:
            raise TypeError(
                f"{name} must be a bptt_jax.Layer(U, W, b), got {type(layer).__name__}"
            )
    leaves, G = {}, CELL_GATES[cell]
    for field, shape in (("U", (G * H, H)), ("W", (G * H, D_in)), ("b", (bias_size(cell, H),))):
        leaf = _leaf(getattr(layer, field), f"{name}.{field}")
        if leaf.shape != shape:
            raise ValueError(f"{name}.{field} has shape {leaf.shape}, expected {shape}")
        if leaf.dtype != dtype:
            raise TypeError(
                f"{name}.{field} has dtype {leaf.dtype}; all parameters must share {dtype}"
            )
        leaves[field] = leaf
    return Layer(**leaves)


def check_deep_params(params: DeepParams) -> tuple[DeepParams, Dims]:
    """Validates the shapes and dtypes of a :class:`DeepParams`; returns (K, H, C)."""
    layers, reverse = tuple(params.layers), tuple(params.reverse_layers)
    if len(layers) < 1:
        raise ValueError("DeepParams needs at least one layer (num_layers >= 1), got 0")
    if reverse and len(reverse) != len(layers):
        raise ValueError(
            f"a bidirectional DeepParams needs one reverse layer per layer: "
            f"{len(layers)} layers, {len(reverse)} reverse_layers"
        )
    first = layers[0]
    if not hasattr(first, "U") or not hasattr(first, "W"):
        raise TypeError(f"DeepParams.layers must hold bptt_jax.Layer, got {type(first).__name__}")
    U0, W0 = _leaf(first.U, "layers[0].U"), _leaf(first.W, "layers[0].W")
    if U0.ndim != 2 or W0.ndim != 2:
        raise ValueError(
            f"layers[0].U and .W must be matrices, got shapes {U0.shape} and {W0.shape}"
        )
    H, K, dtype = U0.shape[1], W0.shape[1], U0.dtype
    cell = cell_of_U(U0.shape, "layers[0].U")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"parameters must be floating point, got dtype {dtype}")
    D = 2 if reverse else 1
    checked = []
    for group, name in ((layers, "layers"), (reverse, "reverse_layers")):
        checked.append(
            tuple(
                _check_layer(layer, f"{name}[{l}]", H, K if l == 0 else D * H, dtype, cell)
                for l, layer in enumerate(group)
            )
        )
    V, c = _leaf(params.V, "V"), _leaf(params.c, "c")
    if V.ndim != 2 or V.shape[1] != D * H:
        raise ValueError(
            f"V has shape {V.shape}, expected (C, {D * H}): it reads the top layer's "
            f"{'two directions' if reverse else 'output'} (D*H = {D}*{H})"
        )
    C = V.shape[0]
    if c.shape != (C,):
        raise ValueError(f"c has shape {c.shape}, expected ({C},)")
    if V.dtype != dtype or c.dtype != dtype:
        raise TypeError(f"V and c must share the layers' dtype {dtype}, got {V.dtype}, {c.dtype}")
    return DeepParams(layers=checked[0], reverse_layers=checked[1], V=V, c=c), _dims(K, H, C, cell)
