"""What defines a training run: :class:`TrainConfig`, its checks, and the rules of ``--resume``.

The names the configuration accepts (optimizers, dtypes) are listed here once;
the command line takes its ``choices=`` from these lists.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optax

from ...api.options import KERNELS
from ...core.activations import ACTIVATIONS
from ...core.cells import CELL_NAMES, cell_named
from ...core.checks import MATMUL_DTYPES

#: ``TrainConfig.optimizer``: name -> optax constructor taking the learning rate.
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,  # the seed's update: θ := θ − λ g
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adagrad": optax.adagrad,
    "rmsprop": optax.rmsprop,
    "adam": optax.adam,
    "adamw": optax.adamw,
}

#: ``TrainConfig.dtype``: the parameters' and the computation's precision.
DTYPES = ("float32", "float64")

#: ``TrainConfig.task``: "lm" predicts the next character, "tag" its token type.
TASKS = ("lm", "tag")

#: ``TrainConfig.activation``: the hidden units' f (``bptt_jax.core.activations``).
ACTIVATION_NAMES = tuple(ACTIVATIONS)

#: ``TrainConfig.cell``: the recurrent cell of every layer (``bptt_jax.core.cells``).
CELLS = CELL_NAMES

#: The model fields added after checkpoints were first written, with the value an
#: older checkpoint (which lacks them) was trained with: the seed's one tanh layer.
MODEL_DEFAULTS = {"num_layers": 1, "activation": "tanh", "bidirectional": False,
                  "cell": "rnn", "forget_bias": 0.0}  # fmt: skip

#: The defaults of a ``--cell lstm`` / ``--cell gru`` run that differ from
#: :class:`TrainConfig`'s, chosen so that the default run ends within 4 minutes on this
#: project's 2-core machine with a margin for its ~10 % run-to-run spread in speed
#: (``docs/training.md``, every run measured): the LSTM's forget
#: gate starts mostly open (its bias 1, Gers et al. 2000; Jozefowicz et al. 2015), so the
#: cell state carries the text from the first step; both gated cells learn far faster at
#: learning rates above the vanilla cell's (the LSTM: 2.30 bits/char at lr 4e-3 against
#: 1.84 at 2e-2 after the same 2600 steps); the LSTM reads 64 streams of 32 characters
#: (XLA's CPU products of 64 rows run faster than those of 32: a chunk of 2048
#: characters costs 31 ms as 64 x 32 against 38 ms as 32 x 64, so more text fits the
#: budget: 1.733 bits/char against 1.778); their runs validate only at the end (each
#: pass over the held-out text costs 6-9 s).
GATED_DEFAULTS = {
    "lstm": {"forget_bias": 1.0, "lr": 3e-2, "seq_len": 32, "steps": 5200, "eval_every": 0},
    "gru": {"lr": 8e-3, "steps": 2300, "eval_every": 0},
}
LSTM_DEFAULTS = GATED_DEFAULTS["lstm"]

#: ``TrainConfig.schedule``: the learning rate after ``warmup`` steps of linear warm-up
#: from 0: ``lr`` throughout, a cosine decay to 0 at ``steps``, or a linear one.
SCHEDULES = ("constant", "cosine", "linear")

#: Fields added after the first checkpoints were written, with the value that
#: reproduces what those runs did (a checkpoint without them reads as these).
LEGACY = {"schedule": "constant", "warmup": 0, "log_every": 100, "kernel": "scan",
          "val_text": (), "strict_text": False}  # fmt: skip

#: The fields that are lists of paths (tuples in a TrainConfig, lists in JSON).
PATH_LISTS = ("text", "val_text")

# Options that may differ between a run and its --resume: they do not change
# the parameters a given step produces.
RESUMABLE = ("steps", "out", "eval_every", "save_every", "verify_every", "kernel", "log_every",
             "strict_text")  # fmt: skip


#: The defaults of a ``--bidirectional`` tagger that differ from :class:`TrainConfig`'s:
#: it costs about four one-layer models a character, and reads longer chunks (the
#: right-to-left cells start every chunk from zero), measured in ``docs/training.md``.
BIDIRECTIONAL_DEFAULTS = {
    "hidden_size": 128, "batch_size": 16, "seq_len": 256, "steps": 1500, "lr": 3e-3,
    "eval_every": 500,
}  # fmt: skip


def default_out(task: str) -> str:
    """``--out`` when it is not given: ``runs/TASK``, so that the two tasks' runs never
    share a folder."""
    return f"runs/{task}"


def default_config(given: dict) -> TrainConfig:
    """The configuration of ``train`` with the options ``given`` and defaults for the rest:
    :class:`TrainConfig`'s, or :data:`BIDIRECTIONAL_DEFAULTS` with ``--bidirectional``,
    and :data:`GATED_DEFAULTS` for a gated ``--cell``;
    ``out`` is :func:`default_out` of the task."""
    base = BIDIRECTIONAL_DEFAULTS if given.get("bidirectional") else {}
    cell = GATED_DEFAULTS.get(given.get("cell"), {})
    out = {"out": default_out(given.get("task", TrainConfig.task))}
    return dataclasses.replace(TrainConfig(), **(base | cell | out | given))


class TrainingError(Exception):
    """Training stopped for a reason the user must act on (reported without a traceback)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    task: str = "lm"  # "lm": next character; "tag": token type
    text: tuple[str, ...] = ()  # --text paths; () = the standard library
    val_text: tuple[str, ...] = ()  # --val-text paths: the held-out files; () = the rule
    strict_text: bool = False  # stop at a folder's file that is not UTF-8 (default: skip it)
    max_files: int | None = None  # only the first N files of the corpus
    steps: int = 5200  # total optimizer steps
    batch_size: int = 64  # B parallel streams
    seq_len: int = 64  # T characters per chunk (the truncation length)
    hidden_size: int = 256  # H
    num_layers: int = 1  # L stacked hidden layers (1: the seed's model)
    cell: str = "rnn"  # of every layer: "rnn" (the seed's), "lstm" or "gru"
    forget_bias: float = 0.0  # the LSTM's initial forget-gate bias (LSTM_DEFAULTS: 1)
    activation: str = "tanh"  # f of every hidden layer (the rnn cell's only)
    bidirectional: bool = False  # tag only: every layer also reads right to left
    lr: float = 4e-3
    optimizer: str = "adam"
    schedule: str = "cosine"  # of the learning rate: constant, cosine or linear decay to 0
    warmup: int | None = None  # steps of linear warm-up from 0 to lr; None: warmup_steps()
    clip: float = 1.0  # global-norm clip of the mean gradient; 0 = off
    clip_value: float = 0.0  # element-wise clip to [-v, v]; 0 = off
    seed: int = 0
    out: str = "runs/lm"  # default_config: runs/TASK, each task its own folder
    eval_every: int = 2500
    save_every: int = 1000
    verify_every: int = 0  # 0 = never
    log_every: int = 100  # a row of OUT/metrics.csv every N steps (and at each evaluation)
    val_chars: int = 1_000_000  # cap on the held-out characters validation scores
    dtype: str = "float32"  # of the parameters and the computation: float32 or float64
    matmul_dtype: str | None = None  # "bfloat16": bf16 matrix products, dtype accumulation
    recompute: bool = False  # keep h_t every ~sqrt(T) steps only, recompute the rest
    kernel: str = "scan"  # the two recursions: "scan", "pallas" (fused kernels) or "auto"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["text"], d["val_text"] = list(self.text), list(self.val_text)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """The configuration ``d`` describes, checked by :func:`check_config`.

        Raises:
          TrainingError: ``d`` is not a dict of the fields, or a value is invalid.
        """
        if not isinstance(d, dict):
            raise TrainingError(f"the configuration must be a JSON object, not {_kind(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        d = {**LEGACY, **MODEL_DEFAULTS, **d}  # written before these fields: their past values
        missing = sorted(known - set(d))
        if missing:
            raise TrainingError(f"the configuration lacks {', '.join(missing)}")
        for name in PATH_LISTS:
            text = d[name]
            if not isinstance(text, list | tuple) or not all(isinstance(t, str) for t in text):
                raise TrainingError(f"{name} must be a list of paths, not {_kind(text)}")
        config = cls(**{k: tuple(v) if k in PATH_LISTS else v for k, v in d.items() if k in known})
        check_config(config)
        return config


# The checks of every field of TrainConfig: (name, integer?, minimum, strict, None allowed?).
_NUMBERS = (
    ("max_files", True, 1, False, True), ("steps", True, 1, False, False),
    ("batch_size", True, 1, False, False), ("seq_len", True, 1, False, False),
    ("hidden_size", True, 1, False, False), ("num_layers", True, 1, False, False),
    ("lr", False, 0, True, False),
    ("clip", False, 0, False, False), ("clip_value", False, 0, False, False),
    ("eval_every", True, 0, False, False), ("save_every", True, 0, False, False),
    ("verify_every", True, 0, False, False), ("val_chars", True, 1, False, False),
    ("warmup", True, 0, False, True), ("log_every", True, 1, False, False),
)  # fmt: skip
#: ``--seed`` and ``TrainConfig.seed``: what ``jax.random.key`` takes without overflow.
SEED_RANGE = (-(2**63), 2**63 - 1)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def check_config(config: TrainConfig) -> None:
    """Refuses a configuration no run can have: every field's type, range and name.

    The one validator of a configuration, used by :func:`bptt_jax.app.training.loop.train`
    and by the checkpoint reader (so a forged header is refused by the same rule).

    Raises:
      TrainingError: naming the field and the value.
    """
    for name, integer, minimum, strict, optional in _NUMBERS:
        value = getattr(config, name)
        if value is None and optional:
            continue
        relation = ">" if strict else ">="
        expected = f"{'an integer' if integer else 'a finite number'} {relation} {minimum:g}"
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        if ok and integer:
            ok = isinstance(value, int)
        if ok:
            ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if not ok:
            raise TrainingError(f"{name} must be {expected}, got {value!r}")
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TrainingError(f"seed must be an integer, got {seed!r}")
    if not SEED_RANGE[0] <= operator.index(seed) <= SEED_RANGE[1]:
        raise TrainingError(f"seed must be in {SEED_RANGE[0]}..{SEED_RANGE[1]}, got {seed}")
    if config.task not in TASKS:
        raise TrainingError(f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    if not isinstance(config.out, str) or not config.out:
        raise TrainingError(f"out must be a folder name, got {config.out!r}")
    for flag in ("recompute", "strict_text"):
        if not isinstance(getattr(config, flag), bool):
            raise TrainingError(f"{flag} must be true or false, got {getattr(config, flag)!r}")
    if config.warmup is not None and config.warmup > config.steps:
        raise TrainingError(
            f"warmup must be at most steps ({config.steps}), got {config.warmup}: the learning "
            "rate would never reach --lr"
        )
    check_names(config)
    check_model(config)
    check_underflow(config)


#: The real fields that reach the computation in the run's dtype, and their flags.
_REALS = {"lr": "--lr", "clip": "--clip", "clip_value": "--clip-value"}


def check_underflow(config: TrainConfig) -> None:
    """Refuses a positive ``lr``, ``clip`` or ``clip_value`` below the smallest normal
    number of the run's dtype (``np.finfo(dtype).tiny``: 1.2e-38 for float32): in the
    computation it is 0 or a subnormal without its precision, so ``--lr 1e-320`` would
    train nothing and say nothing.

    Raises:
      TrainingError: naming the flag, the value and the smallest it accepts.
    """
    tiny = float(np.finfo(config.dtype).tiny)
    for name, flag in _REALS.items():
        value = getattr(config, name)
        if 0 < value < tiny:
            zero = "" if name == "lr" else " (or 0 to turn it off)"
            raise TrainingError(
                f"{flag} {value:g} underflows {config.dtype}: it is below the smallest "
                f"normal {config.dtype} number {tiny:.3g}; give at least {tiny:.3g}{zero}"
            )


def check_model(config: TrainConfig) -> None:
    """Refuses a model no run can train: an unknown cell or activation, an activation or a
    forget-gate bias the cell has not, a bidirectional language model (it would read the
    character it must predict).

    Raises:
      TrainingError: naming the option and what is accepted.
    """
    if not isinstance(config.cell, str) or config.cell not in CELLS:
        raise TrainingError(f"unknown cell {config.cell!r}; choose one of {', '.join(CELLS)}")
    if not isinstance(config.activation, str) or config.activation not in ACTIVATION_NAMES:
        raise TrainingError(
            f"unknown activation {config.activation!r}; choose one of "
            + ", ".join(ACTIVATION_NAMES)
        )
    if config.cell != "rnn" and config.activation != "tanh":
        raise TrainingError(
            f"--activation {config.activation} is the rnn cell's f; the {config.cell} cell's "
            "nonlinearities are fixed (sigmoid gates, tanh): drop --activation or use --cell rnn"
        )
    bias = config.forget_bias
    if isinstance(bias, bool) or not isinstance(bias, int | float) or not math.isfinite(bias):
        raise TrainingError(f"forget_bias must be a finite number, got {bias!r}")
    if config.cell != "lstm" and bias != 0:
        raise TrainingError(
            f"--forget-bias is the lstm cell's forget-gate bias; the {config.cell} cell has "
            "none: drop --forget-bias or use --cell lstm"
        )
    if not isinstance(config.bidirectional, bool):
        raise TrainingError(f"bidirectional must be true or false, got {config.bidirectional!r}")
    if config.bidirectional and config.task != "tag":
        raise TrainingError(
            f"--bidirectional is for --task tag only: a language model (--task {config.task}) "
            "must not read the characters it predicts"
        )


def model_cell(config: TrainConfig):
    """The cell of ``config``'s layers (:func:`bptt_jax.core.cells.cell_named`): what every
    computation of the run, its evaluation, sampling and tagging use."""
    return cell_named(config.cell, config.activation)


def is_deep(config: TrainConfig) -> bool:
    """Whether the run's model is a ``DeepParams`` (L > 1 or bidirectional), not ``Params``."""
    return config.num_layers > 1 or bool(config.bidirectional)


