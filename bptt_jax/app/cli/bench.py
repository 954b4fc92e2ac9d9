"""``bptt-jax bench``: the hand BPTT timed against autodiff on this machine.

The work is :func:`bptt_jax.app.measure.bench.run_bench`.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax

from ...core.checks import MATMUL_DTYPES
from ..io.preflight import require_memory, rnn_bytes
from ..measure.bench import BenchSettings, run_bench
from ..training.config import DTYPES
from .errors import error
from .flags import add_sizes, defaults_of, positive, seed

#: The defaults of the flags: those of :func:`run_bench`, read once.
DEFAULTS = defaults_of(BenchSettings)


#: ``bptt-jax bench``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = "time the hand BPTT against autodiff on this machine"
DESCRIPTION = """\
Times one loss-and-gradient evaluation of the seed's RNN three ways on this machine's
default JAX device: the hand BPTT (with the options below),
jax.jit(jax.value_and_grad(loss)) of the same forward, and autodiff of the naive
step-by-step loss. Prints the median time, GFLOP/s, compile time, XLA's temp bytes and the
hand result's relative error against autodiff; exits with status 1 if they disagree. The
full grid with plots: benchmarks/bench_bptt.py.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax bench`` and its flags."""
    bench = commands.add_parser("bench", help=HELP, description=DESCRIPTION)
    d = DEFAULTS
    a = bench.add_argument
    add_sizes(a, d)
    a("--repeats", type=positive, default=d["repeats"],
      help=f"timed calls (default {d['repeats']})")  # fmt: skip
    a("--dtype", choices=DTYPES, default=d["dtype"], help=f"(default {d['dtype']})")
    a("--chunk", type=positive, default=None,
      help="steps per backward chunk (default: the backend's, about 512 rows of chunk*B on "
      "the CPU, at most T/4 steps)")  # fmt: skip
    a("--recompute", action="store_true",
      help="store h_t every ~sqrt(T) steps only (default: every h_t)")  # fmt: skip
    a("--unroll", type=positive, default=None,
      help="lax.scan unroll (default: the backend's, 1 on the CPU, 8 on a GPU)")  # fmt: skip
    a(
        "--matmul-dtype",
        choices=MATMUL_DTYPES,
        default=None,
        help="bf16 matrix products with float32 accumulation (default: products in --dtype)",
    )
    a("--seed", type=seed, default=d["seed"], help=f"random seed (default {d['seed']})")


def handle(args: argparse.Namespace) -> int:
    """Prints the timings; status 1 (and one line naming it) if the methods disagree."""
    K, H, B, T = args.vocab_size, args.hidden_size, args.batch, args.steps
    itemsize = 8 if args.dtype == "float64" else 4
    # Three methods compiled side by side; autodiff keeps every step's residuals.
    require_memory(
        f"bench -K {K} -H {H} -B {B} -T {T}",
        3 * rnn_bytes(K=K, H=H, C=K, B=B, T=T, itemsize=itemsize),
    )
    with jax.enable_x64(args.dtype == "float64"):
        given = {f.name for f in dataclasses.fields(BenchSettings)} & vars(args).keys()
        report = run_bench(BenchSettings(**{name: getattr(args, name) for name in given}))
    print(report.format())
    if not report.ok:
        return error("bench", report.disagreement())
    return 0
