"""The ``bptt-jax`` command line (also ``python -m bptt_jax``)."""

from __future__ import annotations

import argparse
import sys


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bptt-jax",
        description="Backpropagation through time derived by hand, checked against jax.grad.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="compare the hand gradients with jax.grad and finite differences",
        description=(
            "Runs the hand-derived BPTT on an embedded model and prints, per parameter, "
            "the max relative error against jax.grad and against float64 central finite "
            "differences. Exits with status 1 if any gradient disagrees."
        ),
    )
    check.add_argument("--vocab-size", "-K", type=_positive, default=11, help="K (default 11)")
    check.add_argument("--hidden-size", "-H", type=_positive, default=16, help="H (default 16)")
    check.add_argument(
        "--num-classes", "-C", type=_positive, default=7, help="C output classes (default 7)"
    )
    check.add_argument("--batch", "-B", type=_positive, default=3, help="B sequences (default 3)")
    check.add_argument(
        "--steps", "-T", type=_nonnegative, default=12, help="T steps per sequence (default 12)"
    )
    check.add_argument(
        "--inputs", choices=("ids", "dense"), default="ids",
        help="token ids (gather/scatter path) or dense input vectors (default ids)",
    )  # fmt: skip
    check.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64",
        help="precision of the model under test (default float64)",
    )  # fmt: skip
    check.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    diagnose = commands.add_parser(
        "diagnose",
        help="measure and plot vanishing/exploding gradients (the seed's §6)",
        description=(
            "Measures every ‖δ_k^(t)‖ = ‖∂E_t/∂s_k‖ of a model by the hand recursion, "
            "prints it against the §6 bound γ^(t−k), and writes PNG plots into --out: "
            "the heat map, the decay with distance against the bound, the sweep of the "
            "scale of U for tanh, sigmoid and ReLU, and (with --delays) training curves "
            "on the delay task y_t = x_(t−d)."
        ),
    )
    diagnose.add_argument("--out", "-o", default="diagnose", help="folder for the PNGs")
    diagnose.add_argument("--vocab-size", "-K", type=_positive, default=8, help="K (default 8)")
    diagnose.add_argument("--hidden-size", "-H", type=_positive, default=32, help="H (default 32)")
    diagnose.add_argument("--batch", "-B", type=_positive, default=8, help="B (default 8)")
    diagnose.add_argument("--steps", "-T", type=_positive, default=40, help="T (default 40)")
    diagnose.add_argument(
        "--activation", choices=("tanh", "sigmoid", "relu"), default="tanh", help="f"
    )
    diagnose.add_argument(
        "--init", choices=("normal", "uniform", "orthogonal", "identity", "spectral"),
        default="uniform", help="init_params(init=...) (default uniform)",
    )  # fmt: skip
    diagnose.add_argument(
        "--spectral-radius", type=float, default=None, help="rescale U to this ρ(U) > 0"
    )
    diagnose.add_argument(
        "--no-sweep", dest="sweep", action="store_false", help="skip the sweep of U's scale"
    )
    diagnose.add_argument(
        "--sweep-scales", type=lambda s: [float(v) for v in s.split(",")], default=None,
        help="comma-separated scales σ of U for the sweep (default 0.25..6)",
    )  # fmt: skip
    diagnose.add_argument(
        "--delays", type=lambda s: [int(v) for v in s.split(",")], default=[],
        help="comma-separated delays d: also train on the delay task (e.g. 2,5,10,20)",
    )  # fmt: skip
    diagnose.add_argument(
        "--iterations", type=_positive, default=1000, help="Adam steps per delay (default 1000)"
    )
    diagnose.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _check(args) -> int:
    from ._check import run_check

    report = run_check(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_classes=args.num_classes,
        batch=args.batch,
        steps=args.steps,
        inputs=args.inputs,
        dtype=args.dtype,
        seed=args.seed,
    )
    print(report.format())
    return 0 if report.ok else 1


def _diagnose(args) -> int:
    from ._plots import run_diagnose

    try:
        report = run_diagnose(
            args.out,
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            batch=args.batch,
            steps=args.steps,
            activation=args.activation,
            init=args.init,
            spectral_radius=args.spectral_radius,
            seed=args.seed,
            sweep=args.sweep,
            sweep_scales=args.sweep_scales,
            delays=args.delays,
            iterations=args.iterations,
        )
    except (ValueError, TypeError) as e:
        print(f"bptt-jax diagnose: error: {e}", file=sys.stderr)
        return 2
    print(report.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "diagnose":
        return _diagnose(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


def run() -> None:
    """Console-script entry point: exits with :func:`main`'s status."""
    sys.exit(main())
