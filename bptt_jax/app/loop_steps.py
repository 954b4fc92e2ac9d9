r"""One step of the training loop and what follows it on schedule.

:func:`bptt_jax.app.loop.train` (the loop itself: start, resume, the steps,
the finish) is the other half; this module holds the loop's values, a
:class:`Session` (what does not change during a session) and a :class:`Loop`
(what changes from step to step), and the small functions that take a
:class:`Loop` and return a new one: one training step, fetching the losses,
validation, the divergence checks and saving the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import save_checkpoint
from .checkpoint_schema import training_arrays, training_header
from .config import TrainConfig, TrainingError
from .data import Corpus
from .divergence import NONFINITE_IN_A_ROW, divergence
from .evaluate import Evaluation, evaluate, verify_gradients
from .models import zero_state
from .parallel import local_rows, shard_batch
from .state import History, TrainState
from .streams import Streams

CHECKPOINT_NAME = "checkpoint.bptt"
_SYNC_EVERY = 10  # fetch losses from the device every this many steps


@dataclass(frozen=True)
class Session:
    """What does not change while :func:`train` runs: the data, the step, where output goes."""

    config: TrainConfig
    corpus: Corpus
    streams: Streams
    xs_val: np.ndarray  # (S, L) validation inputs
    ys_val: np.ndarray  # (S, L) validation targets
    baselines: dict
    fingerprint: dict  # of the training data, saved in every checkpoint
    mesh: Any
    tx: Any  # the optax transformation
    step_fn: Callable  # make_train_step's jitted step
    verify_fn: Callable  # the gradient function --verify-every checks
    verify_tol: float | None
    lead: bool  # the process that writes files and shows progress
    progress: bool
    echo: Callable[[str], None]
    allow_data_change: bool = False  # --resume on other training data
    signals: Any = None  # the Interrupts of this run
    bar: Any = None  # the tqdm bar, once the loop starts
    t_start: float = 0.0  # time.perf_counter() when the loop started
    first_step: int = 0  # the step this session started from

    @property
    def checkpoint(self) -> pathlib.Path:
        return pathlib.Path(self.config.out) / CHECKPOINT_NAME


class Loop(NamedTuple):
    """What changes from step to step; each function returns a new one."""

    state: TrainState
    history: History
    pending: tuple = ()  # ((step, loss, finite), ...) still on the device
    evaluation: Evaluation | None = None  # the last one of this session
    saved_step: int | None = None  # the step of the last checkpoint this session wrote


def zeros_h(s: Session) -> jax.Array:
    """``(B, H)`` zeros (``(L*D, B, H)`` for a deep model), this process's rows on its
    devices."""
    rows = s.config.batch_size // jax.process_count()
    return shard_batch(zero_state(s.config, rows), s.mesh)


def one_step(s: Session, loop: Loop) -> Loop:
    """The next chunk: (every --verify-every steps, the referee, then) one training step."""
    state, history, c = loop.state, loop.history, s.config
    xs, ys = s.streams.chunk(state.chunk)
    if c.verify_every and state.step % c.verify_every == 0:
        errors = verify_gradients(
            host_params(state), xs, ys, local_rows(state.h), s.verify_fn, tol=s.verify_tol,
            activation=c.activation,
        )  # fmt: skip
        history = dataclasses.replace(
            history, verified=history.verified + 1,
            verify_error=max(history.verify_error, *errors.values()),
        )  # fmt: skip
    params, opt_state, h, loss, finite, _ = s.step_fn(
        state.params, state.opt_state, shard_batch(xs, s.mesh), shard_batch(ys, s.mesh), state.h
    )
    chunk, epoch = state.chunk + 1, state.epoch
    if chunk == s.streams.num_chunks:  # the streams wrap round: start from zeros
        chunk, epoch, h = 0, epoch + 1, zeros_h(s)
    state = TrainState(params, opt_state, h, state.key, state.step + 1, chunk, epoch)
    return Loop(state, history, (*loop.pending, (state.step - 1, loss, finite)), loop.evaluation)


def after_step(s: Session, loop: Loop) -> Loop:
    """Fetches losses, stops a diverged run, validates and saves, each on its schedule."""
    step, c = loop.state.step, s.config
    if len(loop.pending) >= _SYNC_EVERY or step == c.steps:
        loop = flush(s, loop)
        if loop.history.nonfinite_run >= NONFINITE_IN_A_ROW:
            save(s, loop)  # no step was applied since the last finite one
            raise TrainingError(nonfinite_message(c) + f"; checkpoint {s.checkpoint}")
    if c.eval_every and step % c.eval_every == 0:
        loop = evaluate_and_log(s, flush(s, loop))
    if c.save_every and step % c.save_every == 0:
        loop = save(s, flush(s, loop))
    return loop


def flush(s: Session, loop: Loop) -> Loop:
    """Moves the pending losses from the device into the history; updates the bar."""
    if not loop.pending:
        return loop
    values = jax.device_get([(loss, finite) for _, loss, finite in loop.pending])
    h = loop.history
    rows, nonfinite, run = [], h.nonfinite, h.nonfinite_run
    for (step, _, _), (loss, finite) in zip(loop.pending, values, strict=True):
        rows.append([step, float(loss), bool(finite)])
        nonfinite, run = (nonfinite, 0) if finite else (nonfinite + 1, run + 1)
    h = dataclasses.replace(h, train=(*h.train, *rows), nonfinite=nonfinite, nonfinite_run=run)
    finite = [loss for _, loss, ok in rows if ok]
    if finite:
        check_divergence(s, loop, float(np.mean(finite)) / math.log(2), "training")
    done = loop.state.step - s.first_step
    tokens = done * s.config.batch_size * s.config.seq_len
    s.bar.set_postfix_str(
        f"loss {rows[-1][1] / math.log(2):.3f} bits/char, "
        f"{tokens / max(time.perf_counter() - s.t_start, 1e-9):,.0f} tokens/s"
        + (f", {nonfinite} skipped" if nonfinite else ""),
        refresh=False,
    )
    return loop._replace(history=h, pending=())


def host_params(state: TrainState):
    """A single-device copy of the parameters, for evaluation and --verify-every."""
    return jax.tree.map(jnp.asarray, jax.device_get(state.params))


def evaluate_and_log(s: Session, loop: Loop) -> Loop:
    ev = evaluate(host_params(loop.state), s.xs_val, s.ys_val, s.config.task, s.config.activation)
    h = loop.history
    history = dataclasses.replace(h, val=(*h.val, [loop.state.step, ev.loss, ev.accuracy]))
    if s.lead:
        line = ev.line(loop.state.step)
        s.bar.write(line) if s.progress else s.echo(line)
    check_divergence(s, loop, ev.bits, "validation")
    return loop._replace(history=history, evaluation=ev)


def check_divergence(s: Session, loop: Loop, bits: float, what: str) -> None:
    """Stops a diverged run (:mod:`bptt_jax.app.divergence`) without saving its model."""
    c = s.config
    why = divergence(
        bits, what=what, step=loop.state.step, steps=c.steps,
        num_classes=s.corpus.num_classes, unigram_bits=s.baselines.get("unigram_bits"),
    )  # fmt: skip
    if why is None:
        return
    kept = (
        f"the checkpoint of step {loop.saved_step} ({s.checkpoint}) is kept"
        if loop.saved_step is not None
        else "no checkpoint of this run was saved"
    )
    raise TrainingError(
        f"training diverged at step {loop.state.step}: {why}; try a lower --lr (now {c.lr:g})"
        + ("" if c.clip > 0 else " or --clip 1")
        + f"; {kept}"
    )


def save(s: Session, loop: Loop) -> Loop:
    arrays = training_arrays(loop.state)  # every process: gathering h is collective
    if s.lead:
        header = training_header(s.config, s.corpus, loop.state, loop.history, s.fingerprint)
        if s.signals is not None:
            s.signals.saving = str(s.checkpoint)
        try:
            save_checkpoint(s.checkpoint, header, arrays)
        finally:
            if s.signals is not None:
                s.signals.saving = None
    return loop._replace(saved_step=loop.state.step)


def nonfinite_message(config: TrainConfig) -> str:
    if config.clip <= 0 and config.clip_value <= 0:
        cause = "likely cause: exploding gradients with no clipping; try --clip 1"
    else:
        cause = f"likely cause: the learning rate --lr {config.lr} is too high; try a smaller one"
    return (
        f"{NONFINITE_IN_A_ROW} steps in a row had a non-finite loss or gradient and were "
        f"not applied; training stopped ({cause})"
    )
