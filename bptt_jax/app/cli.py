"""The ``bptt-jax`` command line (also ``python -m bptt_jax``)."""

from __future__ import annotations

import argparse
import pathlib
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


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_train_parser(commands) -> None:
    from .train import OPTIMIZERS, TrainConfig

    d = TrainConfig()
    train = commands.add_parser(
        "train",
        help="train the seed's RNN with the hand gradients (default: a character "
        "language model of the standard library's source)",
        description=(
            "Trains the seed's vanilla RNN by truncated BPTT with the hand-derived gradients "
            "(never jax.grad): B parallel streams over one long text, T characters per step, "
            "the hidden state carried from chunk to chunk. Without --text the corpus is the "
            "source of this Python's standard library (about 5% of the files, chosen by a "
            "hash of their names, are held out for validation). Shows a progress bar, "
            "validates every --eval-every steps (loss, bits per character, perplexity), "
            "writes OUT/checkpoint.bptt every --save-every steps, at the end and on Ctrl-C, "
            "and OUT/loss.png at the end."
        ),
    )
    # Defaults are None here and filled from TrainConfig, so that --resume can tell
    # the options given on the command line from the defaults.
    a = train.add_argument
    a(
        "--task",
        choices=("lm", "tag"),
        default=None,
        help="lm: predict the next character; tag: label each character of Python source "
        f"with its token type (from the tokenize module) (default {d.task})",
    )
    a(
        "--text",
        action="append",
        metavar="PATH",
        default=None,
        help="train on this UTF-8 file, or every file in this folder; repeatable "
        "(default: the standard library's .py files)",
    )
    a(
        "--max-files",
        type=_positive,
        default=None,
        metavar="N",
        help="use only the first N files of the corpus, sorted by name, for quick runs "
        "(default: all)",
    )
    a(
        "--steps",
        type=_positive,
        default=None,
        help=f"total optimizer steps, counting those before a --resume (default {d.steps})",
    )
    a(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="B",
        help=f"B streams read in parallel (default {d.batch_size})",
    )
    a(
        "--seq-len",
        type=_positive,
        default=None,
        metavar="T",
        help=f"T characters per step: the truncation length of BPTT (default {d.seq_len})",
    )
    a(
        "--hidden-size",
        type=_positive,
        default=None,
        metavar="H",
        help=f"H hidden units (default {d.hidden_size})",
    )
    a("--lr", type=_positive_float, default=None, help=f"learning rate λ (default {d.lr})")
    a(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default=None,
        help="sgd is the seed's update θ := θ − λ·∂E/∂θ (E the mean loss per character); the "
        f"others are optax's (default {d.optimizer})",
    )
    a(
        "--clip",
        type=_nonnegative_float,
        default=None,
        metavar="NORM",
        help="rescale the gradient when its global L2 norm exceeds NORM "
        f"(optax.clip_by_global_norm); 0 turns it off (default {d.clip})",
    )
    a(
        "--clip-value",
        type=_nonnegative_float,
        default=None,
        metavar="V",
        help="clip each gradient entry to [-V, V] (optax.clip), before --clip; 0 turns it off "
        f"(default {d.clip_value})",
    )
    a(
        "--seed",
        type=int,
        default=None,
        help=f"random seed of the initialisation (default {d.seed})",
    )
    a(
        "--out",
        metavar="DIR",
        default=None,
        help=f"folder for checkpoint.bptt and loss.png (default {d.out})",
    )
    a(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default OUT/checkpoint.bptt) up to --steps; the "
        "parameters are bitwise those of an uninterrupted run (default: start afresh)",
    )
    a(
        "--eval-every",
        type=_nonnegative,
        default=None,
        metavar="N",
        help=f"validate every N steps, 0 = only at the end (default {d.eval_every})",
    )
    a(
        "--save-every",
        type=_nonnegative,
        default=None,
        metavar="N",
        help=f"write the checkpoint every N steps, 0 = only at the end (default {d.save_every})",
    )
    a(
        "--verify-every",
        type=_nonnegative,
        default=None,
        metavar="N",
        help="every N steps recheck the hand gradients against jax.grad on the current batch "
        f"and stop if they disagree; 0 = never (default {d.verify_every})",
    )
    a(
        "--val-chars",
        type=_positive,
        default=None,
        metavar="N",
        help=f"validate on the first N held-out characters (default {d.val_chars})",
    )
    a(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help=f"precision of the parameters and the computation (default {d.dtype})",
    )
    a(
        "--matmul-dtype",
        choices=("bfloat16",),
        default=None,
        help="mixed precision: every matrix product of the hand BPTT in bf16, accumulated "
        "in --dtype (master weights, element-wise work and gradients stay in --dtype); "
        "--verify-every then allows 4 bf16 ulps (default: products in --dtype)",
    )
    a(
        "--recompute",
        action="store_const",
        const=True,
        default=None,
        help="keep the hidden states only every ~sqrt(--seq-len) steps and recompute the rest "
        "in the backward pass: memory O(sqrt(T) B H) for one more forward recursion "
        "(default: every state kept)",
    )
    a(
        "--devices",
        type=_positive,
        default=None,
        metavar="N",
        help="run each step data-parallel on N devices: the batch is split across them "
        "(--batch-size must be a multiple of N), gradients summed, parameters replicated; "
        "a checkpoint resumes on any N (default: all local devices)",
    )
    a(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-host: address of process 0, for jax.distributed.initialize "
        "(default: $BPTT_JAX_COORDINATOR, else a single process)",
    )
    a(
        "--num-processes",
        type=_positive,
        default=None,
        metavar="P",
        help="multi-host: the number of processes (default: $BPTT_JAX_NUM_PROCESSES, else 1)",
    )
    a(
        "--process-id",
        type=_nonnegative,
        default=None,
        metavar="I",
        help="multi-host: this process's id in 0..P-1; process I reads streams I, I+P, ... "
        "(default: $BPTT_JAX_PROCESS_ID, else 0)",
    )
    a("--no-progress", action="store_true",
      help="no progress bar (default: shown on stderr when it is a terminal)")  # fmt: skip


