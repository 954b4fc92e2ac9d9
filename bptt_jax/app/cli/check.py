"""``bptt-jax check``: the hand gradients against ``jax.grad`` and finite differences.

The work is :func:`bptt_jax.app.measure.check.run_check`.
"""

from __future__ import annotations

import argparse

from ...core.cells import CELL_NAMES, bias_size
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
Runs the hand-derived BPTT on an embedded model of each cell (the vanilla RNN, the LSTM and
the GRU; --cell picks one) and prints, per parameter, the max relative error against
jax.grad and against float64 central finite differences. Exits with status 1 if any
gradient disagrees.
"""

#: ``--cell``: one cell, or every cell one after the other (the default).
CELL_CHOICES = (*CELL_NAMES, "all")

#: Row blocks of ``U`` and ``W`` per cell (``bptt_jax.core.cells``).
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


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
    a("--cell", choices=CELL_CHOICES, default="all", dest="cells",
      help="the embedded model's cell: rnn (the seed's), lstm, gru, or all three one after "
      "the other (default all)")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Prints the check's report of each cell asked for; status 1 if any gradient
    disagrees."""
    cells = CELL_NAMES if args.cells == "all" else (args.cells,)
    for cell in cells:  # the sizes are refused before any check runs
        _require_sizes(args, cell)
    ok = True
    for i, cell in enumerate(cells):
        report = run_check(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size,
            num_classes=args.num_classes, batch=args.batch, steps=args.steps,
            inputs=args.inputs, dtype=args.dtype, seed=args.seed, cell=cell,
        )  # fmt: skip
        print(("\n" if i else "") + report.format(), flush=True)
        ok = ok and report.ok
    return 0 if ok else 1


def _require_sizes(args: argparse.Namespace, cell: str) -> None:
    """Refuses sizes whose check would not fit in memory or take too long (UsageError)."""
    K, H, C, B, T = args.vocab_size, args.hidden_size, args.num_classes, args.batch, args.steps
    G = _GATES[cell]
    require_memory(
        f"check -K {K} -H {H} -C {C} -B {B} -T {T} --cell {cell}",
        4 * rnn_bytes(K=K, H=H, C=C, B=B, T=max(T, 1), itemsize=8, gates=G),
    )
    entries = G * H * H + C * H + G * H * K + bias_size(cell, H) + C
    work = 2 * entries * B * max(T, 1) * (G * H * H + G * H * K + C * H)
    if work > MAX_CHECK_WORK:
        raise UsageError(
            f"check -K {K} -H {H} -C {C} -B {B} -T {T} --cell {cell}: the finite differences "
            f"would take about {work:.1e} multiply-adds (2 forward passes for each of "
            f"{entries:,} parameters; the limit is {MAX_CHECK_WORK:.0e}); choose smaller sizes"
        )
