"""``bptt-jax check``: the hand gradients against ``jax.grad`` and finite differences.

The work is :func:`bptt_jax.app.measure.check.run_check`.
"""

from __future__ import annotations

import argparse

from ..io.preflight import UsageError, require_memory, rnn_bytes
from ..measure.check import INPUTS, TOLERANCES, run_check
from .flags import add_sizes, defaults_of, nonnegative, positive, seed

#: ``check``'s finite differences at most: two forward passes per parameter entry.
MAX_CHECK_WORK = 2 * 10**10


#: The defaults of the flags: those of :func:`run_check`, read once.
DEFAULTS = defaults_of(run_check)


#: ``bptt-jax check``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = "compare the hand gradients with jax.grad and finite differences"
DESCRIPTION = """\
Runs the hand-derived BPTT on an embedded model and prints, per parameter, the max relative
error against jax.grad and against float64 central finite differences. Exits with status 1
if any gradient disagrees.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax check`` and its flags."""
    check = commands.add_parser("check", help=HELP, description=DESCRIPTION)
    d = DEFAULTS
    a = check.add_argument
    add_sizes(a, d, steps_type=nonnegative)
    a("--num-classes", "-C", type=positive, default=d["num_classes"],
      help=f"C output classes (default {d['num_classes']})")  # fmt: skip
    a("--inputs", choices=INPUTS, default=d["inputs"],
      help="token ids (gather/scatter path) or dense input vectors "
      f"(default {d['inputs']})")  # fmt: skip
    a("--dtype", choices=tuple(TOLERANCES), default=d["dtype"],
      help=f"precision of the model under test (default {d['dtype']})")  # fmt: skip
    a("--seed", type=seed, default=d["seed"], help=f"random seed (default {d['seed']})")


def handle(args: argparse.Namespace) -> int:
    """Prints the check's report; status 1 if any gradient disagrees."""
    K, H, C, B, T = args.vocab_size, args.hidden_size, args.num_classes, args.batch, args.steps
    require_memory(
        f"check -K {K} -H {H} -C {C} -B {B} -T {T}",
        4 * rnn_bytes(K=K, H=H, C=C, B=B, T=max(T, 1), itemsize=8),
    )
    entries = H * H + C * H + H * K + H + C
    work = 2 * entries * B * max(T, 1) * (H * H + H * K + C * H)
    if work > MAX_CHECK_WORK:
        raise UsageError(
            f"check -K {K} -H {H} -C {C} -B {B} -T {T}: the finite differences would take "
            f"about {work:.1e} multiply-adds (2 forward passes for each of {entries:,} "
            f"parameters; the limit is {MAX_CHECK_WORK:.0e}); choose smaller sizes"
        )
    report = run_check(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_classes=args.num_classes,
        batch=args.batch, steps=args.steps, inputs=args.inputs, dtype=args.dtype, seed=args.seed,
    )  # fmt: skip
    print(report.format())
    return 0 if report.ok else 1
