r"""Timing the hand BPTT against autodiff: ``bptt-jax bench`` and ``benchmarks/``.

One loss-and-gradient evaluation of the seed's RNN costs, in matrix-product
FLOPs (a multiply-add counts 2):

.. math::

    \underbrace{2TBH^2}_{U h_{t-1}} + \underbrace{2TBHC}_{V h_t}
    + \underbrace{2TBHC}_{V^\top r_t} + \underbrace{2TBHC}_{\partial E/\partial V}
    + \underbrace{2TBH^2}_{U^\top \delta_t} + \underbrace{2TBH^2}_{\partial E/\partial U}
    = 6\,T B H (H + C)

(the gather and scatter-add of :math:`W` for token ids, softmax and tanh are
not counted). Methods are compiled ahead (compile time reported apart), then
called in turn, each call ended by ``block_until_ready``, and the median of
each is kept, so that a slow spell of a shared machine hits them alike.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ...api.init import init_params
from ...api.options import resolve_schedule
from ...core.bptt import bptt_core
from ...core.options import Options
from ...core.rnn import loss_core
from ...referees.tolerances import AUTODIFF, VERIFY_PRECISION, max_relative_error

#: Agreement required of the hand BPTT with autodiff: the test suite's
#: tolerances, and 4 bf16 ulps for bf16 products (``tests/test_fast_paths.py``).


def flops(K: int, H: int, B: int, T: int, C: int | None = None) -> int:
    """Matrix-product FLOPs of one loss and gradient: ``6 T B H (H + C)``."""
    return 6 * T * B * H * (H + (K if C is None else C))


def naive_loss(params, xs, ys, h0, precision=None):
    """The seed's loss as most users write it: output layer and loss inside the scan."""
    U, V, W, b, c = params
    mm = functools.partial(jnp.matmul, precision=precision)

    def step(carry, inputs):
        h_prev, E = carry
        x_t, y_t = inputs  # (B,), (B,)
        h = jnp.tanh(mm(h_prev, U.T) + W.T[x_t] + b)
        log_yhat = jax.nn.log_softmax(mm(h, V.T) + c)
        E = E - jnp.sum(jnp.take_along_axis(log_yhat, y_t[:, None], axis=1))
        return (h, E), None

    (_, E), _ = lax.scan(step, (h0, jnp.zeros((), h0.dtype)), (xs.T, ys.T))
    return E


def compiled(fn: Callable, args) -> tuple[Callable, float, int]:
    """``(executable, compile seconds, XLA temp bytes)`` of ``jax.jit(fn)`` on ``args``."""
    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    return exe, seconds, exe.memory_analysis().temp_size_in_bytes