#: The warm-up of a run that does not set ``--warmup``: this fraction of its steps,
#: at most :data:`MAX_AUTO_WARMUP`.
AUTO_WARMUP_FRACTION, MAX_AUTO_WARMUP = 0.05, 100


def warmup_steps(config: TrainConfig) -> int:
    """The steps of linear warm-up: ``config.warmup``, or 5% of the steps (at most 100)."""
    if config.warmup is not None:
        return config.warmup
    return min(MAX_AUTO_WARMUP, int(AUTO_WARMUP_FRACTION * config.steps))


def learning_rate(config: TrainConfig) -> optax.Schedule:
    r"""The learning rate at each step: linear warm-up from 0 to ``lr`` over ``w`` steps,
    then ``config.schedule`` over the remaining ``S - w`` steps:

    .. math::

        \eta_k = \begin{cases} \lambda k / w & k < w \\
            \lambda & \text{constant} \\
            \lambda \tfrac12 (1 + \cos(\pi (k - w)/(S - w))) & \text{cosine} \\
            \lambda (1 - (k - w)/(S - w)) & \text{linear} \end{cases}
    """
    lr, S, w = config.lr, config.steps, warmup_steps(config)
    decay = max(S - w, 1)
    main = {
        "constant": optax.constant_schedule(lr),
        "cosine": optax.cosine_decay_schedule(lr, decay),
        "linear": optax.linear_schedule(lr, 0.0, decay),
    }[config.schedule]
    if w == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, w), main], [w])


def check_names(config: TrainConfig) -> None:
    """Refuses an unknown dtype, optimizer or matmul dtype.

    Raises:
      TrainingError: naming the value and the accepted ones.
    """
    if not isinstance(config.dtype, str) or config.dtype not in DTYPES:
        raise TrainingError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    check_optimizer(config.optimizer)
    if not isinstance(config.schedule, str) or config.schedule not in SCHEDULES:
        raise TrainingError(
            f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    if not isinstance(config.matmul_dtype, str | None) or config.matmul_dtype not in (
        None,
        *MATMUL_DTYPES,
    ):
        raise TrainingError(
            f"unknown matmul dtype {config.matmul_dtype!r}; choose "
            f"{', '.join(MATMUL_DTYPES)} or leave it unset (products in {config.dtype})"
        )
    if not isinstance(config.kernel, str) or config.kernel not in KERNELS:
        choices = ", ".join(KERNELS)
        raise TrainingError(f"unknown kernel {config.kernel!r}; choose one of {choices}")


def check_optimizer(name: str) -> None:
    """Raises :class:`TrainingError` unless ``name`` is one of :data:`OPTIMIZERS`."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
