"""What defines a training run: :class:`TrainConfig`, its checks, and the rules of ``--resume``.

The names the configuration accepts (optimizers, dtypes) are listed here once;
the command line takes its ``choices=`` from these lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import optax

from ..core.checks import MATMUL_DTYPES

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

# Options that may differ between a run and its --resume: they do not change
# the parameters a given step produces.
RESUMABLE = ("steps", "out", "eval_every", "save_every", "verify_every")


class TrainingError(Exception):
    """Training stopped for a reason the user must act on (reported without a traceback)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    task: str = "lm"  # "lm": next character; "tag": token type
    text: tuple[str, ...] = ()  # --text paths; () = the standard library
    max_files: int | None = None  # only the first N files of the corpus
    steps: int = 3000  # total optimizer steps
    batch_size: int = 64  # B parallel streams
    seq_len: int = 64  # T characters per chunk (the truncation length)
    hidden_size: int = 256  # H
    lr: float = 3e-3
    optimizer: str = "adam"
    clip: float = 1.0  # global-norm clip of the mean gradient; 0 = off
    clip_value: float = 0.0  # element-wise clip to [-v, v]; 0 = off
    seed: int = 0
    out: str = "runs"
    eval_every: int = 250
    save_every: int = 1000
    verify_every: int = 0  # 0 = never
    val_chars: int = 65536
    dtype: str = "float32"  # of the parameters and the computation: float32 or float64
    matmul_dtype: str | None = None  # "bfloat16": bf16 matrix products, dtype accumulation
    recompute: bool = False  # keep h_t every ~sqrt(T) steps only, recompute the rest

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["text"] = list(self.text)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "text" else v for k, v in d.items() if k in known})


def check_names(config: TrainConfig) -> None:
    """Refuses an unknown dtype, optimizer or matmul dtype.

    Raises:
      TrainingError: naming the value and the accepted ones.
    """
    if config.dtype not in DTYPES:
        raise TrainingError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    check_optimizer(config.optimizer)
    if config.matmul_dtype not in (None, *MATMUL_DTYPES):
        raise TrainingError(
            f"unknown matmul dtype {config.matmul_dtype!r}; choose "
            f"{', '.join(MATMUL_DTYPES)} or leave it unset (products in {config.dtype})"
        )


def check_optimizer(name: str) -> None:
    """Raises :class:`TrainingError` unless ``name`` is one of :data:`OPTIMIZERS`."""
    if name not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
