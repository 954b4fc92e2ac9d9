r"""The training loop: truncated BPTT over long streams, checkpointed and resumable.

Every step takes the next chunk ``xs, ys (B, T)`` of the B parallel streams
(:class:`bptt_jax.app.streams.Streams`) and the final hidden state of the previous
chunk as :math:`h_0`, and runs, in one ``jax.jit``,

.. math::

    E, \nabla E, h_T = \mathrm{bptt\_core}(\theta, x, y, h_0),\qquad
    g = \nabla E / (B T),\qquad
    \theta := \theta + \mathrm{optax}(g)

-- :func:`bptt_jax.core.step.train_step` with the hand-derived BPTT (never
``jax.grad``), optional clipping, and an optax update (``sgd`` is the seed's
:math:`\theta := \theta - \lambda g`). A step whose loss, gradients or new
parameters are not finite is not applied. ``jax.grad`` appears only in
:func:`bptt_jax.app.evaluate.verify_gradients`, the ``--verify-every`` referee.

On ``N > 1`` devices the step is data-parallel over a 1-D mesh
(:mod:`bptt_jax.app.parallel`): the batch is split across the devices, each
runs the same hand BPTT on its ``B / N`` streams, ``E`` and the gradients are
summed with ``psum``, and parameters and optimizer state are replicated, so
every device applies the same update. Checkpoints hold host arrays (the
hidden state in stream order) and resume on any device count.

The loop's state is one value, :class:`Loop` (the :class:`TrainState`, the
:class:`History`, the losses not yet fetched from the device, the last
evaluation), passed to and returned by small functions; what does not change
during a session is a :class:`Session`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ..core.params import init_params
from ..referees.tolerances import AUTODIFF
from .checkpoint import save_checkpoint
from .checkpoint_schema import (
    data_fingerprint,
    read_training_checkpoint,
    restore,
    training_arrays,
    training_header,
)
from .config import TrainConfig, TrainingError, check_config
from .data import Corpus, DataError, load_corpus
from .divergence import NONFINITE_IN_A_ROW, divergence
from .evaluate import Evaluation, baselines, evaluate, verify_gradients
from .parallel import AXIS, local_rows, replicate, shard_batch
from .preflight import check_writable_folder, require_memory, rnn_bytes
from .signals import Interrupted, Interrupts, signal_name
from .state import History, Result, TrainState
from .step import cached_step, hand_grad_fn, step_grad_fn, training_mesh
from .streams import Streams, eval_arrays

CHECKPOINT_NAME = "checkpoint.bptt"
PLOT_NAME = "loss.png"
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


def train(
    config: TrainConfig,
    *,
    resume: str | pathlib.Path | None = None,
    corpus: Corpus | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    grad_fn: Callable | None = None,
    on_step: Callable[[TrainState], None] | None = None,
    devices: int | None = None,
    allow_data_change: bool = False,
) -> Result:
    """Trains (or resumes) a run; saves checkpoints and the loss plot under ``config.out``.

    Args:
      config: the run (for a resume, see :func:`bptt_jax.app.checkpoint_schema.config_for_resume`).
      resume: a checkpoint to continue from; the result is bitwise the same
        as an uninterrupted run of the same configuration (on the same
        machine and JAX).
      corpus: the corpus of ``config`` when the caller has already loaded it.
      progress: show a progress bar (on stderr).
      echo: where the validation lines go.
      grad_fn: the gradient function (default the hand ``bptt_core``, or on
        several devices its data-parallel twin
        :func:`bptt_jax.app.parallel.data_parallel_bptt_core`).
      on_step: called with the state after each step (for tests and tools).
      devices: how many devices the step runs on, data-parallel (default all;
        ``config.batch_size`` must be a multiple). A multi-process run
        (after ``jax.distributed.initialize``) uses every process's devices.
        Not part of the configuration: a checkpoint resumes on any count.
      allow_data_change: resume although the training data's fingerprint
        differs from the checkpoint's (``--allow-data-change``).

    Before the corpus is read, the configuration is checked
    (:func:`bptt_jax.app.config.check_config`), ``config.out`` must be a
    writable folder, and the model must fit in memory. A run that diverges
    (:mod:`bptt_jax.app.divergence`) stops with a :class:`TrainingError`.

    Raises:
      DataError, CheckpointError, TrainingError, UsageError: each with a message
      for the user. Interrupted: SIGINT or SIGTERM arrived before the first
      step. A later SIGINT or SIGTERM is not raised: the step under way
      completes, the checkpoint is saved and the result is marked
      ``interrupted`` (with ``signum``).
    """
    check_config(config)
    itemsize = jnp.dtype(config.dtype).itemsize
    require_memory(
        f"training with --hidden-size {config.hidden_size} --batch-size {config.batch_size} "
        f"--seq-len {config.seq_len}",
        rnn_bytes(K=256, H=config.hidden_size, C=256, B=config.batch_size, T=config.seq_len,
                  itemsize=itemsize),
    )  # fmt: skip
    check_writable_folder(config.out)
    # float64 needs x64 for the whole run (initialisation, steps, checkpoints);
    # the context leaves the caller's setting as it was.
    x64 = jax.enable_x64(True) if config.dtype == "float64" else contextlib.nullcontext()
    with x64, Interrupts() as signals:
        session = _session(config, corpus, progress, echo, grad_fn, devices)
        session = dataclasses.replace(
            session, allow_data_change=allow_data_change, signals=signals
        )
        _stop_before_start(signals, "reading the corpus")
        loop = _start(session, resume)
        session, loop = _open_bar(session, loop)
        if signals.stop:
            session.bar.close()
            _stop_before_start(signals, "the first step")
        loop, interrupted, seconds = _steps(session, loop, on_step)
        return _finish(session, loop, interrupted, seconds)


def _stop_before_start(signals: Interrupts, where: str) -> None:
    if signals.stop:
        raise Interrupted(
            signals.signum,
            f"interrupted by {signal_name(signals.signum)} before {where}: no step was "
            "taken, nothing saved",
        )


def _session(config, corpus, progress, echo, grad_fn, devices) -> Session:
    mesh = training_mesh(devices, config.batch_size)
    if corpus is None:
        corpus = load_corpus(config.text, task=config.task, max_files=config.max_files)
    labels = config.task == "tag"
    streams = Streams(
        corpus.train_ids, corpus.train_labels if labels else None, config.batch_size,
        config.seq_len, num_processes=jax.process_count(), process_id=jax.process_index(),
    )  # fmt: skip
    xs_val, ys_val = eval_arrays(
        corpus.val_ids, corpus.val_labels if labels else None, config.batch_size,
        config.val_chars,
    )  # fmt: skip
    K, C = corpus.vocab.size, corpus.num_classes
    for name, a, n in (("input ids", streams.xs, K), ("labels", streams.ys, C)):
        if a.size and (a.min() < 0 or a.max() >= n):  # JAX would clamp silently
            raise DataError(f"training {name} outside 0..{n - 1}")
    tx, step_fn = cached_step(
        config.optimizer, config.lr, config.clip, config.clip_value,
        step_grad_fn(config, mesh, grad_fn),
    )  # fmt: skip
    return Session(
        config, corpus, streams, xs_val, ys_val, baselines(corpus, ys_val, xs_val),
        data_fingerprint(corpus), mesh, tx,
        step_fn, verify_fn=grad_fn or hand_grad_fn(config.matmul_dtype, bool(config.recompute)),
        verify_tol=AUTODIFF["bfloat16"] if config.matmul_dtype else None,
        lead=jax.process_index() == 0, progress=progress, echo=echo,
    )  # fmt: skip


def _zeros_h(s: Session) -> jax.Array:
    """``(B, H)`` zeros, this process's rows on its devices."""
    rows = s.config.batch_size // jax.process_count()
    return shard_batch(np.zeros((rows, s.config.hidden_size), s.config.dtype), s.mesh)


