"""The one rule for a number argument, and the lists of names the package accepts.

Every positive / non-negative number the package or its command line takes is
checked by :func:`check_number`: ``True``/``False`` are not numbers here
(``hidden_size=True`` is refused, not read as 1), infinities and NaN are
refused, and the message names the argument and what was expected. The
command line's argument types call it too, so a flag and the keyword behind
it accept exactly the same values.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

#: ``matmul_dtype=`` values besides ``None`` (products in the parameters' dtype).
MATMUL_DTYPES = ("bfloat16",)


def check_number(
    value: object,
    name: str,
    *,
    integer: bool = False,
    minimum: float = 0,
    strict: bool = True,
    expected: str | None = None,
) -> int | float:
    """``value`` as an ``int`` (``integer=True``) or ``float``, or a clear error.

    Args:
      value: what the caller passed.
      name: the argument's name, for the message.
      integer: require an integer (``numpy`` integers count; ``2.0`` does not).
      minimum: the bound; ``strict`` means ``value > minimum``, else ``>=``.
      expected: what the message says was expected, when the argument has its
        own wording (``"None (the default) or a positive int"``); by default
        built from ``integer``, ``minimum`` and ``strict``. The rule applied is
        the same either way.

    Raises:
      TypeError: a bool, a non-number, or a non-integer where one is required.
      ValueError: not finite, or beyond the bound.
    """
    if expected is None:
        relation = ">" if strict else ">="
        expected = f"{'an integer' if integer else 'a finite number'} {relation} {minimum:g}"
    if isinstance(value, bool | str | np.bool_) or value is None:
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    try:
        value = operator.index(value) if integer else float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(value) or not (value > minimum if strict else value >= minimum):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_float_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """``dtype`` as a floating ``numpy`` dtype that JAX really gives, or a one-line error.

    Without x64 JAX turns a float64 request into float32 silently (with at most a
    warning); asking for float64 then is an error saying how to enable it.

    Raises:
      TypeError: not a floating dtype.
      ValueError: float64 while ``jax_enable_x64`` is off.
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype (float32, float64, ...), got {dtype}")
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise ValueError(
            f"{name}={dtype} needs 64-bit floats, which JAX has disabled: run "
            f"jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) first, "
            f"or ask for float32"
        )
    return dtype


def check_key(key: object, name: str = "key") -> jax.Array:
    """``key`` if it is a ``jax.random`` key (typed, or a raw ``uint32[2]``), else a TypeError.

    An integer seed is refused rather than silently turned into a key: the
    caller chooses how a seed becomes a key (``jax.random.key(seed)``).
    """
    dtype = getattr(key, "dtype", None)
    if isinstance(key, jax.Array | np.ndarray) and (
        jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        or (dtype == np.uint32 and key.shape[-1:] == (2,))
    ):
        return key
    got = f"{type(key).__name__} {key!r}" if np.ndim(key) == 0 else type(key).__name__
    raise TypeError(f"{name} must be a JAX PRNG key: pass jax.random.key(seed), got {got}")
