"""What each ``bptt-jax`` command does with its parsed arguments; returns the exit status.

Errors the user must act on (:class:`DataError`, :class:`CheckpointError`,
:class:`TrainingError`) are raised here and printed as one line by
:func:`bptt_jax.app.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

from .arguments import TRAIN_OPTIONS
from .bench import run_bench
from .check import run_check
from .checkpoint_schema import config_for_resume, load_model, read_training_checkpoint
from .config import PATH_LISTS, TrainConfig, TrainingError, default_config, default_out
from .data import DataError, read_text, token_labels
from .distributed import cluster_from, initialize
from .evaluate import Evaluation
from .files import check_regular
from .loop import CHECKPOINT_NAME, train
from .outputs import say
from .preflight import UsageError, check_writable_folder, require_memory, rnn_bytes
from .sample import check_request, generate
from .score import eval_command
from .signals import signal_name
from .tagging import format_tags, legend, predict_tags, tag_json

__all__ = ["eval_command"]  # bptt-jax eval (bptt_jax.app.score), with the other handlers


def error(command: str, message: str) -> int:
    """Prints ``bptt-jax COMMAND: error: MESSAGE`` on stderr; returns the status 1."""
    print(f"bptt-jax {command}: error: {message}", file=sys.stderr)
    return 1


def bench(args: argparse.Namespace) -> int:
    K, H, B, T = args.vocab_size, args.hidden_size, args.batch, args.steps
    itemsize = 8 if args.dtype == "float64" else 4
    # Three methods compiled side by side; autodiff keeps every step's residuals.
    require_memory(
        f"bench -K {K} -H {H} -B {B} -T {T}",
        3 * rnn_bytes(K=K, H=H, C=K, B=B, T=T, itemsize=itemsize),
    )
    with jax.enable_x64(args.dtype == "float64"):
        report = run_bench(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, batch=args.batch,
            steps=args.steps, repeats=args.repeats, dtype=args.dtype, chunk=args.chunk,
            recompute=args.recompute, unroll=args.unroll, matmul_dtype=args.matmul_dtype,
            seed=args.seed,
        )  # fmt: skip
    print(report.format())
    if not report.ok:
        return error("bench", report.disagreement())
    return 0


#: The delay task's length T in ``diagnose --delays`` (``train_delay``'s default).
DELAY_STEPS = 30

#: ``check``'s finite differences at most: two forward passes per parameter entry.
MAX_CHECK_WORK = 2 * 10**10


def check(args: argparse.Namespace) -> int:
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


def diagnose(args: argparse.Namespace) -> int:
    # matplotlib is heavy and only this command (and train's last step) draws:
    # imported when it runs.
    from .diagnose import run_diagnose

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
    report = run_diagnose(
        args.out, vocab_size=K, hidden_size=H, batch=B, steps=T, activation=args.activation,
        init=args.init, spectral_radius=args.spectral_radius, seed=args.seed, sweep=args.sweep,
        sweep_scales=args.sweep_scales, delays=args.delays, iterations=args.iterations,
    )  # fmt: skip
    print(report.text)
    return 0


def train_command(args: argparse.Namespace) -> int:
    cluster = cluster_from(args.coordinator, args.num_processes, args.process_id)
    initialize(cluster)  # multi-host only: before anything touches the devices
    given = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    for name in PATH_LISTS:
        if name in given:
            given[name] = tuple(given[name])
    if args.resume is None:
        config, resume = default_config(given), None
    else:
        config, resume = _resumed(args.resume, given)
    progress = not args.no_progress and sys.stderr.isatty()
    result = train(
        config, resume=resume, progress=progress, devices=args.devices,
        allow_data_change=args.allow_data_change, overwrite=args.overwrite, echo=say,
    )  # fmt: skip
    status = 128 + (result.signum or 2) if result.interrupted else 0
    if cluster.process_id != 0:  # process 0 writes the files and reports for all
        return status
    if result.evaluation is not None and config.task == "tag":
        say(per_class_table(result.evaluation))
    say(result.summary())
    if result.plot is not None:
        say(f"loss curve: {result.plot}")
    if result.interrupted:
        print(interrupted_line(result), file=sys.stderr)
    return status


def interrupted_line(result) -> str:
    """The last line of a run a signal stopped: where its checkpoint is, how to go on."""
    name, step, ckpt = signal_name(result.signum or 2), result.state.step, result.checkpoint
    if step < result.config.steps:
        return (f"bptt-jax train: interrupted at step {step} by {name}: checkpoint saved to "
                f"{ckpt}; continue with bptt-jax train --resume {ckpt}")  # fmt: skip
    return (f"bptt-jax train: interrupted by {name} after the last step ({step}): "
            f"checkpoint saved to {ckpt}")  # fmt: skip


def _resumed(flag: str, given: dict) -> tuple[TrainConfig, pathlib.Path]:
    """The configuration and checkpoint of ``--resume [CHECKPOINT]`` (updates ``given``)."""
    if flag:
        resume = pathlib.Path(flag)
        given.setdefault("out", str(resume.parent))
    else:
        out = given.get("out", default_out(given.get("task", TrainConfig.task)))
        resume = pathlib.Path(out) / CHECKPOINT_NAME
    ckpt = read_training_checkpoint(resume)
    config = config_for_resume(ckpt.header["config"], given)
    if config.steps <= ckpt.step:
        raise TrainingError(
            f"{resume} is already at step {ckpt.step}; give --steps above it to go on"
        )
    return config, resume


def per_class_table(ev: Evaluation) -> str:
    """The tagging accuracy per token type, as a text table."""
    lines = [f"{'token type':<12}{'chars':>10}{'accuracy':>10}"]
    for name, acc in ev.per_class.items():
        shown = "-" if acc is None else f"{acc:.1%}"
        lines.append(f"{name:<12}{ev.counts[name]:>10}{shown:>10}")
    lines.append(f"{'overall':<12}{sum(ev.counts.values()):>10}{ev.accuracy:>10.1%}")
    return "\n".join(lines)


def sample_command(args: argparse.Namespace) -> int:
    """Streams ``--num-samples`` samples to stdout, flushed every chunk of characters."""
    model = load_model(args.checkpoint)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    check_request(model, args.prime, args.length, num_samples=args.num_samples, **options)
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1} of {args.num_samples} ---\n")
        out.write(args.prime)
        for piece in generate(model, args.prime, args.length, seed=args.seed, index=i, **options):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
    return 0


def tag(args: argparse.Namespace) -> int:
    check_regular(args.file)  # a FIFO or /dev/zero: refused before the model loads
    model = load_model(args.checkpoint)
    if model.task != "tag":
        raise DataError(
            f"{args.checkpoint} is a '{model.task}' model; tagging needs one trained with "
            "--task tag"
        )
    text = read_text(pathlib.Path(args.file))
    tags = predict_tags(model, text)
    try:
        truth = token_labels(text)
    except DataError as e:
        if args.diff:
            raise DataError(
                f"{args.file}: --diff compares with tokenize, which fails: {e}"
            ) from None
        truth = None
    if args.json:
        print(json.dumps(tag_json(args.file, text, tags, truth)))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    shown = format_tags(text, tags, color=color, truth=truth if args.diff else None)
    sys.stdout.write(legend(color, args.diff) + "\n" + shown)
    if truth is None:
        print("(tokenize cannot read this file: no accuracy to report)")
    elif len(truth):
        wrong = int(np.sum(tags != truth))
        print(
            f"accuracy against tokenize: {1 - wrong / len(truth):.1%} of {len(truth)} chars"
            + (f" ({wrong} disagree)" if args.diff else "")
        )
    return 0
