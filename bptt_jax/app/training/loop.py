r"""The training loop: truncated BPTT over long streams, checkpointed and resumable.

Every step takes the next chunk ``xs, ys (B, T)`` of the B parallel streams
(:class:`bptt_jax.app.io.streams.Streams`) and the final hidden state of the previous
chunk as :math:`h_0`, and runs, in one ``jax.jit``,

.. math::

    E, \nabla E, h_T = \mathrm{hand\_bptt}(\theta, x, y, h_0),\qquad
    g = \nabla E / (B T),\qquad
    \theta := \theta + \mathrm{optax}(g)

-- :func:`bptt_jax.core.step.train_step` with the hand-derived BPTT (never
``jax.grad``), optional clipping, and an optax update (``sgd`` is the seed's
:math:`\theta := \theta - \lambda g`). A step whose loss, gradients or new
parameters are not finite is not applied. ``jax.grad`` appears only in
:func:`bptt_jax.app.training.verify.verify_gradients`, the ``--verify-every`` referee.

On ``N > 1`` devices the step is data-parallel over a 1-D mesh
(:mod:`bptt_jax.app.training.parallel`): the batch is split across the devices, each
runs the same hand BPTT on its ``B / N`` streams, ``E`` and the gradients are
summed with ``psum``, and parameters and optimizer state are replicated, so
every device applies the same update. Checkpoints hold host arrays (the
hidden state in stream order) and resume on any device count.

The loop's state is one value, :class:`Loop` (the :class:`TrainState`, the
:class:`History`, the losses not yet fetched from the device, the last
evaluation), passed to and returned by small functions; what does not change
during a session is a :class:`Session`. Both, and the functions of one step
and what follows it (validation, saving), are in :mod:`bptt_jax.app.training.session`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ...referees.tolerances import AUTODIFF
from ..io.checkpoint import CheckpointError
from ..io.corpus import Corpus, DataError, load_corpus
from ..io.preflight import check_writable_folder, require_memory, rnn_bytes
from ..io.split import announce_split
from ..io.streams import Streams
from .checkpoint_schema import data_fingerprint, read_training_checkpoint, restore
from .config import TrainConfig, check_config, model_cell
from .models import init_model
from .outputs import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    PLOT_NAME,
    OutputError,
    open_run_folder,
    repair_metrics,
    writing,
)
from .parallel import AXIS, replicate, shard_batch
from .session import (
    Loop,
    Session,
    after_step,
    evaluate_and_log,
    flush,
    one_step,
    save,
    write_metrics,
    zeros_h,
)
from .signals import Interrupted, Interrupts, signal_name
from .state import History, Result, TrainState
from .train_step import (
    cached_step,
    model_grad_fn,
    run_devices,
    run_options,
    step_grad_fn,
    training_mesh,
)
from .validation import baselines, held_out

__all__ = ["CHECKPOINT_NAME", "PLOT_NAME", "train"]


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
    overwrite: bool = False,
) -> Result:
    """Trains (or resumes) a run; saves checkpoints and the loss plot under ``config.out``.

    Args:
      config: the run (for a resume, see
        :func:`bptt_jax.app.training.checkpoint_schema.config_for_resume`).
      resume: a checkpoint to continue from; the result is bitwise the same
        as an uninterrupted run of the same configuration (on the same
        machine and JAX).
      corpus: the corpus of ``config`` when the caller has already loaded it.
      progress: show a progress bar (on stderr).
      echo: where the validation lines go.
      grad_fn: the gradient function (default the hand ``hand_bptt``, or on
        several devices its data-parallel twin
        :func:`bptt_jax.app.training.parallel.data_parallel_bptt_core`).
      on_step: called with the state after each step (for tests and tools).
      devices: how many devices the step runs on, data-parallel (default all;
        ``config.batch_size`` must be a multiple). A multi-process run
        (after ``jax.distributed.initialize``) uses every process's devices.
        Not part of the configuration: a checkpoint resumes on any count.
      allow_data_change: resume although the training data's fingerprint
        differs from the checkpoint's (``--allow-data-change``).
      overwrite: start afresh in a ``config.out`` that holds an earlier run's
        checkpoints, removing its outputs (``--overwrite``); default: refuse.

    Before the corpus is read, the configuration is checked
    (:func:`bptt_jax.app.training.config.check_config`), ``config.out`` must be a
    writable folder no other run is writing (its lock, :mod:`bptt_jax.app.training.outputs`),
    holding no other run's checkpoints and no folder in the way of an output, and
    the model must fit in memory. A run that diverges
    (:mod:`bptt_jax.app.training.divergence`) stops with a :class:`TrainingError`.

    Raises:
      DataError, CheckpointError, TrainingError, UsageError: each with a message
      for the user; an :class:`OutputError` (a failed write of metrics.csv, loss.png
      or standard output) comes after the checkpoint is saved, and says so.
      Interrupted: SIGINT or SIGTERM arrived before the first step. A later
      SIGINT or SIGTERM is not raised: the step under way completes, the
      checkpoint, metrics row and plot are written and the result is marked
      ``interrupted`` (with ``signum``), also when the signal came during the
      final validation or plot.
    """
    _preflight(config)
    lead = jax.process_index() == 0  # the process that writes the files
    lock = open_run_folder(config.out, resume=resume, overwrite=overwrite) if lead else None
    # float64 needs x64 for the whole run (initialisation, steps, checkpoints);
    # the context leaves the caller's setting as it was.
    x64 = jax.enable_x64(True) if config.dtype == "float64" else contextlib.nullcontext()
    try:
        with x64, Interrupts() as signals:
            _stop_before_start(signals, "reading the corpus")  # one held since the start
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
            loop, interrupted, seconds, failure = _steps(session, loop, on_step)
            return _finish(session, loop, interrupted, seconds, failure)
    finally:
        if lock is not None:
            lock.release()


def _preflight(config: TrainConfig) -> None:
    """Checks the configuration, the memory the model needs and the output folder."""
    check_config(config)
    itemsize = jnp.dtype(config.dtype).itemsize
    require_memory(
        f"training with --hidden-size {config.hidden_size} --batch-size {config.batch_size} "
        f"--seq-len {config.seq_len}",
        rnn_bytes(K=256, H=config.hidden_size, C=256, B=config.batch_size, T=config.seq_len,
                  itemsize=itemsize, layers=config.num_layers,
                  directions=2 if config.bidirectional else 1, gates=model_cell(config).gates),
    )  # fmt: skip
    check_writable_folder(config.out)


def _stop_before_start(signals: Interrupts, where: str) -> None:
    if signals.stop:
        raise Interrupted(
            signals.signum,
            f"interrupted by {signal_name(signals.signum)} before {where}: no step was "
            "taken, nothing saved",
        )


def _session(config, corpus, progress, echo, grad_fn, devices) -> Session:
    mesh = training_mesh(run_devices(config, devices, echo), config.batch_size)
    if corpus is None:
        corpus = load_corpus(config.text, task=config.task, max_files=config.max_files,
                             val_text=config.val_text, strict_text=config.strict_text)  # fmt: skip
    if jax.process_index() == 0:
        announce_split(corpus, config.out, echo)  # one line, and OUT/split.json
    labels = config.task == "tag"
    streams = Streams(
        corpus.train_ids, corpus.train_labels if labels else None, config.batch_size,
        config.seq_len, num_processes=jax.process_count(), process_id=jax.process_index(),
        starts=corpus.train_starts,
    )  # fmt: skip
    held = held_out(corpus.val_ids, corpus.val_labels if labels else None, corpus.val_starts,
                    corpus.val_files, config.val_chars)  # fmt: skip
    if held.capped and jax.process_index() == 0:
        echo(f"validation: {held.describe()}")
    ys_val, xs_val = np.concatenate(held.ys), np.concatenate(held.xs)
    K, C = corpus.vocab.size, corpus.num_classes
    for name, a, n in (("input ids", streams.xs, K), ("labels", streams.ys, C)):
        if a.size and (a.min() < 0 or a.max() >= n):  # JAX would clamp silently
            raise DataError(f"training {name} outside 0..{n - 1}")
    tx, step_fn = cached_step(
        config.optimizer, config.lr, config.clip, config.clip_value,
        step_grad_fn(config, mesh, grad_fn), config.schedule, config.warmup, config.steps,
    )  # fmt: skip
    return Session(
        config, corpus, streams, held, baselines(corpus, ys_val, xs_val),
        data_fingerprint(corpus), mesh, tx,
        step_fn, verify_fn=grad_fn or _verify_fn(config),
        verify_tol=AUTODIFF["bfloat16"] if config.matmul_dtype else None,
        lead=jax.process_index() == 0, progress=progress, echo=echo,
    )  # fmt: skip


def _verify_fn(config: TrainConfig) -> Callable:
    """The single-device hand BPTT ``--verify-every`` checks against ``jax.grad``."""
    return model_grad_fn(run_options(config), bool(config.bidirectional))


def _start(s: Session, resume) -> Loop:
    """The loop's first value: a fresh model, or the checkpoint ``resume``'s."""
    if resume is not None:
        state, history = restore(
            read_training_checkpoint(resume), s.config, s.corpus, s.tx,
            fingerprint=s.fingerprint, allow_data_change=s.allow_data_change,
        )  # fmt: skip
        n_proc, proc = jax.process_count(), jax.process_index()
        # this process's streams p, p + P, ... (axis -2 of (B, H) and (L*D, B, H), each part)
        h = shard_batch(jax.tree.map(lambda a: a[..., proc::n_proc, :], state.h), s.mesh)
        params, opt_state = replicate(state.params, s.mesh), replicate(state.opt_state, s.mesh)
        if s.lead:  # its rows up to the checkpoint's step, whole, one a step
            repair_metrics(pathlib.Path(s.config.out) / METRICS_NAME, state.step)
        return Loop(state._replace(params=params, opt_state=opt_state, h=h), history)
    c = s.config
    key, init_key = jax.random.split(jax.random.key(c.seed))
    params = init_model(c, init_key, s.corpus.vocab.size, s.corpus.num_classes)
    params = replicate(params, s.mesh)
    opt_state = replicate(s.tx.init(params), s.mesh)
    return Loop(TrainState(params, opt_state, zeros_h(s), key, 0, 0, 0), History())


def _open_bar(s: Session, loop: Loop) -> tuple[Session, Loop]:
    """The progress bar, the step-0 validation, and the clock of this session."""
    size = shutil.get_terminal_size()  # a pty reporting 0×0 would hide the bar; 80×24 then
    bar = tqdm(
        total=s.config.steps, initial=loop.state.step, disable=not (s.progress and s.lead),
        unit="step", ncols=size.columns, nrows=size.lines, smoothing=0.1,
    )  # fmt: skip
    s = dataclasses.replace(s, bar=bar, first_step=loop.state.step)
    if s.config.eval_every and loop.state.step == 0:
        loop = evaluate_and_log(s, loop)  # where the curve starts: about log2(C) bits/char
        loop = write_metrics(s, loop, loop.evaluation)
    t_start = time.perf_counter()
    s.clock.other, s.clock.mark, s.clock.mark_step, s.clock.mark_other = (
        0.0,
        t_start,
        loop.state.step,
        0.0,
    )
    return dataclasses.replace(s, t_start=t_start), loop


def _steps(s: Session, loop: Loop, on_step) -> tuple[Loop, bool, float, OutputError | None]:
    """Steps up to ``config.steps``; returns the loop, whether a signal stopped it, the
    seconds it ran, and the failed write that stopped it, if one did (the loop is then
    that of the last completed step, for the checkpoint). The signal flag is read
    between steps, so a step is never cut short."""
    interrupted, failure = False, None
    try:
        while loop.state.step < s.config.steps:
            if s.signals is not None and s.signals.stop:
                interrupted = True
                break
            loop = one_step(s, loop)
            s.bar.update(1)
            if on_step is not None:
                on_step(loop.state)
            loop = after_step(s, loop)
    except KeyboardInterrupt:  # a caller's own SIGINT handler (no Interrupts in a thread)
        interrupted = True
    except OutputError as e:  # metrics.csv or standard output: save, then report
        failure = e
    finally:
        seconds = time.perf_counter() - s.t_start
        s.clock.end = seconds - s.clock.other  # the steps' own time
        s.bar.close()
    return loop, interrupted, seconds, failure


def _signalled(s: Session) -> bool:
    return s.signals is not None and s.signals.stop


def _finish(s: Session, loop: Loop, interrupted: bool, seconds: float, failure) -> Result:
    """Validates the last step (unless a signal or a failed write stopped the run), saves,
    writes the last metrics row and the plot, reports. A signal that arrives in any of
    these still marks the result interrupted."""
    loop = flush(s, loop)
    history = loop.history
    loop = loop._replace(history=dataclasses.replace(history, seconds=history.seconds + seconds))
    interrupted = interrupted or _signalled(s)
    validated = loop.evaluation is not None and loop.history.val[-1][0] == loop.state.step
    if failure is None and not interrupted and not validated:
        try:
            loop, validated = evaluate_and_log(s, loop), True
        except OutputError as e:
            failure = e
    loop = _save_reporting(s, loop, failure)
    plot = None
    try:
        if loop.logged_step != loop.state.step:
            loop = write_metrics(s, loop, loop.evaluation if validated else None)
        if loop.history.train and s.lead:
            plot = _plot(s, loop.history)
    except OutputError as e:
        _save_reporting(s, loop, e, saved=True)
    interrupted = interrupted or _signalled(s)
    signum = None
    if interrupted:
        signum = s.signals.signum if _signalled(s) else 2
    return Result(
        s.config, loop.state, loop.history, loop.evaluation, s.baselines, s.checkpoint, plot,
        interrupted, seconds, loop.state.step - s.first_step, s.mesh.shape[AXIS], signum,
        s.clock.end, tuple(step for _, step in s.clock.compiled),
    )  # fmt: skip


def _save_reporting(s: Session, loop: Loop, failure, *, saved: bool = False) -> Loop:
    """Saves the checkpoint (unless ``saved``); then raises ``failure``, if any, saying
    where the checkpoint is, as one :class:`OutputError`."""
    if not saved:
        try:
            loop = save(s, loop)
        except CheckpointError as e:
            if failure is None:
                raise
            raise OutputError(
                f"{failure}; the checkpoint could not be saved either: {e}"
            ) from None
    if failure is None:
        return loop
    step, ckpt = loop.state.step, s.checkpoint
    more = (f"; continue with bptt-jax train --resume {ckpt}"
            if step < s.config.steps else "")  # fmt: skip
    raise OutputError(f"{failure}; the checkpoint of step {step} is saved in {ckpt}{more}")


def _plot(s: Session, history: History) -> pathlib.Path:
    # matplotlib is heavy and only needed here: imported when a plot is written.
    from ..measure.plots import plot_history

    out = pathlib.Path(s.config.out) / PLOT_NAME
    with writing(out):
        return plot_history(out, history, s.baselines, s.config, s.corpus.vocab.size)
