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

from ..core.activations import get_activation
from ..core.params import DeepParams, Layer, Params

_FIELD_NDIM = {"U": 2, "V": 2, "W": 2, "b": 1, "c": 1}


class Dims(NamedTuple):
    K: int  # vocabulary size: columns of W
    H: int  # hidden units
    C: int  # output classes: rows of V


class Inputs(NamedTuple):
    """Inputs normalised to the batched layout that the jitted cores take."""

    xs: jax.Array  # (B, T) int ids or (B, T, K) dense, in the params' dtype
    ys: jax.Array | None  # (B, T) int class ids, or (B, T, C) probabilities
    h0: jax.Array  # (B, H); (L*D, B, H) for DeepParams
    dh_T: jax.Array | None  # like h0: incoming gradient at the final state, or None
    mask: jax.Array | None  # (B, T) bool prefix mask of the real steps, or None
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


def _check_layer(layer, name: str, H: int, D_in: int, dtype) -> Layer:
    if not isinstance(layer, Layer):
        if isinstance(layer, tuple) and len(layer) == len(Layer._fields):
            layer = Layer(*layer)
        else:
            raise TypeError(
                f"{name} must be a bptt_jax.Layer(U, W, b), got {type(layer).__name__}"
            )
    leaves = {}
    for field, shape in (("U", (H, H)), ("W", (H, D_in)), ("b", (H,))):
        leaf = getattr(layer, field)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            leaf = jnp.asarray(leaf)
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
    U0 = jnp.asarray(first.U) if not hasattr(first.U, "shape") else first.U
    W0 = jnp.asarray(first.W) if not hasattr(first.W, "shape") else first.W
    if U0.ndim != 2 or W0.ndim != 2:
        raise ValueError(
            f"layers[0].U and .W must be matrices, got shapes {U0.shape} and {W0.shape}"
        )
    H, K, dtype = U0.shape[0], W0.shape[1], U0.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"parameters must be floating point, got dtype {dtype}")
    D = 2 if reverse else 1
    checked = []
    for group, name in ((layers, "layers"), (reverse, "reverse_layers")):
        checked.append(
            tuple(
                _check_layer(layer, f"{name}[{l}]", H, K if l == 0 else D * H, dtype)
                for l, layer in enumerate(group)
            )
        )
    V = params.V if hasattr(params.V, "shape") else jnp.asarray(params.V)
    c = params.c if hasattr(params.c, "shape") else jnp.asarray(params.c)
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
    return DeepParams(layers=checked[0], reverse_layers=checked[1], V=V, c=c), Dims(K, H, C)


def _check_mask(lengths, mask, steps_shape, batched: bool):
    """``lengths (B,)`` or a prefix ``mask (B, T)`` -> bool mask ``(B, T)``, or None."""
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    T = steps_shape[-1]
    if lengths is not None:
        lengths = _as_array(lengths, "lengths")
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
        mask = _as_array(mask, "mask")
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


def _as_array(x, name: str) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None


def _check_range(x: jax.Array, n: int, name: str, what: str, mask=None) -> None:
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


def _check_labels(ys, steps_shape, xs_shape, C: int, dtype, mask=None) -> jax.Array:
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
        _check_range(ys, C, "ys", f"class ids for C = V.shape[0] = {C}", mask)
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


def check_activation(activation) -> str:
    """Returns ``activation`` if it names a known activation, else ValueError."""
    return get_activation(activation).name


