"""``bptt-jax diagnose``: vanishing and exploding gradients measured and plotted (seed §6).

The work is :func:`bptt_jax.app.measure.diagnose.run_diagnose` (which loads matplotlib
only when it runs); the flags' defaults are its own.
"""

from __future__ import annotations

import argparse
import dataclasses

from ...core.activations import ACTIVATIONS
from ...core.init import INITS
from ..io.preflight import UsageError, check_writable_folder, require_memory, rnn_bytes
from ..measure.diagnose import DiagnoseSettings, run_diagnose
from .flags import (
    add_sizes,
    defaults_of,
    integer_list,
    number_list,
    positive,
    positive_float,
    seed,
)

#: The delay task's length T in ``diagnose --delays`` (``train_delay``'s default).
DELAY_STEPS = 30


#: The defaults of the flags: those of :func:`run_diagnose`, read once.
DEFAULTS = defaults_of(DiagnoseSettings)


#: ``bptt-jax diagnose``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = "measure and plot vanishing/exploding gradients (the seed's §6)"
DESCRIPTION = """\
Measures every ‖δ_k^(t)‖ = ‖∂E_t/∂s_k‖ of a model by the hand recursion, prints it against
the §6 bound γ^(t−k), and writes PNG plots into --out: the heat map, the decay with distance
against the bound, the gradient reaching the state by distance for the vanilla cell, the
LSTM and the GRU at the same initialisation (§13), the sweep of the scale of U for tanh,
sigmoid and ReLU, and (with --delays) training curves on the delay task y_t = x_(t−d),
the LSTM and the GRU among the remedies.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax diagnose`` and its flags."""
    diagnose = commands.add_parser("diagnose", help=HELP, description=DESCRIPTION)
    d = DEFAULTS
    a = diagnose.add_argument
    a("--out", "-o", default="diagnose", help="folder for the PNGs (default diagnose)")
    add_sizes(a, d)
    a("--activation", choices=tuple(ACTIVATIONS), default=d["activation"],
      help=f"f (default {d['activation']})")  # fmt: skip
    a("--init", choices=INITS, default=d["init"],
      help=f"init_params(init=...) (default {d['init']})")  # fmt: skip
    a("--spectral-radius", type=positive_float, default=d["spectral_radius"],
      help="rescale U to this ρ(U) > 0")  # fmt: skip
    a(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="skip the sweep of U's scale (default: sweep)",
    )
    a("--sweep-scales", type=number_list, default=d["sweep_scales"],
      help="comma-separated scales σ of U for the sweep (default 0.25..6)")  # fmt: skip
    a("--delays", type=integer_list, default=[],
      help="comma-separated delays d: also train on the delay task (e.g. 2,5,10,20)")  # fmt: skip
    a("--iterations", type=positive, default=d["iterations"],
      help=f"Adam steps per delay (default {d['iterations']})")  # fmt: skip
    a("--seed", type=seed, default=d["seed"], help=f"random seed (default {d['seed']})")


def handle(args: argparse.Namespace) -> int:
    """Writes the PNGs into ``--out`` and prints the report; status 0."""
    K, H, B, T = args.vocab_size, args.hidden_size, args.batch, args.steps
    # gradient_flow holds every δ_k^(t): (T, T, B, H) float64, a few times over.
    require_memory(
        f"diagnose -K {K} -H {H} -B {B} -T {T}",
        4 * 8 * T * T * B * H + rnn_bytes(K=K, H=H, C=K, B=B, T=T, itemsize=8),
    )
    if args.delays and max(args.delays) >= DELAY_STEPS:
        raise UsageError(
            f"--delays must be below the delay task's {DELAY_STEPS} steps, got {max(args.delays)}"
        )
    check_writable_folder(args.out)  # before the work, not after it
    given = {f.name for f in dataclasses.fields(DiagnoseSettings)} & vars(args).keys()
    report = run_diagnose(args.out, DiagnoseSettings(**{n: getattr(args, n) for n in given}))
    print(report.text)
    return 0