def _start(s: Session, resume) -> Loop:
    """The loop's first value: a fresh model, or the checkpoint ``resume``'s."""
    if resume is not None:
        state, history = restore(
            read_training_checkpoint(resume), s.config, s.corpus, s.tx,
            fingerprint=s.fingerprint, allow_data_change=s.allow_data_change,
        )  # fmt: skip
        n_proc, proc = jax.process_count(), jax.process_index()
        h = shard_batch(state.h[proc::n_proc], s.mesh)  # this process's streams p, p + P, ...
        params, opt_state = replicate(state.params, s.mesh), replicate(state.opt_state, s.mesh)
        return Loop(state._replace(params=params, opt_state=opt_state, h=h), history)
    c = s.config
    key, init_key = jax.random.split(jax.random.key(c.seed))
    params = init_params(
        init_key, s.corpus.vocab.size, c.hidden_size, num_classes=s.corpus.num_classes,
        dtype=jnp.dtype(c.dtype),
    )  # fmt: skip
    params = replicate(params, s.mesh)
    opt_state = replicate(s.tx.init(params), s.mesh)
    return Loop(TrainState(params, opt_state, _zeros_h(s), key, 0, 0, 0), History())


def _open_bar(s: Session, loop: Loop) -> tuple[Session, Loop]:
    """The progress bar, the step-0 validation, and the clock of this session."""
    size = shutil.get_terminal_size()  # a pty reporting 0×0 would hide the bar; 80×24 then
    bar = tqdm(
        total=s.config.steps, initial=loop.state.step, disable=not (s.progress and s.lead),
        unit="step", ncols=size.columns, nrows=size.lines, smoothing=0.1,
    )  # fmt: skip
    s = dataclasses.replace(s, bar=bar, first_step=loop.state.step)
    if s.config.eval_every and loop.state.step == 0:
        loop = _evaluate_and_log(s, loop)  # where the curve starts: about log2(C) bits/char
    return dataclasses.replace(s, t_start=time.perf_counter()), loop


