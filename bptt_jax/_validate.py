"""Checks at the public entry points.

The jitted cores assume well-formed inputs and contain no checks. Everything a
user can get wrong is caught here, on the way in, with a message that names
what was wrong and what was expected. Shape, rank and dtype checks work on
tracers too (their shapes are static); checks that need values -- ids in
range -- run only on concrete arrays, and are skipped when the public
functions are traced inside a user's ``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import get_activation
from ._params import Params

_FIELD_NDIM = {"U": 2, "V": 2, "W": 2, "b": 1, "c": 1}


class Dims(NamedTuple):
    K: int  # vocabulary size: columns of W
    H: int  # hidden units
    C: int  # output classes: rows of V


class Inputs(NamedTuple):
    """Inputs normalised to the batched layout that the jitted cores take."""

    xs: jax.Array  # (B, T) int ids or (B, T, K) dense, in the params' dtype
    ys: jax.Array | None  # (B, T) int class ids, or (B, T, C) probabilities
    h0: jax.Array  # (B, H)
    dh_T: jax.Array | None  # (B, H): incoming gradient at the final state, or None
    batched: bool  # False when the caller passed one sequence (T,) / (T, K)


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_params(params) -> tuple[Params, Dims]:
    """Validates the shapes and dtypes of ``params``; returns them and (K, H, C)."""
    if not isinstance(params, Params):
        if isinstance(params, tuple) and len(params) == len(Params._fields):
            params = Params(*params)
        else:
            raise TypeError(
                "params must be a bptt_jax.Params(U, V, W, b, c) "
                f"(see bptt_jax.init_params), got {type(params).__name__}"
            )
    leaves = {}
    for name in Params._fields:
        leaf = getattr(params, name)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            leaf = jnp.asarray(leaf)
        if leaf.ndim != _FIELD_NDIM[name]:
            raise ValueError(
                f"params.{name} must have {_FIELD_NDIM[name]} dimensions, got shape {leaf.shape}"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"params.{name} must be floating point, got dtype {leaf.dtype}")
        leaves[name] = leaf
    params = Params(**leaves)
    U, V, W = params.U, params.V, params.W
    H = U.shape[0]
    expected = {
        "U": (H, H),
        "W": (H, W.shape[1]),
        "b": (H,),
        "V": (V.shape[0], H),
        "c": (V.shape[0],),
    }
    for name, shape in expected.items():
        if getattr(params, name).shape != shape:
            raise ValueError(
                f"params.{name} has shape {getattr(params, name).shape}, expected {shape} "
                f"(U (H, H), V (C, H), W (H, K), b (H,), c (C,) with H = U.shape[0] = {H})"
            )
    dtypes = {name: getattr(params, name).dtype for name in Params._fields}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"params must share one floating dtype, got {dtypes}")
    return params, Dims(K=W.shape[1], H=H, C=V.shape[0])


def _as_array(x, name: str) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None


def _check_range(x: jax.Array, n: int, name: str, what: str) -> None:
    """Raises ValueError if the concrete integer array ``x`` has a value outside [0, n)."""
    if not is_concrete(x) or x.size == 0:
        return
    lo, hi = int(jnp.min(x)), int(jnp.max(x))
    if lo >= 0 and hi < n:
        return
    bad = np.argwhere((np.asarray(x) < 0) | (np.asarray(x) >= n))[0]
    value = int(np.asarray(x)[tuple(bad)])
    raise ValueError(
        f"{name} contains {value} at index {tuple(int(i) for i in bad)}; "
        f"valid {what} are 0..{n - 1}"
    )


def _check_labels(ys, steps_shape, xs_shape, C: int, dtype) -> jax.Array:
    """Class ids ``steps_shape`` in 0..C-1, or probability rows ``(*steps_shape, C)``."""
    if ys is None:
        raise TypeError(
            "ys is required: integer class ids with the shape of xs' steps, "
            "or probability vectors with one more axis of size C"
        )
    ys = _as_array(ys, "ys")
    if jnp.issubdtype(ys.dtype, jnp.integer):
        if ys.shape != steps_shape:
            raise ValueError(
                f"ys has shape {ys.shape}, expected {steps_shape}: one class id per step of xs "
                f"(xs has shape {xs_shape})"
            )
        _check_range(ys, C, "ys", f"class ids for C = V.shape[0] = {C}")
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
    if is_concrete(ys) and ys.size:
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


def check_activation(activation) -> str:
    """Returns ``activation`` if it names a known activation, else ValueError."""
    return get_activation(activation).name


def check_truncate(truncate) -> int | None:
    """``None`` (full BPTT) or a positive int number of steps; else a clear error."""
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer)):
        raise TypeError(
            f"truncate must be None (no truncation) or a positive int number of steps, "
            f"got {truncate!r}"
        )
    if truncate < 1:
        raise ValueError(
            f"truncate must be None (no truncation) or an int >= 1, got {int(truncate)}"
        )
    return int(truncate)


def check_inputs(
    params, xs, ys=None, h0=None, *, dh_T=None, need_ys: bool
) -> tuple[Params, Inputs]:
    """Validates the arguments of ``forward``/``loss``/``bptt`` and batches them.

    Returns the params and the inputs in the layout of the jitted cores:
    ``xs (B, T)`` ids or ``(B, T, K)`` vectors cast to the params' dtype,
    ``ys (B, T)`` ids or ``(B, T, C)`` probabilities, ``h0 (B, H)`` (zeros
    when ``None``), ``dh_T (B, H)`` or ``None``, and whether the caller passed
    a batch.
    """
    params, (K, H, C) = check_params(params)
    dtype = params.U.dtype

    xs = _as_array(xs, "xs")
    if jnp.issubdtype(xs.dtype, jnp.integer):
        if xs.ndim not in (1, 2):
            raise ValueError(
                f"integer xs must be token ids of shape (T,) or (B, T), got shape {xs.shape}"
            )
        batched = xs.ndim == 2
        _check_range(xs, K, "xs", f"input ids for vocab_size K = W.shape[1] = {K}")
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
        xs = xs.astype(dtype)
    else:
        raise TypeError(
            f"xs must be integer token ids or floating input vectors, got dtype {xs.dtype}"
        )
    steps_shape = xs.shape[:2] if batched else xs.shape[:1]  # (B, T) or (T,)

    if need_ys:
        ys = _check_labels(ys, steps_shape, xs.shape, C, dtype)
        if not batched:
            ys = ys[None]

    B = steps_shape[0] if batched else 1
    h0 = _check_state(h0, "h0", B, H, batched, dtype)
    if h0 is None:
        h0 = jnp.zeros((B, H), dtype)
    dh_T = _check_state(dh_T, "dh_T", B, H, batched, dtype)
    if not batched:
        xs = xs[None]
    return params, Inputs(xs=xs, ys=ys, h0=h0, dh_T=dh_T, batched=batched)


def _check_state(state, name: str, B: int, H: int, batched: bool, dtype):
    """``None``, or a floating ``(H,)`` / ``(B, H)`` state returned as ``(B, H)``."""
    if state is None:
        return None
    state = _as_array(state, name)
    if not jnp.issubdtype(state.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {state.dtype}")
    expected = (B, H) if batched else (H,)
    if state.shape != expected:
        raise ValueError(
            f"{name} has shape {state.shape}, expected {expected} "
            f"({'(B, H) for a batch' if batched else '(H,) for one sequence'}, "
            f"H = U.shape[0] = {H})"
        )
    state = state.astype(dtype)
    return state if batched else state[None]
