"""Checks of the array arguments: ids in range, labels, masks, states.

Shape, rank and dtype checks work on tracers too (their shapes are static);
checks that need values -- ids in range, probabilities summing to 1, prefix
masks -- run only on concrete arrays and are skipped when the public
functions are traced inside a user's ``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: object) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_mask(lengths, mask, steps_shape, batched: bool):
    """``lengths (B,)`` or a prefix ``mask (B, T)`` -> bool mask ``(B, T)``, or None."""
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    T = steps_shape[-1]
    if lengths is not None:
        lengths = as_array(lengths, "lengths")
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        expected = steps_shape[:1] if batched else ()
        if lengths.shape != expected:
            raise ValueError(
                f"lengths has shape {lengths.shape}, expected {expected}: "
                f"{'one length per sequence' if batched else 'a scalar for one sequence'}"
            )
        if is_concrete(lengths) and lengths.size:
            lo, hi = int(jnp.min(lengths)), int(jnp.max(lengths))
            if lo < 0 or hi > T:
                bad = lo if lo < 0 else hi
                raise ValueError(f"lengths contains {bad}; lengths must be in 0..T = 0..{T}")
        mask = jnp.arange(T, dtype=lengths.dtype) < lengths[..., None]  # (B, T) or (T,)
    elif mask is not None:
        mask = as_array(mask, "mask")
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True on real steps), got dtype {mask.dtype}")
        if mask.shape != steps_shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {steps_shape} (as xs' steps)")
        if is_concrete(mask) and mask.size:
            m = np.asarray(mask).reshape(-1, T)
            not_prefix = np.any(m[:, 1:] & ~m[:, :-1], axis=1)
            if np.any(not_prefix):
                row = int(np.argmax(not_prefix))
                raise ValueError(
                    f"mask must be a prefix mask (True for the first steps, then False): "
                    f"row {row} has a True after a False; pad at the end of each sequence"
                )
    else:
        return None
    return mask if batched else mask[None]


def as_array(x, name: str) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None


def check_range(x: jax.Array, n: int, name: str, what: str, mask=None) -> None:
    """Raises ValueError if the concrete integer array ``x`` has a value outside
    [0, n) (at the real steps only, when a ``mask`` of x's shape is given)."""
    if not is_concrete(x) or x.size == 0 or (mask is not None and not is_concrete(mask)):
        return
    if mask is not None:
        x = jnp.where(mask, x, 0)
    lo, hi = int(jnp.min(x)), int(jnp.max(x))
    if lo >= 0 and hi < n:
        return
    bad = np.argwhere((np.asarray(x) < 0) | (np.asarray(x) >= n))[0]
    value = int(np.asarray(x)[tuple(bad)])
    raise ValueError(
        f"{name} contains {value} at index {tuple(int(i) for i in bad)}; "
        f"valid {what} are 0..{n - 1}"
    )


def check_labels(ys, steps_shape, xs_shape, C: int, dtype, mask=None) -> jax.Array:
    """Class ids ``steps_shape`` in 0..C-1, or probability rows ``(*steps_shape, C)``."""
    if ys is None:
        raise TypeError(
            "ys is required: integer class ids with the shape of xs' steps, "
            "or probability vectors with one more axis of size C"
        )
    ys = as_array(ys, "ys")
    if jnp.issubdtype(ys.dtype, jnp.integer):
        if ys.shape != steps_shape:
            raise ValueError(
                f"ys has shape {ys.shape}, expected {steps_shape}: one class id per step of xs "
                f"(xs has shape {xs_shape})"
            )
        check_range(ys, C, "ys", f"class ids for C = V.shape[0] = {C}", mask)
        return ys
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
    ys = ys.astype(dtype)
    if is_concrete(ys) and ys.size and (mask is None or is_concrete(mask)):
        if mask is not None:  # padding rows are ignored: check only the real steps
            ys = jnp.where(mask[..., None], ys, 1 / C)
        lowest = float(jnp.min(ys))
        if lowest < 0:
            raise ValueError(f"soft labels ys must be probabilities >= 0, found {lowest:g}")
        off = jnp.abs(jnp.sum(ys, axis=-1) - 1)  # steps_shape
        worst = float(jnp.max(off))
        tol = 1e-10 if ys.dtype == jnp.float64 else 1e-5
        if worst > tol:
            where = tuple(int(i) for i in np.unravel_index(int(jnp.argmax(off)), off.shape))
            raise ValueError(
                f"soft labels ys must sum to 1 over their last axis; the row at index {where} "
                f"is off by {worst:.3g} (tolerance {tol:g} for {ys.dtype})"
            )
    return ys


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