def _steps(s: Session, loop: Loop, on_step) -> tuple[Loop, bool, float]:
    """Steps up to ``config.steps``; returns the loop, whether a signal stopped it, and the
    seconds it ran. The signal flag is read between steps, so a step is never cut short."""
    interrupted = False
    try:
        while loop.state.step < s.config.steps:
            if s.signals is not None and s.signals.stop:
                interrupted = True
                break
            loop = _one_step(s, loop)
            s.bar.update(1)
            if on_step is not None:
                on_step(loop.state)
            loop = _after_step(s, loop)
    except KeyboardInterrupt:  # a caller's own SIGINT handler (no Interrupts in a thread)
        interrupted = True
    finally:
        seconds = time.perf_counter() - s.t_start
        s.bar.close()
    return loop, interrupted, seconds


def _one_step(s: Session, loop: Loop) -> Loop:
    """The next chunk: (every --verify-every steps, the referee, then) one training step."""
    state, history, c = loop.state, loop.history, s.config
    xs, ys = s.streams.chunk(state.chunk)
    if c.verify_every and state.step % c.verify_every == 0:
        errors = verify_gradients(
            _host_params(state), xs, ys, local_rows(state.h), s.verify_fn, tol=s.verify_tol
        )
        history = dataclasses.replace(
            history, verified=history.verified + 1,
            verify_error=max(history.verify_error, *errors.values()),
        )  # fmt: skip
    params, opt_state, h, loss, finite = s.step_fn(
        state.params, state.opt_state, shard_batch(xs, s.mesh), shard_batch(ys, s.mesh), state.h
    )
    chunk, epoch = state.chunk + 1, state.epoch
    if chunk == s.streams.num_chunks:  # the streams wrap round: start from zeros
        chunk, epoch, h = 0, epoch + 1, _zeros_h(s)
    state = TrainState(params, opt_state, h, state.key, state.step + 1, chunk, epoch)
    return Loop(state, history, (*loop.pending, (state.step - 1, loss, finite)), loop.evaluation)


