"""``bptt-jax train``: its parser (the flags are declared in :mod:`.train_flags`, per
group) and what it does with them: :func:`bptt_jax.app.training.loop.train`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from ..training.checkpoint_schema import config_for_resume, read_training_checkpoint
from ..training.config import PATH_LISTS, TrainConfig, TrainingError, default_config, default_out
from ..training.distributed import cluster_from, initialize
from ..training.loop import CHECKPOINT_NAME, train
from ..training.outputs import say
from ..training.signals import signal_name
from ..training.validation import Evaluation
from .train_flags import (
    TRAIN_OPTIONS,
    add_cadence_flags,
    add_data_flags,
    add_numerics_flags,
    add_optimizer_flags,
    add_process_flags,
    add_run_folder_flags,
    add_shape_flags,
)

#: ``bptt-jax train``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = (
    "train the seed's RNN (or an LSTM or GRU: --cell) with the hand gradients (default: a "
    "character language model of the standard library's source)"
)
DESCRIPTION = """\
Trains the seed's vanilla RNN (--cell lstm, --cell gru: the gated cells) by truncated BPTT
with the hand-derived gradients (never jax.grad): B parallel streams over one long text, T
characters per step, the hidden state carried from chunk to chunk. Without --text the
corpus is the source of this Python's standard library (about 5% of the files, chosen by a
hash of their names, are held out for validation; --val-text chooses them; the split is
printed and written to OUT/split.json). Shows a progress bar, validates every --eval-every
steps (loss, bits per character, perplexity), writes OUT/checkpoint.bptt every
--save-every steps, at the end and on Ctrl-C or SIGTERM, OUT/metrics.csv as it goes, and
OUT/loss.png at the end and on Ctrl-C or SIGTERM. Refuses an OUT that holds an earlier run
(see --resume, --overwrite) or that another train is writing.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax train``; its config flags default to ``None`` (see ``--resume``)."""
    d = TrainConfig()
    train = commands.add_parser("train", help=HELP, description=DESCRIPTION)
    # Defaults are None here and filled from TrainConfig, so that --resume can tell
    # the options given on the command line from the defaults.
    a = train.add_argument
    add_data_flags(a, d)
    add_shape_flags(a, d)
    add_optimizer_flags(a, d)
    add_run_folder_flags(a)
    add_cadence_flags(a, d)
    add_numerics_flags(a, d)
    add_process_flags(a)


def handle(args: argparse.Namespace) -> int:
    """Trains (or resumes) the run; status 0, or 128 + N when signal N stopped it."""
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
