r"""Checks of the keyword options of the public functions.

Each returns the option normalised (``int``, ``float``, ``str``, a ``jax.lax.Precision``
or ``None``) or
raises a one-line ``ValueError``/``TypeError`` naming the option and what it
accepts. Every number goes through :func:`bptt_jax.core.checks.check_number`
(one rule: bools, NaN and infinities are refused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core.activations import get_activation
from ..core.cells import cell_name_of_shape, cell_named
from ..core.checks import MATMUL_DTYPES, check_number
from ..core.clipping import check_clip_delta as check_clip_delta
from ..core.kernels import kernel_supported, unsupported_reason
from ..core.options import Options
from ..core.schedule import default_chunk, schedule


def check_activation(activation: object) -> str:
    """Returns ``activation`` if it names a known activation, else ValueError."""
    return get_activation(activation).name


def check_reduction(reduction: object) -> str:
    """``"sum"`` (the seed's E) or ``"mean"`` (over real steps); else ValueError."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return reduction


def _optional_count(value: object, name: str, expected: str, none_ok: bool) -> int | None:
    if value is None and none_ok:
        return None
    return check_number(value, name, integer=True, minimum=1, strict=False, expected=expected)


def check_truncate(truncate: object) -> int | None:
    """``None`` (full BPTT) or a positive int number of steps; else a clear error."""
    return _optional_count(truncate, "truncate", "None (no truncation) or an int >= 1", True)


def check_chunk(chunk: object) -> int | None:
    """``None`` (the default chunk) or a positive int number of steps."""
    return _optional_count(chunk, "chunk", "None (the default) or a positive int", True)


def check_unroll(unroll: object) -> int | None:
    """``None`` (the backend's default) or a positive int: how many steps ``lax.scan``
    unrolls."""
    return _optional_count(unroll, "unroll", "None (the default) or a positive int", True)


def resolve_schedule(
    chunk: int | None, unroll: int | None, recompute: bool, B: int, T: int
) -> tuple[int, int]:
    """``(chunk, unroll)`` with ``None`` replaced by the defaults of the backend the call
    is traced for (``jax.default_backend()``, :data:`bptt_jax.core.schedule.SCHEDULES`)."""
    backend = jax.default_backend()
    if chunk is None:
        chunk = default_chunk(T, B, recompute, backend)
    return chunk, schedule(backend).unroll if unroll is None else unroll


def check_recompute(recompute: object) -> bool:
    """A bool."""
    if not isinstance(recompute, bool | np.bool_):
        raise TypeError(f"recompute must be True or False, got {recompute!r}")
    return bool(recompute)


def check_matmul_dtype(matmul_dtype: object) -> jnp.dtype | None:
    """``None`` (products in the parameters' dtype) or one of ``MATMUL_DTYPES``."""
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


#: The recurrence implementations: ``lax.scan`` steps, the fused Pallas kernels
#: (:mod:`bptt_jax.core.kernels`), or a choice by backend and shape.
KERNELS = ("scan", "pallas", "auto")
#: Whether ``kernel="auto"`` picks the Pallas kernels on a GPU where the shapes fit.
#: False until a GPU measurement shows them faster than the scan
#: (``docs/performance.md``): today "auto" is the scan everywhere.
AUTO_PICKS_PALLAS_ON_GPU = False


def check_kernel(kernel: object) -> str:
    """``"scan"``, ``"pallas"`` or ``"auto"``; else ValueError."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be 'scan', 'pallas' or 'auto', got {kernel!r}")
    return kernel


def resolve_kernel(kernel: str, H: int, B: int, dtype, fn: str, backend: str | None = None,
                   gates: int = 1) -> str:  # fmt: skip
    """The static ``"scan"`` or ``"pallas"`` a core runs for a checked ``kernel``.

    ``dtype``: of the recurrent products (``matmul_dtype`` or the parameters').
    ``"pallas"`` outside :func:`bptt_jax.core.kernels.kernel_supported` is a one-line
    ValueError (the user forced it); ``"auto"`` is the scan unless
    :data:`AUTO_PICKS_PALLAS_ON_GPU` and the shapes fit on a GPU.
    """
    backend = jax.default_backend() if backend is None else backend
    fits = kernel_supported(H, B, dtype, backend, gates)
    if kernel == "pallas" and not fits:
        reason = unsupported_reason(H, B, dtype, backend, gates)
        raise ValueError(
            f"{fn}: kernel='pallas' does not support {reason}; use kernel='scan' or 'auto'"
        )
    if kernel == "auto":
        return "pallas" if AUTO_PICKS_PALLAS_ON_GPU and backend == "gpu" and fits else "scan"
    return kernel


def _kernel_shape(params, xs, matmul_dtype) -> tuple[int, int, object, int]:
    """``(H, B, dtype, gates)`` the kernel choice depends on: the largest cell's ``H``, the
    batch of ``xs (B, T[, K])``, the recurrent products' dtype and ``U``'s gate blocks."""
    Us = [params.U] if hasattr(params, "U") else [c.U for cell in params.cells() for c in cell]
    H = max(U.shape[1] for U in Us)
    dtype = Us[0].dtype if matmul_dtype is None else matmul_dtype
    return H, max(xs.shape[0], 1), dtype, Us[0].shape[0] // max(Us[0].shape[1], 1)


#: The names ``precision=`` accepts (JAX's), besides a ``jax.lax.Precision`` and ``None``.
PRECISIONS = ("default", "high", "highest")


def check_precision(precision: object) -> lax.Precision | None:
    """``None`` (JAX's default matmul precision, read when the products are traced), one of
    :data:`PRECISIONS` or a ``jax.lax.Precision``; normalised to ``None`` or a
    ``jax.lax.Precision`` (hashable: a static argument of the jitted cores, one cache entry
    per level whichever way it was named)."""
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return lax.Precision(precision)
    error = ValueError if isinstance(precision, str) else TypeError
    raise error(
        f"precision must be None (JAX's default), {', '.join(map(repr, PRECISIONS))} "
        f"or a jax.lax.Precision, got {precision!r}"
    )


def model_cell(params, activation: str, fn: str):
    """The cell of a checked model (its shapes say which, :mod:`bptt_jax.core.cells`)
    with the checked ``activation``; the vanilla cell's when ``params`` is ``None``.
    An activation other than tanh is the vanilla cell's alone: a one-line ValueError
    for a gated cell (whose gates fix their own)."""
    first = None if params is None else (params if hasattr(params, "U") else params.layers[0])
    name = "rnn" if first is None else cell_name_of_shape(first.U.shape[0], first.U.shape[1])
    if name != "rnn" and activation != "tanh":
        raise ValueError(
            f"{fn}: activation={activation!r} is the rnn cell's f; the {name} cell's gates "
            "use sigmoid and tanh (leave activation at 'tanh')"
        )
    return cell_named(name, activation)


def build_options(
    activation: str,
    params=None,
    xs=None,
    fn: str = "bptt",
    *,
    truncate: object = None,
    clip_delta: object = None,
    chunk: object = None,
    recompute: object = False,
    unroll: object = None,
    matmul_dtype: object = None,
    kernel: object = "scan",
    precision: object = None,
    schedule: bool = False,
) -> Options:
    """The one :class:`~bptt_jax.core.options.Options` of a public call, each option checked
    once (a one-line error naming it otherwise).

    Args:
      activation: the checked activation's name (the vanilla cell's :math:`f`).
      params, xs: the model and the batched inputs ``(B, T[, K])``, which ``kernel``
        is resolved for (``None``: the kernel is checked and must not be ``"pallas"``).
      fn: the public function's name, for messages.
      truncate, clip_delta, chunk, recompute, unroll, matmul_dtype, kernel, precision:
        the public keywords (:func:`bptt_jax.bptt`).
      schedule: replace ``chunk=None`` and ``unroll=None`` by the backend's defaults
        (:func:`resolve_schedule`, for ``xs``'s ``B`` and ``T``); otherwise an
        ``unroll`` of ``None`` is 1.
    """
    matmul_dtype = check_matmul_dtype(matmul_dtype)
    recompute = check_recompute(recompute)
    chunk, unroll = check_chunk(chunk), check_unroll(unroll)
    cell = model_cell(params, activation, fn)
    H, B, dtype, gates = (1, 1, jnp.float32, 1) if params is None else _kernel_shape(
        params, xs, matmul_dtype)  # fmt: skip
    kernel = resolve_kernel(check_kernel(kernel), H, B, dtype, fn,
                            "cpu" if params is None else None, gates)  # fmt: skip
    if schedule:
        chunk, unroll = resolve_schedule(chunk, unroll, recompute, *xs.shape[:2])
    return Options(
        cell=cell, truncate=check_truncate(truncate),
        clip_delta=check_clip_delta(clip_delta), chunk=chunk, recompute=recompute,
        unroll=1 if unroll is None else unroll, matmul_dtype=matmul_dtype, kernel=kernel,
        precision=check_precision(precision),
    )  # fmt: skip
