"""Checks of the array arguments: ids in range, labels, masks, states.

Shape, rank and dtype checks work on every input, tracers included (their
shapes are static). Checks of *values* -- ids in range, soft labels that are
finite probabilities summing to 1, lengths in 0..T, prefix masks -- never
read an array back from the device (no hidden device-to-host transfer):

- a value on the host (a NumPy array, a list, a number) is checked there,
  before it is converted -- an int64 id of 2**32 is refused, not wrapped to
  0 -- and a bad value is a ``ValueError`` naming it, its index and the range;
- a ``jax.Array`` (concrete or traced) is checked on the device, folded into
  the computation: a bad value at a real step makes the whole call's loss,
  gradients, outputs and final state NaN (:func:`bptt_jax.api.device.device_checks`), and an
  out-of-range id is mapped to the value K (C for labels) that the cores'
  ``mode="fill"`` gathers read as NaN, so it can never wrap round to a valid
  id (JAX reads -1 as K-1).

The host check needs the real steps on the host too: with a ``jax.Array``
``lengths``/``mask`` host values are checked on the device instead.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.cells import bias_size, cell_named


def is_concrete(x: object) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def is_host(x: object) -> bool:
    """True for a value on the host (NumPy array, list, number): reading it is free."""
    return not isinstance(x, jax.Array)


def as_array(x, name: str) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None


def host_or_device(x, name: str) -> np.ndarray | jax.Array:
    """``x`` itself if it is a ``jax.Array``, else its NumPy value (not yet converted)."""
    if not is_host(x):
        return x
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None
    if a.dtype == object:
        as_array(a, name)  # raises the TypeError
    return a


class Steps(NamedTuple):
    """The real steps of a call, from ``lengths``/``mask`` (all steps when neither)."""

    mask: jax.Array | None  # (B, T) bool on the device, batched layout; None: all real
    host: np.ndarray | None  # the same mask on the host in the caller's layout, or None
    on_host: bool  # the real steps are known on the host (no mask, or a host one)
    bad: jax.Array | None  # device flag: lengths out of 0..T, or a mask not a prefix


@functools.partial(jax.jit, static_argnums=1)
def _lengths_mask(lengths: jax.Array, T: int) -> tuple[jax.Array, jax.Array]:
    bad = (lengths < 0) | (lengths > T)  # a bad row is made all real, so the NaN shows
    mask = jnp.arange(T, dtype=lengths.dtype) < jnp.where(bad, T, lengths)[..., None]
    return mask, jnp.any(bad)


@jax.jit
def _not_prefix(mask: jax.Array) -> jax.Array:
    return jnp.any(mask[..., 1:] & ~mask[..., :-1])


def check_mask(lengths, mask, steps_shape, batched: bool) -> Steps:
    """``lengths (B,)`` or a prefix ``mask (B, T)`` -> :class:`Steps`."""
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if lengths is not None:
        return _check_lengths(lengths, steps_shape, batched)
    if mask is not None:
        return _check_prefix_mask(mask, steps_shape, batched)
    return Steps(None, None, True, None)


def _check_lengths(lengths, steps_shape, batched: bool) -> Steps:
    T = steps_shape[-1]
    lengths = host_or_device(lengths, "lengths")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    expected = steps_shape[:1] if batched else ()
    if lengths.shape != expected:
        raise ValueError(
            f"lengths has shape {lengths.shape}, expected {expected}: "
            f"{'one length per sequence' if batched else 'a scalar for one sequence'}"
        )
    if not is_host(lengths):
        mask, bad = _lengths_mask(lengths, T)
        return Steps(mask if batched else mask[None], None, False, bad)
    if lengths.size:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            bad = lo if lo < 0 else hi
            raise ValueError(f"lengths contains {bad}; lengths must be in 0..T = 0..{T}")
    host = np.arange(T) < lengths[..., None]  # (B, T) or (T,)
    mask = jnp.asarray(host)
    return Steps(mask if batched else mask[None], host, True, None)


def _check_prefix_mask(mask, steps_shape, batched: bool) -> Steps:
    T = steps_shape[-1]
    mask = host_or_device(mask, "mask")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be boolean (True on real steps), got dtype {mask.dtype}")
    if mask.shape != steps_shape:
        raise ValueError(f"mask has shape {mask.shape}, expected {steps_shape} (as xs' steps)")
    if not is_host(mask):
        return Steps(mask if batched else mask[None], None, False, _not_prefix(mask))
    m = mask.reshape(-1, T)
    not_prefix = np.any(m[:, 1:] & ~m[:, :-1], axis=1)
    if np.any(not_prefix):
        row = int(np.argmax(not_prefix))
        raise ValueError(
            f"mask must be a prefix mask (True for the first steps, then False): "
            f"row {row} has a True after a False; pad at the end of each sequence"
        )
    device = jnp.asarray(mask)
    return Steps(device if batched else device[None], mask, True, None)


def fold_ids(x: jax.Array, n: int, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Out-of-range ids -> ``n`` at real steps (read as NaN), 0 at padding; any at real?

    Traced inside :func:`bptt_jax.api.device.device_checks`, with the call's other
    device checks, in one dispatch."""
    out = (x < 0) | (x >= n)
    real = out if mask is None else out & mask
    return jnp.where(real, n, jnp.where(out, 0, x)), jnp.any(real)