def _after_step(s: Session, loop: Loop) -> Loop:
    """Fetches losses, stops a diverged run, validates and saves, each on its schedule."""
    step, c = loop.state.step, s.config
    if len(loop.pending) >= _SYNC_EVERY or step == c.steps:
        loop = _flush(s, loop)
        if loop.history.nonfinite_run >= NONFINITE_IN_A_ROW:
            _save(s, loop)  # no step was applied since the last finite one
            raise TrainingError(_nonfinite_message(c) + f"; checkpoint {s.checkpoint}")
    if c.eval_every and step % c.eval_every == 0:
        loop = _evaluate_and_log(s, _flush(s, loop))
    if c.save_every and step % c.save_every == 0:
        loop = _save(s, _flush(s, loop))
    return loop


def _flush(s: Session, loop: Loop) -> Loop:
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
        _check_divergence(s, loop, float(np.mean(finite)) / math.log(2), "training")
    done = loop.state.step - s.first_step
    tokens = done * s.config.batch_size * s.config.seq_len
    s.bar.set_postfix_str(
        f"loss {rows[-1][1] / math.log(2):.3f} bits/char, "
        f"{tokens / max(time.perf_counter() - s.t_start, 1e-9):,.0f} tokens/s"
        + (f", {nonfinite} skipped" if nonfinite else ""),
        refresh=False,
    )
    return loop._replace(history=h, pending=())


def _host_params(state: TrainState):
    """A single-device copy of the parameters, for evaluation and --verify-every."""
    return jax.tree.map(jnp.asarray, jax.device_get(state.params))


def _evaluate_and_log(s: Session, loop: Loop) -> Loop:
    ev = evaluate(_host_params(loop.state), s.xs_val, s.ys_val, s.config.task)
    h = loop.history
    history = dataclasses.replace(h, val=(*h.val, [loop.state.step, ev.loss, ev.accuracy]))
    if s.lead:
        line = ev.line(loop.state.step)
        s.bar.write(line) if s.progress else s.echo(line)
    _check_divergence(s, loop, ev.bits, "validation")
    return loop._replace(history=history, evaluation=ev)


def _check_divergence(s: Session, loop: Loop, bits: float, what: str) -> None:
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


def _save(s: Session, loop: Loop) -> Loop:
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


def _finish(s: Session, loop: Loop, interrupted: bool, seconds: float) -> Result:
    """Saves (first of all after Ctrl-C), validates the last step, plots, reports."""
    loop = _flush(s, loop)
    history = loop.history
    loop = loop._replace(history=dataclasses.replace(history, seconds=history.seconds + seconds))
    plot = None
    if interrupted:  # save and go: no evaluation, no plot
        loop = _save(s, loop)
    else:
        if loop.evaluation is None or loop.history.val[-1][0] != loop.state.step:
            loop = _evaluate_and_log(s, loop)
        loop = _save(s, loop)
        if loop.history.train and s.lead:
            plot = _plot(s, loop.history)
    signum = None
    if interrupted:
        signum = s.signals.signum if s.signals is not None and s.signals.stop else 2
    return Result(
        s.config, loop.state, loop.history, loop.evaluation, s.baselines, s.checkpoint, plot,
        interrupted, seconds, loop.state.step - s.first_step, s.mesh.shape[AXIS], signum,
    )  # fmt: skip


def _plot(s: Session, history: History) -> pathlib.Path:
    # matplotlib is heavy and only needed here: imported when a plot is written.
    from .plots import plot_history

    out = pathlib.Path(s.config.out) / PLOT_NAME
    return plot_history(out, history, s.baselines, s.config, s.corpus.vocab.size)


def _nonfinite_message(config: TrainConfig) -> str:
    if config.clip <= 0 and config.clip_value <= 0:
        cause = "likely cause: exploding gradients with no clipping; try --clip 1"
    else:
        cause = f"likely cause: the learning rate --lr {config.lr} is too high; try a smaller one"
    return (
        f"{NONFINITE_IN_A_ROW} steps in a row had a non-finite loss or gradient and were "
        f"not applied; training stopped ({cause})"
    )