def round_robin(fns: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument ``fn``, all called in turn ``repeats`` times."""
    for fn in fns.values():  # warm-up: first-call dispatch and caches
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class BenchRow(NamedTuple):
    name: str
    median_s: float
    compile_s: float
    temp_bytes: int
    rel_err: float | None  # loss and gradients vs autodiff (None: autodiff itself)


class BenchReport(NamedTuple):
    shape: tuple[int, int, int, int]  # K, H, B, T
    dtype: str
    options: str
    device: str
    repeats: int
    rows: list[BenchRow]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(r.rel_err is None or r.rel_err <= self.tolerance for r in self.rows)

    def disagreement(self) -> str:
        """One line: which methods disagree with autodiff, by how much, and the tolerance."""
        worse = [r for r in self.rows if r.rel_err is not None and not r.rel_err <= self.tolerance]
        errs = ", ".join(f"{r.name} {r.rel_err:.1e}" for r in worse)
        return (
            f"the gradients disagree with autodiff: relative error {errs} above the "
            f"tolerance {self.tolerance:.0e} ({self.dtype}, {self.options})"
        )

    def format(self) -> str:
        K, H, B, T = self.shape
        gflop = flops(K, H, B, T) / 1e9
        by_name = {r.name: r for r in self.rows}
        lines = [
            f"K={K} H={H} B={B} T={T}, {self.dtype}, hand options: {self.options}; "
            f"{self.device}; median of {self.repeats} calls, compile time apart",
            f"{'method':<10}{'median ms':>11}{'GFLOP/s':>9}{'compile s':>11}"
            f"{'temp MiB':>10}{'rel.err vs autodiff':>21} (at precision {VERIFY_PRECISION})",
        ]
        for r in self.rows:
            err = "(reference)" if r.rel_err is None else f"{r.rel_err:.1e}"
            lines.append(
                f"{r.name:<10}{r.median_s * 1e3:>11.3f}{gflop / r.median_s:>9.1f}"
                f"{r.compile_s:>11.2f}{r.temp_bytes / 2**20:>10.1f}{err:>21}"
            )
        hand = by_name["hand"].median_s
        lines.append(
            f"hand vs autodiff: {by_name['autodiff'].median_s / hand:.2f}x the speed, "
            f"vs naive AD: {by_name['naive AD'].median_s / hand:.2f}x "
            f"({gflop:.3f} GFLOP = 6·T·B·H·(H+K) per evaluation)"
        )
        if not self.ok:
            lines.append(f"DISAGREES: hand vs autodiff above the tolerance {self.tolerance:.0e}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What ``bptt-jax bench`` measures: the shape, the repeats and the hand BPTT's options
    (its flags default to these fields)."""

    vocab_size: int = 65
    hidden_size: int = 256
    batch: int = 32
    steps: int = 64
    repeats: int = 20
    dtype: str = "float32"
    chunk: int | None = None
    recompute: bool = False
    unroll: int | None = None
    matmul_dtype: str | None = None
    seed: int = 0
    precision: object = None


def run_bench(settings: BenchSettings | None = None, **fields) -> BenchReport:
    """Times hand BPTT, autodiff of the same loss and naive autodiff on one shape:
    ``settings`` (:class:`BenchSettings`; ``fields`` replace some of them).

    ``chunk`` and ``unroll`` left ``None`` take the defaults of the backend the
    methods run on (``bptt_jax.api.options.resolve_schedule``, the table
    ``bptt_jax.core.schedule.SCHEDULES``), as ``bptt_jax.bptt`` does; the report
    names the values used.
    The timed methods run at ``precision`` (``None``: JAX's default; on a GPU TF32
    products). The agreement column compares every method with autodiff both at
    ``VERIFY_PRECISION`` (``"highest"``, compiled apart unless timed at it), so its
    tolerance means the same on every backend.
    Call inside ``jax.enable_x64(True)`` for ``dtype="float64"``.
    """
    s = dataclasses.replace(settings or BenchSettings(), **fields)
    K, H, B, T = s.vocab_size, s.hidden_size, s.batch, s.steps
    chunk, unroll = resolve_schedule(s.chunk, s.unroll, s.recompute, B, T)
    s = dataclasses.replace(s, chunk=chunk, unroll=unroll)
    kp, kx, ky = jax.random.split(jax.random.key(s.seed), 3)
    params = init_params(kp, K, H, dtype=jnp.dtype(s.dtype))
    xs = jax.random.randint(kx, (B, T), 0, K)
    ys = jax.random.randint(ky, (B, T), 0, K)
    args = (params, xs, ys, jnp.zeros((B, H), s.dtype))
    exes = {name: compiled(fn, args) for name, fn in _methods(s, s.precision).items()}
    medians = round_robin(
        {name: (lambda e=e: jax.block_until_ready(e(*args))) for name, (e, _, _) in exes.items()},
        s.repeats,
    )
    verify = {name: exe for name, (exe, _, _) in exes.items()}
    if s.precision != lax.Precision(VERIFY_PRECISION):
        verify = {
            name: jax.jit(fn) for name, fn in _methods(s, lax.Precision(VERIFY_PRECISION)).items()
        }
    reference = verify["autodiff"](*args)
    rows = []
    for name, (_, compile_s, temp) in exes.items():
        err = None if name == "autodiff" else max_relative_error(verify[name](*args), reference)
        rows.append(BenchRow(name, medians[name], compile_s, temp, err))
    options = ", ".join(
        f"{k}={getattr(s, k)}"
        for k in ("chunk", "recompute", "unroll", "matmul_dtype", "precision")
    )
    device = jax.devices()[0]
    return BenchReport(
        shape=(K, H, B, T), dtype=s.dtype, options=options,
        device=f"{device.platform} ({device.device_kind})", repeats=s.repeats, rows=rows,
        tolerance=AUTODIFF[s.matmul_dtype or s.dtype],
    )  # fmt: skip


def _methods(s: BenchSettings, precision) -> dict:
    """The three timed methods of :func:`run_bench`, every product at ``precision``."""
    mm = None if s.matmul_dtype is None else jnp.dtype(s.matmul_dtype)
    hand = Options(chunk=s.chunk, recompute=s.recompute, unroll=s.unroll, matmul_dtype=mm,
                   precision=precision)  # fmt: skip
    plain = Options(precision=precision)
    return {
        "hand": lambda p, x, y, h: bptt_core(p, x, y, h, options=hand)[:2],
        "autodiff": jax.value_and_grad(functools.partial(loss_core, options=plain)),
        "naive AD": jax.value_and_grad(functools.partial(naive_loss, precision=precision)),
    }