def check_ids(x, n: int, name: str, what: str, steps: Steps, batched: bool):
    """Integer ids in ``0..n-1`` -> ``(ids (B, T), n or None)``.

    A host ``x`` is checked on the host (a ``ValueError`` for a bad id at a
    real step) when the real steps are known there, and comes back with
    ``None``; a ``jax.Array`` comes back with ``n``: its ids are still to be
    checked on the device (:func:`fold_ids`, this module's NaN rule).
    """
    if is_host(x):
        out = (x < 0) | (x >= n)
        if steps.on_host:
            real = out if steps.host is None else out & steps.host
            if np.any(real):
                bad = tuple(int(i) for i in np.argwhere(real)[0])
                raise ValueError(
                    f"{name} contains {int(x[bad])} at index {bad}; valid {what} are 0..{n - 1}"
                )
        # before the conversion, which could wrap a 64-bit id into range
        x = jnp.asarray(np.where(out, -1, x) if np.any(out) else x)
        if steps.on_host:
            return (x if batched else x[None]), None
    return (x if batched else x[None]), n


def check_labels(ys, steps_shape, xs_shape, C: int, dtype, steps: Steps, batched: bool):
    """Class ids ``steps_shape`` in 0..C-1, or probability rows ``(*steps_shape, C)``.

    Returns ``(ys, n, flag)``: ``ys`` batched on the device; ``n`` (= C) when
    they are class ids still to be checked on the device (:func:`check_ids`),
    else None; ``flag`` a device flag of a bad soft label, or None.
    """
    if ys is None:
        raise TypeError(
            "ys is required: integer class ids with the shape of xs' steps, "
            "or probability vectors with one more axis of size C"
        )
    ys = host_or_device(ys, "ys")
    if jnp.issubdtype(ys.dtype, jnp.integer):
        if ys.shape != steps_shape:
            raise ValueError(
                f"ys has shape {ys.shape}, expected {steps_shape}: one class id per step of xs "
                f"(xs has shape {xs_shape})"
            )
        return (*check_ids(ys, C, "ys", f"class ids for C = V.shape[0] = {C}", steps, batched),
                None)  # fmt: skip
    if not jnp.issubdtype(ys.dtype, jnp.floating):
        raise TypeError(
            f"ys must be integer class ids or floating probability vectors, got dtype {ys.dtype}"
        )
    expected = (*steps_shape, C)
    if ys.shape != expected:
        raise ValueError(
            f"soft labels ys have shape {ys.shape}, expected {expected}: one probability "
            f"vector of size C = V.shape[0] = {C} per step of xs (xs has shape {xs_shape})"
        )
    tol = 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5
    checked = is_host(ys) and steps.on_host
    if checked:
        _check_soft_on_host(ys.astype(dtype), steps.host, tol)
    ys = as_array(ys, "ys").astype(dtype)
    ys = ys if batched else ys[None]
    return ys, None, (None if checked else _soft_flag(ys, steps.mask, tol))


def _check_soft_on_host(ys: np.ndarray, mask: np.ndarray | None, tol: float) -> None:
    """ValueError for a soft label row (at a real step) that is not a probability vector."""
    if mask is not None:  # padding rows are ignored: check only the real steps
        ys = np.where(mask[..., None], ys, 1 / ys.shape[-1])
    if ys.size == 0:
        return
    finite = np.isfinite(ys)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0][:-1])
        raise ValueError(
            f"soft labels ys must be finite probabilities; the row at index {where} holds "
            f"{ys[where][~finite[where]][0]}"
        )
    lowest = float(ys.min())
    if lowest < 0:
        raise ValueError(f"soft labels ys must be probabilities >= 0, found {lowest:g}")
    off = np.abs(ys.sum(axis=-1) - 1)  # steps_shape
    worst = float(off.max())
    if worst > tol:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(off)), off.shape))
        raise ValueError(
            f"soft labels ys must sum to 1 over their last axis; the row at index {where} "
            f"is off by {worst:.3g} (tolerance {tol:g} for {ys.dtype})"
        )


