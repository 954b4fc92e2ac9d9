r"""The one way in: every public function checks its arguments here, once.

:func:`prepare` validates the model, the arrays and the common options and
returns them in the batched layout of the jitted cores of :mod:`bptt_jax.core`;
:func:`as_deep` lifts the seed's :class:`Params` to the one-layer
:class:`DeepParams` layout where a path exists only for deep models;
:func:`unbatch` and :func:`state_like` hand results back in the caller's
layout; :func:`refuse` raises the error for an unsupported combination of
model and options. The cores assume well-formed inputs and contain no checks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..core.cells import bias_size, cell_name_of_shape
from ..core.params import DeepParams, Layer, Params, from_deep, to_deep
from .arrays import (
    as_array,
    check_cell_state,
    check_ids,
    check_labels,
    check_mask,
    host_or_device,
)
from .device import Pending, device_checks, vary_alike
from .options import check_activation, check_reduction
from .resets import check_resets

Model = Params | DeepParams

_FIELD_NDIM = {"U": 2, "V": 2, "W": 2, "b": 1, "c": 1}
#: Row blocks of U and W per cell.
CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


class Dims(NamedTuple):
    K: int  # vocabulary size: columns of W
    H: int  # hidden units
    C: int  # output classes: rows of V
    cell: str = "rnn"  # the cell the shapes say (core.cells): U is (G·H, H)


class Inputs(NamedTuple):
    """Inputs normalised to the batched layout that the jitted cores take."""

    xs: jax.Array  # (B, T) int ids or (B, T, K) dense, in the params' dtype
    ys: jax.Array | None  # (B, T) int class ids, or (B, T, C) probabilities
    h0: jax.Array  # (B, H); (L*D, B, H) for DeepParams; the LSTM's: a pair (h0, c0)
    dh_T: jax.Array | None  # like h0: incoming gradient at the final state, or None
    mask: jax.Array | None  # (B, T) bool prefix mask of the real steps, or None
    batched: bool  # False when the caller passed one sequence (T,) / (T, K)
    activation: str = "tanh"  # a name of bptt_jax.activations
    reduction: str = "sum"  # "sum" (the seed's E) or "mean" over the real steps
    resets: jax.Array | None = None  # (B, T) bool: where the state entering a step is h0
    pending: Pending | None = None  # device checks not yet made (check_inputs(defer=True))
    seed: bool = False  # the caller passed the seed's Params (states (B, H)): decided once
    cell: str = "rnn"  # the model's cell, from its shapes (core.cells)


def prepare(
    params: object, xs: object, ys: object = None, h0: object = None, *,
    activation: object = "tanh", reduction: object = "sum", resets: object = None,
    need_ys: bool = True, defer: bool = False, **arrays,
) -> tuple[Model, Inputs]:  # fmt: skip
    """Checks a public call's model, arrays, ``activation``, ``reduction`` and ``resets``.

    Returns the params and the :class:`Inputs` of :func:`check_inputs` (which takes
    ``arrays``: ``dh_T``, ``lengths``, ``mask``), with the checked ``activation``,
    ``reduction`` and ``resets`` in them (``defer``: as there).
    """
    activation = check_activation(activation)
    reduction = check_reduction(reduction)
    params, inp = check_inputs(params, xs, ys, h0, need_ys=need_ys, defer=defer, **arrays)
    steps_shape = inp.xs.shape[:2] if inp.batched else inp.xs.shape[1:2]
    resets = check_resets(resets, steps_shape, inp.mask)
    inp = inp._replace(activation=activation, reduction=reduction, resets=resets)
    # under jax.shard_map: every input varying over the same mesh axes (device.vary_alike)
    return (params, inp) if defer else vary_alike((params, inp))


def is_seed(inp: Inputs) -> bool:
    """True for the seed's own setting: :class:`Params` of the vanilla cell, no padding or
    resets, a sum."""
    plain = inp.mask is None and inp.resets is None and inp.reduction == "sum"
    return inp.seed and inp.cell == "rnn" and plain


def as_deep(params: Model, inp: Inputs) -> tuple[DeepParams, Inputs]:
    """The model as the one type the cores take: the seed's :class:`Params` as a
    one-layer :class:`DeepParams`, its states ``(1, B, H)`` (a pytree restructuring,
    so ``jax.grad`` through it returns a ``Params``). Results go back to the caller's
    model with :func:`grads_like` and :func:`state_like`."""
    if not inp.seed:
        return params, inp
    lift = lambda s: None if s is None else jax.tree.map(lambda a: a[None], s)  # noqa: E731
    pending = inp.pending  # (B, H) -> (1, B, H), every part of the state
    if pending is not None and pending.h0_shape is not None:
        pending = pending._replace(h0_shape=(1, *pending.h0_shape))
    return to_deep(params), inp._replace(h0=lift(inp.h0), dh_T=lift(inp.dh_T), pending=pending)


def grads_like(inp: Inputs, grads: DeepParams) -> Model:
    """Gradients of :func:`as_deep`'s model returned as a pytree like the caller's model."""
    return from_deep(grads) if inp.seed else grads


class Layout(NamedTuple):
    """How the caller's results are laid out: for the seed's :class:`Params` (states
    ``(B, H)``) or a DeepParams (``(L*D, B, H)``), for a batch or for one sequence."""

    seed: bool
    batched: bool


def restore(layout: Layout, grads: DeepParams, *states: jax.Array):
    """``(grads, *states)`` of the cores' model (:func:`as_deep`) in the caller's layout:
    traceable, so a core's executable returns them ready (no eager op per result)."""
    take = lambda s, i, axis: jax.tree.map(lambda a: jnp.take(a, i, axis=axis), s)  # noqa: E731
    if layout.seed:
        grads, states = from_deep(grads), tuple(take(s, 0, 0) for s in states)
    if not layout.batched:
        states = tuple(take(s, 0, 0 if layout.seed else 1) for s in states)
    return grads, *states