def check_reduction(reduction) -> str:
    """``"sum"`` (the seed's E) or ``"mean"`` (over real steps); else ValueError."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return reduction


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


def _check_positive_int(value, name: str, none_means: str | None) -> int | None:
    if value is None and none_means is not None:
        return None
    expected = f"None ({none_means}) or a positive int" if none_means else "a positive int"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {expected}, got {int(value)}")
    return int(value)


def check_chunk(chunk) -> int | None:
    """``None`` (the default chunk) or a positive int number of steps."""
    return _check_positive_int(chunk, "chunk", "the default")


def check_unroll(unroll) -> int:
    """A positive int: how many steps ``lax.scan`` unrolls."""
    return _check_positive_int(unroll, "unroll", None)


def check_recompute(recompute) -> bool:
    """A bool."""
    if not isinstance(recompute, (bool, np.bool_)):
        raise TypeError(f"recompute must be True or False, got {recompute!r}")
    return bool(recompute)


#: What ``matmul_dtype=`` accepts besides ``None``.
MATMUL_DTYPES = ("bfloat16",)


def check_matmul_dtype(matmul_dtype):
    """``None`` (products in the parameters' dtype) or ``jnp.bfloat16``'s dtype."""
    if matmul_dtype is None:
        return None
    try:
        dt = jnp.dtype(matmul_dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in MATMUL_DTYPES:
        raise ValueError(
            f"matmul_dtype must be None (products in the parameters' dtype) or "
            f"{' / '.join(MATMUL_DTYPES)}, got {matmul_dtype!r}"
        )
    return dt


def check_inputs(
    params,
    xs,
    ys=None,
    h0=None,
    *,
    dh_T=None,
    lengths=None,
    mask=None,
    need_ys: bool,
) -> tuple[Params | DeepParams, Inputs]:
    """Validates the arguments of ``forward``/``loss``/``bptt`` and batches them.

    ``params`` is the seed's :class:`Params` or a :class:`DeepParams`. Returns
    the params and the inputs in the layout of the jitted cores: ``xs (B, T)``
    ids or ``(B, T, K)`` vectors cast to the params' dtype, ``ys (B, T)`` ids
    or ``(B, T, C)`` probabilities, ``h0 (B, H)`` for Params or
    ``(L*D, B, H)`` for DeepParams (zeros when ``None``), ``dh_T`` like ``h0``
    or ``None``, the ``(B, T)`` mask of real steps (from ``lengths`` or
    ``mask``) or ``None``, and whether the caller passed a batch.
    """
    if isinstance(params, DeepParams):
        params, (K, H, C) = check_deep_params(params)
        dtype = params.V.dtype
        stack = params.num_layers * params.num_directions
    else:
        params, (K, H, C) = check_params(params)
        dtype = params.U.dtype
        stack = None

    xs = _as_array(xs, "xs")
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
        xs = xs.astype(dtype)
    else:
        raise TypeError(
            f"xs must be integer token ids or floating input vectors, got dtype {xs.dtype}"
        )
    steps_shape = xs.shape[:2] if batched else xs.shape[:1]  # (B, T) or (T,)
    mask = _check_mask(lengths, mask, steps_shape, batched)  # (B, T) or None
    step_mask = None if mask is None else (mask if batched else mask[0])
    if ids:
        what = f"input ids for vocab_size K = W.shape[1] = {K}"
        _check_range(xs, K, "xs", what, step_mask)

    if need_ys:
        ys = _check_labels(ys, steps_shape, xs.shape, C, dtype, step_mask)
        if not batched:
            ys = ys[None]

    B = steps_shape[0] if batched else 1
    h0 = _check_state(h0, "h0", B, H, batched, dtype, stack)
    if h0 is None:
        h0 = jnp.zeros((B, H) if stack is None else (stack, B, H), dtype)
    dh_T = _check_state(dh_T, "dh_T", B, H, batched, dtype, stack)
    if not batched:
        xs = xs[None]
    return params, Inputs(xs=xs, ys=ys, h0=h0, dh_T=dh_T, mask=mask, batched=batched)


def _check_state(state, name: str, B: int, H: int, batched: bool, dtype, stack=None):
    """``None``, or a floating state returned in the batched layout.

    For the seed's Params (``stack`` None): ``(H,)`` / ``(B, H)`` -> ``(B, H)``.
    For DeepParams: ``(L*D, H)`` / ``(L*D, B, H)`` -> ``(L*D, B, H)``.
    """
    if state is None:
        return None
    state = _as_array(state, name)
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