@functools.partial(jax.jit, static_argnums=2)
def _soft_flag(ys: jax.Array, mask: jax.Array | None, tol: float) -> jax.Array:
    """Any real row of ``ys (B, T, C)`` not a finite probability vector (on the device)."""
    off = jnp.abs(jnp.sum(ys, axis=-1) - 1) > tol
    bad = off | jnp.any(~jnp.isfinite(ys) | (ys < 0), axis=-1)  # (B, T)
    return jnp.any(bad if mask is None else bad & mask)


def check_cell_state(state, name: str, cell: str, B: int, H: int, batched: bool, dtype,
                     stack=None):  # fmt: skip
    """``None``, or the state of a ``cell`` (:func:`check_state` of each part): the
    LSTM's is a pair ``(h, c)`` (``name`` given as ``(h0, c0)``), the others' one array."""
    if state is None:
        return None
    parts = cell_named(cell).state_parts
    if len(parts) == 1:
        if isinstance(state, tuple | list):
            raise TypeError(
                f"{name} must be one array for the {cell} cell (a pair is the LSTM's "
                f"state), got a {type(state).__name__} of {len(state)}"
            )
        return check_state(state, name, B, H, batched, dtype, stack)
    if not (isinstance(state, tuple | list) and len(state) == len(parts)):
        raise TypeError(
            f"{name} must be a pair (h, c) of arrays for the {cell} cell (its state), got "
            f"{type(state).__name__}"
        )
    return tuple(check_state(s, f"{name}[{i}] ({p})", B, H, batched, dtype, stack)
                 for i, (s, p) in enumerate(zip(state, parts, strict=True)))  # fmt: skip


def check_state(state, name: str, B: int, H: int, batched: bool, dtype, stack=None):
    """``None``, or a floating state returned in the batched layout.

    For the seed's Params (``stack`` None): ``(H,)`` / ``(B, H)`` -> ``(B, H)``.
    For DeepParams: ``(L*D, H)`` / ``(L*D, B, H)`` -> ``(L*D, B, H)``.
    """
    if state is None:
        return None
    state = as_array(state, name)
    if not jnp.issubdtype(state.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {state.dtype}")
    if stack is None:
        expected = (B, H) if batched else (H,)
        layout = "(B, H) for a batch" if batched else "(H,) for one sequence"
    else:
        expected = (stack, B, H) if batched else (stack, H)
        layout = (
            "(L*D, B, H) for a batch" if batched else "(L*D, H) for one sequence"
        ) + f", L*D = {stack} layer-directions"
    if state.shape != expected:
        raise ValueError(
            f"{name} has shape {state.shape}, expected {expected} ({layout}, H = {H})"
        )
    state = state.astype(dtype)
    if batched:
        return state
    return state[None] if stack is None else state[:, None]


#: The most bytes the diagnostics that hold all T² per-loss deltas
#: (``gradient_flow``, ``per_loss_deltas``) may allocate for them: 2 GiB.
QUADRATIC_CAP_BYTES = 2 * 1024**3


def check_quadratic_size(fn: str, xs: jax.Array, h0, cell: str = "rnn") -> None:
    """Refuses, before any work, a call that would materialise T²·B·H deltas above the cap.

    ``xs`` is ``(B, T[, K])`` and ``h0`` ``(B, H)`` or ``(L*D, B, H)`` (batched layout;
    each part of the ``cell``'s state). A gated cell's δ is 4H wide.
    """
    T = xs.shape[1]
    h0 = jax.tree.leaves(h0)[0]
    cells = h0.shape[0] if h0.ndim == 3 else 1
    B, H = h0.shape[-2:]
    size = T * T * B * bias_size(cell, H) * cells * h0.dtype.itemsize
    if size > QUADRATIC_CAP_BYTES:
        raise ValueError(
            f"{fn} holds all T² per-loss deltas: T = {T}, B = {B}, H = {H}"
            + (f", L*D = {cells}" if cells > 1 else "")
            + f" would take T²·B·H{'·L·D' if cells > 1 else ''}·{h0.dtype.itemsize} bytes "
            f"= {size / 1024**3:.3g} GiB, above the {QUADRATIC_CAP_BYTES // 1024**3} GiB cap; "
            "use shorter sequences (it is meant for up to a few hundred steps)"
        )
