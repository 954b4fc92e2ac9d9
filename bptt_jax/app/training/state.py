"""What a training run carries from step to step, what its checkpoint restores, and
what :func:`bptt_jax.app.training.loop.train` returns."""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from ...core.params import DeepParams, Params
from .config import TrainConfig
from .validation import Evaluation


class TrainState(NamedTuple):
    """What a step changes; replaced as a whole, so Ctrl-C never sees half an update."""

    params: Params | DeepParams
    opt_state: Any
    h: Any  # (B, H) the state carried into the next chunk (the LSTM's: a pair (h, c))
    key: jax.Array  # the run's RNG key (used for the initialisation)
    step: int  # steps taken
    chunk: int  # next chunk of the streams
    epoch: int  # completed passes over the training streams


@dataclass(frozen=True)
class History:
    """The record of a run over all its sessions (saved in the checkpoint)."""

    train: tuple = ()  # ([step, loss nats/char, finite], ...)
    val: tuple = ()  # ([step, loss nats/char, accuracy or None], ...)
    nonfinite: int = 0  # steps skipped in all
    nonfinite_run: int = 0  # skipped in a row, up to the last one
    seconds: float = 0.0  # training time over all sessions
    verified: int = 0  # --verify-every checks passed
    verify_error: float = 0.0  # the largest relative error they saw
    best_step: int = 0  # the step of OUT/best.bptt (0: none saved yet)
    best_loss: float = 0.0  # its validation loss, nats/char

    def to_json(self) -> dict:
        return {
            "train": [list(r) for r in self.train],
            "val": [list(r) for r in self.val],
            "nonfinite": self.nonfinite,
            "nonfinite_run": self.nonfinite_run,
            "seconds": self.seconds,
            "verified": self.verified,
            "verify_error": self.verify_error,
            "best_step": self.best_step,
            "best_loss": self.best_loss,
        }

    @classmethod
    def from_json(cls, d: dict) -> History:
        d = dict(d)
        return cls(**(d | {"train": tuple(d.get("train", ())), "val": tuple(d.get("val", ()))}))


@dataclass(frozen=True)
class Result:
    config: TrainConfig
    state: TrainState
    history: History
    evaluation: Evaluation | None
    baselines: dict
    checkpoint: pathlib.Path
    plot: pathlib.Path | None
    interrupted: bool
    seconds: float  # this session's wall time in the loop
    steps_run: int  # steps this session ran
    devices: int = 1  # the mesh the steps ran on (all processes)
    signum: int | None = None  # the signal that interrupted the run (SIGINT 2, SIGTERM 15)
    step_seconds: float | None = None  # the steps' own time: no compilation, validation, saving
    compiled_steps: tuple[int, ...] = ()  # the steps that compiled, timed apart (1-based)

    def summary(self) -> str:
        c, ev = self.config, self.evaluation
        rate = self.steps_per_second
        parts = [
            f"{c.task} H={c.hidden_size}"
            + (f" L={c.num_layers}" if c.num_layers > 1 else "")
            + (f" {c.cell}" if c.cell != "rnn" else "")
            + (" bidirectional" if c.bidirectional else "")
            + (f" {c.activation}" if c.activation != "tanh" else "")
            + f" B={c.batch_size} T={c.seq_len} {c.optimizer} lr={c.lr}"
            + (f" {c.dtype}" if c.dtype != "float32" else "")
            + (f" {c.matmul_dtype} products" if c.matmul_dtype else "")
            + (" recompute" if c.recompute else "")
            + f" on {self.devices} device{'s' if self.devices > 1 else ''}",
            f"step {self.state.step}/{c.steps}"
            + (" (interrupted)" if self.interrupted else "")
            + f" in {self.history.seconds:.0f} s ({rate:.1f} steps/s, "
            f"{rate * c.batch_size * c.seq_len:,.0f} tokens/s"
            + (", compilation and validation excluded)" if self.step_seconds else ")"),
        ]
        if ev is not None:
            parts.append(self._validation())
        parts.append(f"{self.history.nonfinite} non-finite steps skipped")
        if self.history.verified:
            parts.append(
                f"hand gradients = jax.grad in {self.history.verified} checks "
                f"(max rel. error {self.history.verify_error:.1e})"
            )
        parts.append(f"checkpoint {self.checkpoint}")
        return "bptt-jax train: " + "; ".join(parts)

    @property
    def steps_per_second(self) -> float:
        """This session's steps per second of their own time (compilation, validation and
        saving excluded; the steps that compiled, ``compiled_steps``, are not counted):
        the rate of the rows of ``metrics.csv`` taken together."""
        if self.step_seconds:
            return max(self.steps_run - len(self.compiled_steps), 0) / self.step_seconds
        return self.steps_run / self.seconds if self.seconds > 0 else float("nan")

    def _validation(self) -> str:
        ev, b = self.evaluation, self.baselines
        val = f"val {ev.bits:.3f} bits/char, ppl {ev.perplexity:.2f}"
        if ev.chars:
            val += f" over {ev.chars:,} held-out chars"
        if self.history.best_step:
            val += (f" (best {self.history.best_loss / math.log(2):.3f} at step "
                    f"{self.history.best_step})")  # fmt: skip
        if self.config.task == "lm":
            return val + f" (unigram {b['unigram_bits']:.3f} bits/char)"
        return val + (
            f", accuracy {ev.accuracy:.1%} (majority class {b['majority']:.1%}, "
            f"char unigram {b['char_unigram']:.1%})"
        )