def _add_use_parsers(commands) -> None:
    sample = commands.add_parser(
        "sample",
        help="generate text with a trained language model",
        description=(
            "Generates --length characters after --prime with the language model of "
            "CHECKPOINT, as one jitted lax.scan. The same --seed gives the same text; "
            "--temperature 0 gives the greedy (argmax) sequence."
        ),
    )
    a = sample.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train")
    a("--prime", default="def ", help="text to start from (default 'def ')")
    a("--length", type=int, default=500, help="characters to generate, >= 1 (default 500)")
    a(
        "--temperature",
        type=float,
        default=0.8,
        help="divide the logits by this; lower is more conservative, 0 is greedy (default 0.8)",
    )
    a(
        "--top-k",
        type=_positive,
        default=None,
        metavar="K",
        help="sample only among the K most likely characters (default: all)",
    )
    a("--seed", type=int, default=0, help="random seed of the sampling (default 0)")

    tag = commands.add_parser(
        "tag",
        help="print a Python file with each character's predicted token type",
        description=(
            "Runs the tagging model of CHECKPOINT (trained with --task tag) over FILE and "
            "prints it with each character's predicted token type: coloured in a terminal, "
            "otherwise with a line of one-letter codes under each line. When tokenize can "
            "read FILE, also prints the accuracy against its token types."
        ),
    )
    a = tag.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train --task tag")
    a("file", metavar="FILE.py", help="a UTF-8 Python source file")
    a("--color", choices=("auto", "always", "never"), default="auto",
      help="colour the output: auto = only when stdout is a terminal (default auto)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bptt-jax",
        description="Backpropagation through time derived by hand, checked against jax.grad. "
        "Commands: train (the main job), sample, tag, check, diagnose, bench.",
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
    bench = commands.add_parser(
        "bench",
        help="time the hand BPTT against autodiff on this machine",
        description=(
            "Times one loss-and-gradient evaluation of the seed's RNN three ways on this "
            "machine's default JAX device: the hand BPTT (with the options below), "
            "jax.jit(jax.value_and_grad(loss)) of the same forward, and autodiff of the "
            "naive step-by-step loss. Prints the median time, GFLOP/s, compile time, XLA's "
            "temp bytes and the hand result's relative error against autodiff; exits with "
            "status 1 if they disagree. The full grid with plots: benchmarks/bench_bptt.py."
        ),
    )
    bench.add_argument("--vocab-size", "-K", type=_positive, default=65, help="K (default 65)")
    bench.add_argument("--hidden-size", "-H", type=_positive, default=256, help="H (default 256)")
    bench.add_argument("--batch", "-B", type=_positive, default=32, help="B (default 32)")
    bench.add_argument("--steps", "-T", type=_positive, default=64, help="T (default 64)")
    bench.add_argument("--repeats", type=_positive, default=20, help="timed calls (default 20)")
    bench.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="(default float32)"
    )
    bench.add_argument(
        "--chunk", type=_positive, default=None, help="steps per backward chunk (default: auto)"
    )
    bench.add_argument(
        "--recompute", action="store_true",
        help="store h_t every ~sqrt(T) steps only (default: every h_t)",
    )  # fmt: skip
    bench.add_argument("--unroll", type=_positive, default=1, help="lax.scan unroll (default 1)")
    bench.add_argument(
        "--matmul-dtype", choices=("bfloat16",), default=None,
        help="bf16 matrix products with float32 accumulation (default: products in --dtype)",
    )  # fmt: skip
    bench.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_train_parser(commands)
    _add_use_parsers(commands)
    return parser


