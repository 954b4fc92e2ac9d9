"""What a training run carries from step to step, and what its checkpoint restores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from ..core.params import Params


class TrainState(NamedTuple):
    """What a step changes; replaced as a whole, so Ctrl-C never sees half an update."""

    params: Params
    opt_state: Any
    h: jax.Array  # (B, H) the state carried into the next chunk
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

    def to_json(self) -> dict:
        return {
            "train": [list(r) for r in self.train],
            "val": [list(r) for r in self.val],
            "nonfinite": self.nonfinite,
            "nonfinite_run": self.nonfinite_run,
            "seconds": self.seconds,
            "verified": self.verified,
            "verify_error": self.verify_error,
        }

    @classmethod
    def from_json(cls, d: dict) -> History:
        d = dict(d)
        return cls(**(d | {"train": tuple(d.get("train", ())), "val": tuple(d.get("val", ()))}))
