r"""One step of the training loop and what follows it on schedule.

:func:`bptt_jax.app.training.loop.train` (the loop itself: start, resume, the steps,
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

from ..io.checkpoint import save_checkpoint
from ..io.corpus import Corpus
from ..io.streams import Streams
from .checkpoint_schema import training_arrays, training_header
from .config import TrainConfig, TrainingError, learning_rate, model_cell, warmup_steps
from .divergence import NONFINITE_IN_A_ROW, divergence
from .models import zero_state
from .outputs import (
    BEST_NAME,
    CHECKPOINT_NAME,
    METRICS_COLUMNS,
    METRICS_NAME,
    cannot_write,
    writing,
)
from .parallel import local_rows, shard_batch
from .state import History, TrainState
from .validation import Evaluation, HeldOut, evaluate
from .verify import verify_gradients

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "METRICS_COLUMNS", "METRICS_NAME"]

_SYNC_EVERY = 10  # fetch losses from the device every this many steps


@dataclass
class Clock:
    """This session's time, split into the steps' own and the rest (the steps that
    compile, validation, --verify-every, saving, writing metrics.csv), for rates that
    measure the steps alone.

    The step is one jitted function compiled once per variant: chunks with a document
    start pass their ``resets`` mask, the others ``None`` (the seed's core). The first
    step of each variant in a session compiles; it is timed apart (after the steps
    before it have finished) and counted in ``excluded``, so every rate is
    (steps - excluded) / (seconds - other)."""

    other: float = 0.0  # seconds of compilation, validation, saving, logging
    excluded: int = 0  # steps whose time is in ``other`` (they compiled)
    compiled: list = dataclasses.field(default_factory=list)  # [(variant, step), ...]
    mark: float = 0.0  # perf_counter() at the end of the last metrics row
    mark_step: int = 0  # the step of the last metrics row
    mark_other: float = 0.0  # ``other`` then
    mark_excluded: int = 0  # ``excluded`` then
    end: float | None = None  # at the end of the steps: their own seconds

    def steps_seconds(self, now: float, t_start: float) -> float:
        return max(now - t_start - self.other, 1e-9)


@dataclass(frozen=True)
class Session:
    """What does not change while :func:`train` runs: the data, the step, where output goes."""

    config: TrainConfig
    corpus: Corpus
    streams: Streams
    held: HeldOut  # the held-out files validation scores
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
    clock: Clock = dataclasses.field(default_factory=Clock)

    @property
    def checkpoint(self) -> pathlib.Path:
        return pathlib.Path(self.config.out) / CHECKPOINT_NAME


class Loop(NamedTuple):
    """What changes from step to step; each function returns a new one."""

    state: TrainState
    history: History
    pending: tuple = ()  # ((step, loss, finite, grad norm), ...) still on the device
    evaluation: Evaluation | None = None  # the last one of this session
    saved_step: int | None = None  # the step of the last checkpoint this session wrote
    window: tuple = ()  # ((loss, finite, grad norm), ...) since the last metrics row
    logged_step: int | None = None  # the step of the last metrics row (one row a step)


def zeros_h(s: Session):
    """``(B, H)`` zeros (``(L*D, B, H)`` for a deep model; the LSTM's pair of them), this
    process's rows on its devices."""
    rows = s.config.batch_size // jax.process_count()
    return shard_batch(zero_state(s.config, rows), s.mesh)


def _chunk_resets(s: Session, chunk: int) -> jax.Array | None:
    """The chunk's ``(B, T)`` resets (documents start from zero), or ``None`` when no
    document starts in it (most chunks): the step then traces no reset, the same
    gradient for about 7 % less time. One process only: several must run the same
    program."""
    resets = s.streams.resets(chunk)
    if jax.process_count() == 1 and not resets.any():
        return None
    return shard_batch(resets, s.mesh)


def one_step(s: Session, loop: Loop) -> Loop:
    """The next chunk: (every --verify-every steps, the referee, then) one training step."""
    state, history, c = loop.state, loop.history, s.config
    xs, ys = s.streams.chunk(state.chunk)
    resets = _chunk_resets(s, state.chunk)
    if c.verify_every and state.step % c.verify_every == 0:
        t0 = time.perf_counter()
        errors = verify_gradients(
            host_params(state), xs, ys, local_rows(state.h), s.verify_fn, tol=s.verify_tol,
            activation=c.activation, cell=c.cell, resets=s.streams.resets(state.chunk),
        )  # fmt: skip
        history = dataclasses.replace(
            history, verified=history.verified + 1,
            verify_error=max(history.verify_error, *errors.values()),
        )  # fmt: skip
        s.clock.other += time.perf_counter() - t0  # the referee is not the step
    variant = "seed core" if resets is None else "document starts"
    compiles = variant not in {v for v, _ in s.clock.compiled}
    if compiles:  # the steps before it finish first: their time stays theirs
        jax.block_until_ready(state.h)
    t0 = time.perf_counter()
    params, opt_state, h, loss, finite, gnorm = s.step_fn(
        state.params,
        state.opt_state,
        shard_batch(xs, s.mesh),
        shard_batch(ys, s.mesh),
        state.h,
        resets,
    )
    if compiles:  # compilation (and this one step): not the steps' own time
        jax.block_until_ready(loss)
        s.clock.other += time.perf_counter() - t0
        s.clock.excluded += 1
        s.clock.compiled.append((variant, state.step + 1))
    chunk, epoch = state.chunk + 1, state.epoch
    if chunk == s.streams.num_chunks:  # the streams wrap round: start from zeros
        chunk, epoch, h = 0, epoch + 1, zeros_h(s)
    state = TrainState(params, opt_state, h, state.key, state.step + 1, chunk, epoch)
    pending = (*loop.pending, (state.step - 1, loss, finite, gnorm))
    return loop._replace(state=state, history=history, pending=pending)


def after_step(s: Session, loop: Loop) -> Loop:
    """Fetches losses, stops a diverged run, validates and saves, each on its schedule."""
    step, c = loop.state.step, s.config
    if len(loop.pending) >= _SYNC_EVERY or step == c.steps:
        loop = flush(s, loop)
        if loop.history.nonfinite_run >= NONFINITE_IN_A_ROW:
            save(s, loop)  # no step was applied since the last finite one
            raise TrainingError(nonfinite_message(c) + f"; checkpoint {s.checkpoint}")
    evaluated = bool(c.eval_every and step % c.eval_every == 0)
    if evaluated:
        loop = evaluate_and_log(s, flush(s, loop))
    # The last step's row is written after the final validation (one row a step).
    if evaluated or (step % c.log_every == 0 and step != c.steps):
        loop = write_metrics(s, flush(s, loop), loop.evaluation if evaluated else None)
    if c.save_every and step % c.save_every == 0:
        loop = save(s, flush(s, loop))
    return loop


def flush(s: Session, loop: Loop) -> Loop:
    """Moves the pending losses from the device into the history; updates the bar."""
    if not loop.pending:
        return loop
    values = jax.device_get([p[1:] for p in loop.pending])
    h = loop.history
    rows, nonfinite, run, window = [], h.nonfinite, h.nonfinite_run, list(loop.window)
    for (step, *_), (loss, finite, gnorm) in zip(loop.pending, values, strict=True):
        rows.append([step, float(loss), bool(finite)])
        window.append((float(loss), bool(finite), float(gnorm)))
        nonfinite, run = (nonfinite, 0) if finite else (nonfinite + 1, run + 1)
    h = dataclasses.replace(h, train=(*h.train, *rows), nonfinite=nonfinite, nonfinite_run=run)
    finite = [loss for _, loss, ok in rows if ok]
    if finite:
        check_divergence(s, loop, float(np.mean(finite)) / math.log(2), "training")
    done = loop.state.step - s.first_step - s.clock.excluded  # those that compiled: apart
    tokens = max(done, 0) * s.config.batch_size * s.config.seq_len
    s.bar.set_postfix_str(
        f"loss {rows[-1][1] / math.log(2):.3f} bits/char, "
        f"{tokens / s.clock.steps_seconds(time.perf_counter(), s.t_start):,.0f} tokens/s"
        + (f", {nonfinite} skipped" if nonfinite else ""),
        refresh=False,
    )
    return loop._replace(history=h, pending=(), window=tuple(window))


def host_params(state: TrainState):
    """A single-device copy of the parameters, for evaluation and --verify-every."""
    return jax.tree.map(jnp.asarray, jax.device_get(state.params))


def evaluate_and_log(s: Session, loop: Loop) -> Loop:
    """Scores all the held-out text; saves OUT/best.bptt when the loss is the best yet."""
    t0 = time.perf_counter()
    ev = evaluate(host_params(loop.state), s.held, s.config.task, model_cell(s.config))
    h, step = loop.history, loop.state.step
    history = dataclasses.replace(h, val=(*h.val, [step, ev.loss, ev.accuracy]))
    if s.lead:
        show(s, ev.line(step))
    s.clock.other += time.perf_counter() - t0
    check_divergence(s, loop, ev.bits, "validation")
    loop = loop._replace(history=history, evaluation=ev)
    if step > 0 and (not h.best_step or ev.loss < h.best_loss):
        history = dataclasses.replace(history, best_step=step, best_loss=ev.loss)
        loop = save(s, loop._replace(history=history), best=True)
    return loop


def show(s: Session, line: str) -> None:
    """Prints a line of the run's log (above the progress bar when there is one).

    Raises:
      OutputError: standard output is closed or full.
    """
    try:
        s.bar.write(line) if s.progress else s.echo(line)
    except OSError as e:
        raise cannot_write("standard output", e) from None


def write_metrics(s: Session, loop: Loop, ev: Evaluation | None) -> Loop:
    """Appends the row of this step to OUT/metrics.csv (:data:`METRICS_COLUMNS`): the means
    of the steps since the last row, their rate (see :class:`Clock`), ``ev``'s loss. The
    time this takes is not the steps'.

    Raises:
      OutputError: the row cannot be written.
    """
    now, c, k = time.perf_counter(), s.config, s.clock
    step = loop.state.step
    finite = [(loss, g) for loss, ok, g in loop.window if ok]
    train = f"{np.mean([x for x, _ in finite]) / math.log(2):.4f}" if finite else ""
    gnorm = f"{np.mean([g for _, g in finite]):.4g}" if finite else ""
    spent = (now - k.mark) - (k.other - k.mark_other) if k.mark else 0.0
    if k.mark and k.end is not None:  # after the steps: the rest of their own time
        spent = k.end - ((k.mark - s.t_start) - k.mark_other)
    n = (step - k.mark_step) - (k.excluded - k.mark_excluded) if k.mark else 0
    rate = n / spent if spent > 0 and n > 0 else math.nan
    lr = float(learning_rate(c)(max(step - 1, 0)))
    row = [step, train, "" if ev is None else f"{ev.bits:.4f}", f"{lr:.4g}", gnorm,
           f"{rate:.3f}", f"{rate * c.batch_size * c.seq_len:.0f}"]  # fmt: skip
    if s.lead:
        path = pathlib.Path(c.out) / METRICS_NAME
        with writing(path), open(path, "a", encoding="utf-8") as f:
            f.write(",".join(str(x) for x in row).replace("nan", "") + "\n")
    end = time.perf_counter()
    k.other += end - now
    k.mark, k.mark_step, k.mark_other, k.mark_excluded = end, step, k.other, k.excluded
    return loop._replace(window=(), logged_step=step)


def check_divergence(s: Session, loop: Loop, bits: float, what: str) -> None:
    """Stops a diverged run (:mod:`bptt_jax.app.training.divergence`) without saving its model."""
    c = s.config
    why = divergence(
        bits, what=what, step=loop.state.step, steps=c.steps, lr_warmup=warmup_steps(c),
        num_classes=s.corpus.num_classes, unigram_bits=s.baselines.get("unigram_bits"),
    )  # fmt: skip
    if why is None:
        return
    kept = (
        f"the checkpoint of step {loop.saved_step} ({s.checkpoint}) is kept"
        if loop.saved_step is not None
        else "no checkpoint of this run was saved"
    )
    if loop.history.best_step:
        kept += (f"; the best, step {loop.history.best_step} at "
                 f"{loop.history.best_loss / math.log(2):.3f} bits/char, is in "
                 f"{pathlib.Path(c.out) / BEST_NAME}")  # fmt: skip
    raise TrainingError(
        f"training diverged at step {loop.state.step}: {why}; try a lower --lr (now {c.lr:g})"
        + ("" if c.clip > 0 else " or --clip 1")
        + f"; {kept}"
    )


def save(s: Session, loop: Loop, *, best: bool = False) -> Loop:
    """Writes OUT/checkpoint.bptt (``best``: OUT/best.bptt)."""
    t0 = time.perf_counter()
    path = pathlib.Path(s.config.out) / BEST_NAME if best else s.checkpoint
    arrays = training_arrays(s.config, loop.state)  # every process: gathering h is collective
    if s.lead:
        header = training_header(s.config, s.corpus, loop.state, loop.history, s.fingerprint)
        if s.signals is not None:
            s.signals.saving = str(path)
        try:
            save_checkpoint(path, header, arrays)
        finally:
            if s.signals is not None:
                s.signals.saving = None
    s.clock.other += time.perf_counter() - t0
    return loop if best else loop._replace(saved_step=loop.state.step)


def nonfinite_message(config: TrainConfig) -> str:
    if config.clip <= 0 and config.clip_value <= 0:
        cause = "likely cause: exploding gradients with no clipping; try --clip 1"
    else:
        cause = f"likely cause: the learning rate --lr {config.lr} is too high; try a smaller one"
    return (
        f"{NONFINITE_IN_A_ROW} steps in a row had a non-finite loss or gradient and were "
        f"not applied; training stopped ({cause})"
    )
