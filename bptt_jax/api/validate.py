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

from ..core.params import DeepParams, Params, from_deep, to_deep
from .arrays import (
    as_array,
    check_cell_state,
    check_ids,
    check_labels,
    check_mask,
    host_or_device,
)
from .device import Pending, device_checks, vary_alike
from .model_checks import check_model
from .options import check_activation, check_reduction
from .resets import check_resets

Model = Params | DeepParams


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
