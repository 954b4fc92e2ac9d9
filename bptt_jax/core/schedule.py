r"""The speed knobs' defaults per backend: backward chunk length and ``lax.scan``'s
``unroll`` (``docs/performance.md``). Read by the core, chosen by the api layer
from ``jax.default_backend()``; pure, no JAX.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple


class Schedule(NamedTuple):
    """The speed knobs' defaults on one backend (``docs/performance.md``)."""

    #: Rows (steps × sequences) of one backward chunk when ``chunk`` is not given.
    chunk_rows: int
    #: ``lax.scan``'s ``unroll`` for both recursions when ``unroll`` is not given.
    unroll: int
    #: In recompute mode, steps per chunk as a multiple of ⌈√T⌉.
    recompute_factor: int


#: The defaults per ``jax.default_backend()``, chosen by the api layer (the core only
#: reads this table). ``"cpu"``: measured on the 2-core CPU of ``benchmarks/README.md``:
#: XLA's ``(rows, H) @ (H, K)`` products run at 175-195 GFLOP/s from about 256 to 1024
#: rows and drop to ~120 GFLOP/s at 8192 rows (``benchmarks/profile_bptt.py``), unroll
#: gains nothing there (``benchmarks/sweep_defaults.py``). ``"gpu"``: PROVISIONAL, from
#: issue 16's H200 measurement (unroll 8 won at every point measured there, 6-10 µs per
#: step against 16-21 µs at unroll 1; the 512-row chunks cut its large products into
#: small ones), to be confirmed by ``benchmarks/gpu_check.sh``'s sweep. Any other
#: backend (TPU) takes the GPU row: unmeasured.
SCHEDULES = {
    "cpu": Schedule(chunk_rows=512, unroll=1, recompute_factor=1),
    "gpu": Schedule(chunk_rows=4096, unroll=8, recompute_factor=1),
}


def schedule(backend: str) -> Schedule:
    """The :data:`SCHEDULES` row of ``backend`` (``"gpu"``'s for a backend not listed)."""
    return SCHEDULES.get(backend, SCHEDULES["gpu"])


@functools.lru_cache(maxsize=256)
def default_chunk(T: int, B: int, recompute: bool = False, backend: str = "cpu") -> int:
    """Steps per backward chunk when none is given, on ``backend``.

    The target is ``recompute_factor``·⌈√T⌉ in recompute mode (√T stored
    states, √T recomputed ones), otherwise ⌈chunk_rows / B⌉ steps but at
    most ⌈T/4⌉, so that a chunk's logits and residuals are at most a quarter
    of the ``(T, B, C)`` arrays that autodiff keeps (``chunk_rows`` and
    ``recompute_factor`` from :func:`schedule`). A divisor of T within a
    factor 2 below the target is preferred: then there is no shorter first
    chunk, whose code XLA would compile separately.
    """
    rows, _, factor = schedule(backend)
    if recompute:
        target = min(factor * (math.isqrt(max(T - 1, 0)) + 1), max(T, 1))
    else:
        target = min(-(-rows // max(B, 1)), -(-T // 4))
    return prefer_divisor(T, target)


def prefer_divisor(T: int, target: int) -> int:
    """``target`` steps per chunk, or the largest divisor of ``T`` within a factor 2 below
    it (no shorter first chunk to compile separately)."""
    target = max(1, target)
    divisor = max((d for d in range(1, target + 1) if T % d == 0), default=1)
    return divisor if 2 * divisor >= target else target
