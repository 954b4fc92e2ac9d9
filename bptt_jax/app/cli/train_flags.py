"""The declaration of ``bptt-jax train``'s flags, one function per group, in the order
``--help`` shows them (:func:`bptt_jax.app.cli.train.add_parser` calls them).

The flags that are fields of :class:`~bptt_jax.app.training.config.TrainConfig`
(:data:`TRAIN_OPTIONS`) default to ``None``, so that ``--resume`` can tell the ones
given on the command line from the defaults.
"""

from __future__ import annotations

from ...api.options import KERNELS
from ...core.checks import MATMUL_DTYPES
from ..training.config import (
    ACTIVATION_NAMES,
    AUTO_WARMUP_FRACTION,
    BIDIRECTIONAL_DEFAULTS,
    CELLS,
    DTYPES,
    GATED_DEFAULTS,
    LSTM_DEFAULTS,
    MAX_AUTO_WARMUP,
    OPTIMIZERS,
    SCHEDULES,
    TASKS,
    TrainConfig,
    default_out,
)
from .flags import nonnegative, nonnegative_float, positive, positive_float, real, seed

#: The ``train`` flags that are fields of :class:`TrainConfig` (the rest: how to run it).
TRAIN_OPTIONS = (
    "task", "text", "val_text", "strict_text", "max_files", "steps", "batch_size", "seq_len",
    "hidden_size", "num_layers", "cell", "forget_bias",
    "activation", "bidirectional", "lr",
    "optimizer", "clip", "clip_value", "seed", "out", "eval_every", "save_every",
    "verify_every", "val_chars", "dtype", "matmul_dtype", "recompute", "kernel", "schedule",
    "warmup", "log_every",
)  # fmt: skip


def add_data_flags(a, d: TrainConfig) -> None:
    """``--task``, ``--text`` and which text is held out or read."""
    a(
        "--task",
        choices=TASKS,
        default=None,
        help="lm: predict the next character; tag: label each character of Python source "
        f"with its token type (from the tokenize module) (default {d.task})",
    )
    a(
        "--text",
        action="append",
        metavar="PATH",
        default=None,
        help="train on this UTF-8 file, or every file in this folder (files that are not "
        "UTF-8 text skipped, see --strict-text); repeatable (default: the standard "
        "library's .py files)",
    )
    _add_split_flags(a)
    a(
        "--max-files",
        type=positive,
        default=None,
        metavar="N",
        help="use only the first N files of the corpus, sorted by name, for quick runs "
        "(default: all)",
    )


def add_shape_flags(a, d: TrainConfig) -> None:
    """The run's length and the model's shape: ``--steps`` ... ``--bidirectional``."""
    a(
        "--steps",
        type=positive,
        default=None,
        help=f"total optimizer steps, counting those before a --resume (default {d.steps})",
    )
    a(
        "--batch-size",
        type=positive,
        default=None,
        metavar="B",
        help=f"B streams read in parallel (default {d.batch_size})",
    )
    a(
        "--seq-len",
        type=positive,
        default=None,
        metavar="T",
        help=f"T characters per step: the truncation length of BPTT (default {d.seq_len})",
    )
    a(
        "--hidden-size",
        type=positive,
        default=None,
        metavar="H",
        help=f"H hidden units (default {d.hidden_size})",
    )
    _add_model_flags(a, d)


def add_optimizer_flags(a, d: TrainConfig) -> None:
    """The update: ``--lr``, ``--optimizer``, its schedule, clipping, ``--seed``."""
    a("--lr", type=positive_float, default=None, help=f"learning rate λ (default {d.lr})")
    a(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default=None,
        help="sgd is the seed's update θ := θ − λ·∂E/∂θ (E the mean loss per character); the "
        f"others are optax's (default {d.optimizer})",
    )
    a(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="the learning rate after the warm-up: --lr throughout (constant), or a cosine "
        f"or linear decay to 0 at --steps (default {d.schedule})",
    )
    a(
        "--warmup",
        type=nonnegative,
        default=None,
        metavar="STEPS",
        help="STEPS of linear warm-up from 0 to --lr, at most --steps (default "
        f"{AUTO_WARMUP_FRACTION:.0%}% of --steps, at most {MAX_AUTO_WARMUP})",
    )
    a(
        "--clip",
        type=nonnegative_float,
        default=None,
        metavar="NORM",
        help="rescale the gradient when its global L2 norm exceeds NORM "
        f"(optax.clip_by_global_norm); 0 turns it off (default {d.clip})",
    )
    a(
        "--clip-value",
        type=nonnegative_float,
        default=None,
        metavar="V",
        help="clip each gradient entry to [-V, V] (optax.clip), before --clip; 0 turns it off "
        f"(default {d.clip_value})",
    )
    a(
        "--seed",
        type=seed,
        default=None,
        help=f"random seed of the initialisation (default {d.seed})",
    )


