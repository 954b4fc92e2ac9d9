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

from ._params import Params

_FIELD_NDIM = {"U": 2, "V": 2, "W": 2, "b": 1, "c": 1}


class Dims(NamedTuple):
    K: int  # vocabulary size: columns of W
    H: int  # hidden units
    C: int  # output classes: rows of V


class Inputs(NamedTuple):
    """Inputs normalised to the batched layout that the jitted cores take."""

    xs: jax.Array  # (B, T) int ids or (B, T, K) dense, in the params' dtype
    ys: jax.Array | None  # (B, T) int class ids
    h0: jax.Array  # (B, H)
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


def check_inputs(params, xs, ys=None, h0=None, *, need_ys: bool) -> tuple[Params, Inputs]:
    """Validates the arguments of ``forward``/``loss``/``bptt`` and batches them.

    Returns the params and the inputs in the layout of the jitted cores:
    ``xs (B, T)`` ids or ``(B, T, K)`` vectors cast to the params' dtype,
    ``ys (B, T)``, ``h0 (B, H)`` (zeros when ``None``), and whether the caller
    passed a batch.
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
        if ys is None:
            raise TypeError("ys is required: integer class ids with the shape of xs' steps")
        ys = _as_array(ys, "ys")
        if not jnp.issubdtype(ys.dtype, jnp.integer):
            raise TypeError(
                f"ys must be integer class ids, got dtype {ys.dtype} "
                "(labels are ids 0..C-1, not one-hot or probability vectors)"
            )
        if ys.shape != steps_shape:
            raise ValueError(
                f"ys has shape {ys.shape}, expected {steps_shape}: one label per step of xs "
                f"(xs has shape {xs.shape})"
            )
        _check_range(ys, C, "ys", f"class ids for C = V.shape[0] = {C}")
        if not batched:
            ys = ys[None]

    B = steps_shape[0] if batched else 1
    if h0 is None:
        h0 = jnp.zeros((B, H), dtype)
    else:
        h0 = _as_array(h0, "h0")
        if not jnp.issubdtype(h0.dtype, jnp.floating):
            raise TypeError(f"h0 must be floating point, got dtype {h0.dtype}")
        expected = (B, H) if batched else (H,)
        if h0.shape != expected:
            raise ValueError(
                f"h0 has shape {h0.shape}, expected {expected} "
                f"({'(B, H) for a batch' if batched else '(H,) for one sequence'}, "
                f"H = U.shape[0] = {H})"
            )
        h0 = h0.astype(dtype)
        if not batched:
            h0 = h0[None]
    if not batched:
        xs = xs[None]
    return params, Inputs(xs=xs, ys=ys, h0=h0, batched=batched)