def unbatch(inp: Inputs, x, axis: int = 0):
    """Drops the batch ``axis`` of ``x`` (an array or a state pytree) when the caller
    passed one sequence."""
    return x if inp.batched else jax.tree.map(lambda a: jnp.take(a, 0, axis=axis), x)


def state_like(inp: Inputs, state):
    """A state of :func:`as_deep`'s model, ``(L*D, B, H)`` leaves, in the layout of
    ``h0``: ``(H,)`` / ``(B, H)`` for :class:`Params`, ``(L*D, [B,] H)`` for DeepParams."""
    if inp.seed:
        return unbatch(inp, jax.tree.map(lambda a: a[0], state))
    return unbatch(inp, state, axis=1)


def describe(params: Model, inp: Inputs) -> str:
    """The model and the options that left the seed's setting, for error messages."""
    parts = []
    if not inp.seed:
        kind = "bidirectional " if params.bidirectional else ""
        parts = [f"a {kind}DeepParams ({params.num_layers} layers)"]
    if inp.cell != "rnn":
        parts.append(f"the {inp.cell} cell")
    if inp.mask is not None:
        parts.append("lengths/mask")
    if inp.reduction != "sum":
        parts.append(f"reduction={inp.reduction!r}")
    return " with ".join(parts) or "the seed's Params"


def refuse(fn: str, given: list[str], params: Model, inp: Inputs, why: str) -> None:
    """ValueError naming ``fn``, the ``given`` options and the model, if any were given
    outside the seed's setting (:func:`is_seed`): for options implemented only there."""
    if given and not is_seed(inp):
        raise ValueError(
            f"{fn}: {', '.join(given)}: implemented for the seed's Params (rnn) on unpadded "
            f"sequences with reduction='sum' only, got {describe(params, inp)}; {why}"
        )


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