def _bench(args) -> int:
    import jax

    from .bench import run_bench

    with jax.enable_x64(args.dtype == "float64"):
        report = run_bench(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, batch=args.batch,
            steps=args.steps, repeats=args.repeats, dtype=args.dtype, chunk=args.chunk,
            recompute=args.recompute, unroll=args.unroll, matmul_dtype=args.matmul_dtype,
            seed=args.seed,
        )  # fmt: skip
    print(report.format())
    return 0 if report.ok else 1


def _check(args) -> int:
    from .check import run_check

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
    from .plots import run_diagnose

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


_TRAIN_OPTIONS = (
    "task", "text", "max_files", "steps", "batch_size", "seq_len", "hidden_size", "lr",
    "optimizer", "clip", "clip_value", "seed", "out", "eval_every", "save_every",
    "verify_every", "val_chars", "dtype", "matmul_dtype", "recompute",
)  # fmt: skip


def _error(command: str, message: str) -> int:
    print(f"bptt-jax {command}: error: {message}", file=sys.stderr)
    return 1


def _train(args) -> int:
    import dataclasses

    from .distributed import ClusterError, cluster_from, initialize
    from .train import CHECKPOINT_NAME, TrainConfig, config_for_resume, train

    try:
        cluster = cluster_from(args.coordinator, args.num_processes, args.process_id)
    except ClusterError as e:
        return _error("train", str(e))
    initialize(cluster)  # multi-host only: before anything touches the devices

    given = {k: getattr(args, k) for k in _TRAIN_OPTIONS if getattr(args, k) is not None}
    if "text" in given:
        given["text"] = tuple(given["text"])
    resume = None
    if args.resume is not None:
        from .checkpoint import load_checkpoint

        if args.resume:
            resume = pathlib.Path(args.resume)
            given.setdefault("out", str(resume.parent))
        else:
            resume = pathlib.Path(given.get("out", TrainConfig().out)) / CHECKPOINT_NAME
        header, _ = load_checkpoint(resume)
        if header.get("kind") != "bptt-jax train":
            return _error("train", f"{resume}: not a bptt-jax training checkpoint")
        config = config_for_resume(header["config"], given)
        if config.steps <= header["step"]:
            return _error(
                "train",
                f"{resume} is already at step {header['step']}; give --steps above it to go on",
            )
    else:
        config = dataclasses.replace(TrainConfig(), **given)
    progress = not args.no_progress and sys.stderr.isatty()
    result = train(config, resume=resume, progress=progress, devices=args.devices)
    if cluster.process_id != 0:  # process 0 writes the files and reports for all
        return 130 if result.interrupted else 0
    if result.evaluation is not None and config.task == "tag":
        print(_per_class_table(result.evaluation))
    print(result.summary())
    if result.plot is not None:
        print(f"loss curve: {result.plot}")
    if result.interrupted:
        print(
            f"interrupted at step {result.state.step}: checkpoint saved; continue with "
            f"bptt-jax train --resume {result.checkpoint}",
            file=sys.stderr,
        )
        return 130
    return 0


def _per_class_table(ev) -> str:
    lines = [f"{'token type':<12}{'chars':>10}{'accuracy':>10}"]
    for name, acc in ev.per_class.items():
        shown = "-" if acc is None else f"{acc:.1%}"
        lines.append(f"{name:<12}{ev.counts[name]:>10}{shown:>10}")
    lines.append(f"{'overall':<12}{sum(ev.counts.values()):>10}{ev.accuracy:>10.1%}")
    return "\n".join(lines)


def _sample(args) -> int:
    from .sample import sample
    from .train import load_model

    model = load_model(args.checkpoint)
    text = sample(
        model, args.prime, args.length, temperature=args.temperature, top_k=args.top_k,
        seed=args.seed,
    )  # fmt: skip
    sys.stdout.write(args.prime + text + "\n")
    return 0


def _tag(args) -> int:
    import numpy as np

    from .data import DataError, read_text, token_labels
    from .sample import format_tags, legend, predict_tags
    from .train import load_model

    model = load_model(args.checkpoint)
    text = read_text(pathlib.Path(args.file))
    tags = predict_tags(model, text)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    sys.stdout.write(legend(color) + "\n" + format_tags(text, tags, color=color))
    try:
        truth = token_labels(text)
    except DataError:
        print("(tokenize cannot read this file: no accuracy to report)")
        return 0
    if len(truth):
        print(f"accuracy against tokenize: {np.mean(tags == truth):.1%} of {len(truth)} chars")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "diagnose":
        return _diagnose(args)
    if args.command == "bench":
        return _bench(args)
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingError

    handlers = {"train": _train, "sample": _sample, "tag": _tag}
    try:
        return handlers[args.command](args)
    except (DataError, CheckpointError, TrainingError) as e:
        return _error(args.command, str(e))
    except KeyboardInterrupt:  # before training started (or in sample/tag): nothing to save
        print(f"bptt-jax {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point: exits with :func:`main`'s status."""
    sys.exit(main())
