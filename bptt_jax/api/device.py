"""The checks of a public call that are made on the device, in one jitted call.

A value in a ``jax.Array`` argument (an id out of range, a bad length, mask or soft
label) is checked without reading it back to the host (:mod:`.arrays`): the checks
leave device flags and ids still to fold, listed in a :class:`Pending`, and
:func:`device_checks` makes them all at once -- as a call of its own, or traced
inside a core's executable (``bptt_jax.api.gradients``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..core.cells import cell_named
from ..core.params import DeepParams, Params
from .arrays import fold_ids

Model = Params | DeepParams


class Pending(NamedTuple):
    """The device checks of a call, to be made by :func:`device_checks` (see there)."""

    flags: tuple[jax.Array, ...]  # device flags of bad values found so far
    fold_x: int | None  # K when xs are device ids still to be checked
    fold_y: int | None  # C when ys are device ids still to be checked
    h0_shape: tuple[int, ...]  # of the zero h0 (each part) when h0 was not given
    cell: str = "rnn"  # the model's cell: the structure of its state


def _poison(tree, bad: jax.Array):
    """Every floating leaf of ``tree`` times 1, or times NaN where ``bad`` (a scalar flag)
    is set. A product, not a ``where``: its derivative is that factor too, so a gradient
    JAX's autodiff takes through a public call (``jax.grad(hand_loss)``) is NaN in every
    leaf -- a ``where`` would pass a zero cotangent to its replaced operand, and a leaf
    whose cotangent is structurally zero (``V``, ``c`` in ``recurrence``) is NaN as
    ``0 * NaN``. Exact when not ``bad`` (``x * 1 == x``)."""

    def poison(x):
        if x is None or not jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        return x * jnp.where(bad, jnp.nan, 1).astype(x.dtype)

    return jax.tree.map(poison, tree)


@functools.partial(jax.jit, static_argnames=("fold_x", "fold_y", "h0_shape", "cell", "hand"))
def device_checks(params: Model, xs, ys, h0, mask, flags, fold_x, fold_y, h0_shape, cell="rnn",
                  hand=False):  # fmt: skip
    """Every check of a call that is made on the device, in one dispatch.

    Folds the ids of ``xs`` (``fold_x`` = K) and ``ys`` (``fold_y`` = C) when they
    are still to be checked (:func:`.arrays.fold_ids`: out of range at a real step
    -> a NaN-reading id), and makes every parameter, ``h0`` and floating ``xs``/``ys``
    NaN when any of those or of ``flags`` (bad lengths, masks, soft labels) is set
    (:func:`_poison`): the loss, the outputs, the final state and every gradient leaf
    -- the library's and those JAX's autodiff takes through the call -- all come out
    NaN, without reading anything back to the host. ``h0`` ``None``: the ``cell``'s
    zero state of ``h0_shape`` (each part) in the params' dtype. ``hand``: for a call
    whose gradients are the hand BPTT's (no autodiff through it, ``bptt``), only the
    biases, ``h0`` and floating ``xs``/``ys`` are multiplied: a NaN there reaches
    every output, without a pass over the weight matrices (at K = 10000, ``V`` and
    ``W`` are 2.6 M entries each). One call instead of one per check:
    each small dispatch, and the core waiting on its result, cost the CPU about
    0.1 ms (``docs/performance.md``, the public call's checks).
    """
    flags = list(flags)
    if fold_x is not None:
        xs, flag = fold_ids(xs, fold_x, mask)
        flags.append(flag)
    if fold_y is not None:
        ys, flag = fold_ids(ys, fold_y, mask)
        flags.append(flag)
    if h0 is None:
        h0 = cell_named(cell).zero_state(h0_shape, jax.tree.leaves(params)[0].dtype)
    if flags:
        bad = jnp.any(jnp.stack(flags))
        if hand:  # no autodiff through the call: NaN biases and h0 reach every output
            biases = lambda x: _poison(x, bad) if x.ndim == 1 else x  # noqa: E731
            params = jax.tree.map(biases, params)
            xs, ys, h0 = _poison((xs, ys, h0), bad)
        else:
            params, xs, ys, h0 = _poison((params, xs, ys, h0), bad)
    return params, xs, ys, h0


def _varying_axes(x) -> frozenset:
    """The manual mesh axes (``jax.shard_map``) over which ``x`` varies; empty outside one.

    ``jax.typeof(x).vma`` in the JAX releases that have it, ``.mat.varying`` in 0.10."""
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)
    if vma is None:
        vma = getattr(getattr(aval, "mat", None), "varying", ())
    return frozenset(vma)


def vary_alike(tree):
    """``tree`` with every floating leaf cast (``jax.lax.pcast(..., to="varying")``) to
    vary over every manual mesh axis that any leaf of ``tree`` varies over.

    Under ``jax.shard_map`` with ``check_vma=True`` (its default) a scan's carry must
    keep its type: a zero ``h0`` or a replicated parameter meeting sharded ids would
    make the carry change from invariant to varying, and a ``custom_vjp``'s cotangent
    must have its primal's type. With every input varying alike, the cores' carries,
    defaults and cotangents all have one type; the cast's transpose is ``psum``, so
    ``jax.grad`` with respect to a replicated input sums over the devices, as JAX's
    autodiff does. Outside ``shard_map`` (no manual axes; concrete arrays never vary)
    ``tree`` is returned as is.
    """
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.core.Tracer)]
    axes = frozenset().union(*map(_varying_axes, leaves))
    if not axes:
        return tree

    def cast(x):
        if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)):
            return x
        missing = tuple(a for a in axes if a not in _varying_axes(x))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)