def _check_xs(xs: object, K: int, dtype: jnp.dtype) -> tuple[object, bool, bool]:
    """``(xs, ids, batched)``: ids ``(T,)``/``(B, T)`` (as given: a host array is
    range-checked before it is converted, by the caller, which knows the mask)
    or vectors ``(T, K)``/``(B, T, K)`` cast to ``dtype`` on the device."""
    xs = host_or_device(xs, "xs")
    ids = jnp.issubdtype(xs.dtype, jnp.integer)
    if ids:
        if xs.ndim not in (1, 2):
            raise ValueError(
                f"integer xs must be token ids of shape (T,) or (B, T), got shape {xs.shape}"
            )
        batched = xs.ndim == 2
    elif jnp.issubdtype(xs.dtype, jnp.floating):
        if xs.ndim not in (2, 3):
            raise ValueError(
                f"floating xs must be input vectors of shape (T, K) or (B, T, K), "
                f"got shape {xs.shape}"
            )
        if xs.shape[-1] != K:
            raise ValueError(
                f"xs vectors have size {xs.shape[-1]} in their last axis, expected "
                f"K = W.shape[1] = {K}"
            )
        batched = xs.ndim == 3
        xs = as_array(xs, "xs").astype(dtype)
    else:
        raise TypeError(
            f"xs must be integer token ids or floating input vectors, got dtype {xs.dtype}"
        )
    return xs, ids, batched


def check_inputs(
    params: object,
    xs: object,
    ys: object = None,
    h0: object = None,
    *,
    dh_T: object = None,
    lengths: object = None,
    mask: object = None,
    need_ys: bool,
    defer: bool = False,
) -> tuple[Model, Inputs]:
    """Validates the arguments of ``forward``/``loss``/``bptt`` and batches them.

    ``defer``: the checks made on the device are left to the caller, listed in
    ``Inputs.pending`` (``h0`` then ``None`` when not given): a public call whose
    core runs them in its own executable (:func:`checked` runs them alone).

    ``params`` is the seed's :class:`Params` or a :class:`DeepParams`. Returns
    the params and the inputs in the layout of the jitted cores: ``xs (B, T)``
    ids or ``(B, T, K)`` vectors cast to the params' dtype, ``ys (B, T)`` ids
    or ``(B, T, C)`` probabilities, ``h0 (B, H)`` for Params or
    ``(L*D, B, H)`` for DeepParams (zeros when ``None``), ``dh_T`` like ``h0``
    or ``None``, the ``(B, T)`` mask of real steps (from ``lengths`` or
    ``mask``) or ``None``, and whether the caller passed a batch.
    """
    params, (K, H, C, cell), seed = check_model(params)
    dtype = params.V.dtype
    stack = None if seed else params.num_layers * params.num_directions

    xs, ids, batched = _check_xs(xs, K, dtype)
    xs_shape = xs.shape
    steps_shape = xs_shape[:2] if batched else xs_shape[:1]  # (B, T) or (T,)
    steps = check_mask(lengths, mask, steps_shape, batched)
    flags = [steps.bad]  # device flags of bad values (device_checks makes b NaN)
    fold_x = fold_y = None  # K, C: device ids still to be checked there
    if ids:
        what = f"input ids for vocab_size K = W.shape[1] = {K}"
        xs, fold_x = check_ids(xs, K, "xs", what, steps, batched)  # (B, T)
    elif not batched:
        xs = xs[None]  # (1, T, K)
    if need_ys:
        ys, fold_y, flag = check_labels(ys, steps_shape, xs_shape, C, dtype, steps, batched)
        flags.append(flag)

    B = steps_shape[0] if batched else 1
    h0 = check_cell_state(h0, "h0", cell, B, H, batched, dtype, stack)
    dh_T = check_cell_state(dh_T, "dh_T", cell, B, H, batched, dtype, stack)
    pending = Pending(tuple(f for f in flags if f is not None), fold_x, fold_y,
                      (B, H) if stack is None else (stack, B, H), cell)  # fmt: skip
    inp = Inputs(xs=xs, ys=ys, h0=h0, dh_T=dh_T, mask=steps.mask, batched=batched,
                 pending=pending, seed=seed, cell=cell)  # fmt: skip
    return (params, inp) if defer else checked(params, inp)


def checked(params: Model, inp: Inputs) -> tuple[Model, Inputs]:
    """``(params, inp)`` after :func:`device_checks` of what ``inp.pending`` lists."""
    if inp.pending is None:
        return params, inp
    params, xs, ys, h0 = device_checks(params, inp.xs, inp.ys, inp.h0, inp.mask,
                                       *inp.pending)  # fmt: skip
    return params, inp._replace(xs=xs, ys=ys, h0=h0, pending=None)