def add_run_folder_flags(a) -> None:
    """The run folder: ``--out``, ``--overwrite``, ``--resume``."""
    a(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for checkpoint.bptt, best.bptt, metrics.csv and loss.png; one train "
        f"at a time (default {default_out('TASK')}: {default_out('lm')} or "
        f"{default_out('tag')})",
    )
    a(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds an earlier run, removing its "
        "checkpoint.bptt, best.bptt, metrics.csv and loss.png (default: refuse)",
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


def add_cadence_flags(a, d: TrainConfig) -> None:
    """What is checked and written how often: ``--eval-every`` ... ``--val-chars``."""
    a(
        "--eval-every",
        type=nonnegative,
        default=None,
        metavar="N",
        help=f"validate every N steps, 0 = only at the end (default {d.eval_every})",
    )
    a(
        "--save-every",
        type=nonnegative,
        default=None,
        metavar="N",
        help=f"write the checkpoint every N steps, 0 = only at the end (default {d.save_every})",
    )
    a(
        "--log-every",
        type=positive,
        default=None,
        metavar="N",
        help="append a row to OUT/metrics.csv every N steps and at every validation: step, "
        "training and validation bits/char, learning rate, gradient norm before clipping, "
        f"steps/s and tokens/s without compilation (default {d.log_every})",
    )
    a(
        "--verify-every",
        type=nonnegative,
        default=None,
        metavar="N",
        help="every N steps recheck the hand gradients against jax.grad on the current batch "
        f"and stop if they disagree; 0 = never (default {d.verify_every})",
    )
    a(
        "--val-chars",
        type=positive,
        default=None,
        metavar="N",
        help="cap on the held-out characters validation scores: whole held-out files, "
        f"each from a zero state, up to N characters (default {d.val_chars:,}; printed "
        "when it cuts the held-out set)",
    )


def add_numerics_flags(a, d: TrainConfig) -> None:
    """How the gradients are computed: ``--dtype``, ``--matmul-dtype``, ``--recompute``,
    ``--kernel``."""
    a(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=f"precision of the parameters and the computation (default {d.dtype})",
    )
    a(
        "--matmul-dtype",
        choices=MATMUL_DTYPES,
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
        "--kernel",
        choices=KERNELS,
        default=None,
        help="how the h and δ recursions run: 'scan' (lax.scan), 'pallas' (fused Pallas "
        "kernels, U kept on chip; interpret mode off the GPU: slow) or 'auto' (the scan "
        "until a GPU measurement says otherwise) (default scan)",
    )


def add_process_flags(a) -> None:
    """Where and how it runs: devices, processes, the data check, the progress bar."""
    a(
        "--devices",
        type=positive,
        default=None,
        metavar="N",
        help="run each step data-parallel on N devices: the batch is split across them "
        "(--batch-size must be a multiple of N), gradients summed, parameters replicated; "
        "a checkpoint resumes on any N (default: all local devices; 1 for a deep or "
        "bidirectional model, said in the log)",
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
        type=positive,
        default=None,
        metavar="P",
        help="multi-host: the number of processes (default: $BPTT_JAX_NUM_PROCESSES, else 1)",
    )
    a(
        "--process-id",
        type=nonnegative,
        default=None,
        metavar="I",
        help="multi-host: this process's id in 0..P-1; process I reads streams I, I+P, ... "
        "(default: $BPTT_JAX_PROCESS_ID, else 0)",
    )
    a(
        "--allow-data-change",
        action="store_true",
        help="with --resume: continue although the training data differ from the "
        "checkpoint's (its sha256 fingerprint); default: refuse",
    )
    a("--no-progress", action="store_true",
      help="no progress bar (default: shown on stderr when it is a terminal)")  # fmt: skip


def _add_split_flags(a) -> None:
    """``--val-text`` and ``--strict-text``: which text is held out, which is read."""
    a("--val-text", action="extend", nargs="+", metavar="PATH", default=None,
      help="hold out these UTF-8 files (or every file in these folders) for validation; "
      "none of them may be a training file (default: with several files those whose name "
      "hashes to 0 mod 20, about 5%%; with one file its last 10%%; printed, and written to "
      "OUT/split.json)")  # fmt: skip
    a("--strict-text", action="store_const", const=True, default=None,
      help="stop at a file of a --text folder that is not UTF-8 text (default: skip it and "
      "name it in the log and OUT/split.json)")  # fmt: skip


def _add_model_flags(a, d: TrainConfig) -> None:
    """``--num-layers``, ``--cell``, ``--forget-bias``, ``--activation``,
    ``--bidirectional``: the model's shape."""
    a(
        "--num-layers",
        type=positive,
        default=None,
        metavar="L",
        help="L stacked hidden layers, each reading the one below (seed §2.4); 1 is the "
        f"seed's model (default {d.num_layers})",
    )
    a(
        "--cell",
        choices=CELLS,
        default=None,
        help="the recurrent cell of every layer: rnn is the seed's h = f(U h + W x + b); "
        "lstm and gru are PyTorch's nn.LSTM and nn.GRU (docs/math.md), with the same "
        "hand-derived BPTT; "
        + "; ".join(
            f"{cell}'s defaults: "
            + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
            for cell, values in GATED_DEFAULTS.items()
        )
        + f" (default {d.cell})",
    )
    a(
        "--forget-bias",
        type=real,
        default=None,
        metavar="BIAS",
        help="--cell lstm only: the forget gate's initial bias, so that the cell state is "
        f"carried from the first step (default {LSTM_DEFAULTS['forget_bias']} for the lstm; "
        "0 is the mean of PyTorch's)",
    )
    a(
        "--activation",
        choices=ACTIVATION_NAMES,
        default=None,
        help="--cell rnn only: f of every hidden layer, h = f(U h + W x + b) "
        f"(default {d.activation})",
    )
    a(
        "--bidirectional",
        action="store_const",
        const=True,
        default=None,
        help="--task tag only: every layer also reads the text right to left, so a "
        "character's label may depend on the characters after it; its defaults: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in BIDIRECTIONAL_DEFAULTS.items())
        + " (default: left to right only, each label from the characters up to it)",
    )
