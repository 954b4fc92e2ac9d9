r"""Training with the hand gradients: truncated BPTT over long streams.

Every step takes the next chunk ``xs, ys (B, T)`` of the B parallel streams
(:class:`bptt_jax.app.data.Streams`) and the final hidden state of the previous
chunk as :math:`h_0`, and runs, in one ``jax.jit``,

.. math::

    E, \nabla E, h_T = \mathrm{bptt\_core}(\theta, x, y, h_0),\qquad
    g = \nabla E / (B T),\qquad
    \theta := \theta + \mathrm{optax}(g)

-- the hand-derived BPTT of :mod:`bptt_jax.core.bptt` (never ``jax.grad``), the
gradient of the mean loss per character, optional clipping, and an optax
update (``sgd`` is the seed's :math:`\theta := \theta - \lambda g`). A step
whose loss, gradients or new parameters are not finite is not applied.
``jax.grad`` appears only in :func:`verify_gradients`, the referee that
``--verify-every`` calls.

On ``N > 1`` devices the step is data-parallel over a 1-D mesh
(:mod:`bptt_jax.app.parallel`): the batch is split across the devices, each
runs the same hand BPTT on its ``B / N`` streams, ``E`` and the gradients are
summed with ``psum``, and parameters and optimizer state are replicated, so
every device applies the same update. Checkpoints hold host arrays (the
hidden state in stream order) and resume on any device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..api.referees import autodiff_bptt
from ..core.bptt import bptt_core
from ..core.params import Params, init_params
from ..core.rnn import forward_core
from ..referees.tolerances import AUTODIFF, max_relative_error
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import (
    TOKEN_TYPES,
    Corpus,
    DataError,
    Streams,
    Vocab,
    eval_arrays,
    load_corpus,
    streams_in_order,
)
from .parallel import (
    AXIS,
    check_batch_divides,
    data_parallel_bptt_core,
    local_rows,
    make_mesh,
    replicate,
    shard_batch,
)

CHECKPOINT_NAME = "checkpoint.bptt"
PLOT_NAME = "loss.png"
MAX_NONFINITE_IN_A_ROW = 5
_SYNC_EVERY = 10  # fetch losses from the device every this many steps

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,  # the seed's update: θ := θ − λ g
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adagrad": optax.adagrad,
    "rmsprop": optax.rmsprop,
    "adam": optax.adam,
    "adamw": optax.adamw,
}


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


# Options that may differ between a run and its --resume: they do not change
# the parameters a given step produces.
RESUMABLE = ("steps", "out", "eval_every", "save_every", "verify_every")
DTYPES = ("float32", "float64")


def config_for_resume(saved: dict, given: dict[str, Any]) -> TrainConfig:
    """The saved configuration with the options a resumed run may change.

    Raises:
      CheckpointError: an option that shapes the model or the data (say
        ``--hidden-size``) was given with a value other than the checkpoint's.
    """
    config = TrainConfig.from_json(saved)
    for name, value in given.items():
        if name in RESUMABLE:
            config = dataclasses.replace(config, **{name: value})
            continue
        old = getattr(config, name)
        if (tuple(value) if name == "text" else value) != old:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(
                f"the checkpoint was trained with {flag} {_show(old)}, not {_show(value)}; "
                f"drop {flag} to resume it, or start a new run in another --out folder"
            )
    return config


def _show(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "(standard library)"
    return str(value)


# --------------------------------------------------------------------------- the step


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clipping (element-wise, then global norm), then the optimizer's update."""
    if config.optimizer not in OPTIMIZERS:
        raise TrainingError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    parts = []
    if config.clip_value > 0:
        parts.append(optax.clip(config.clip_value))
    if config.clip > 0:
        parts.append(optax.clip_by_global_norm(config.clip))
    parts.append(OPTIMIZERS[config.optimizer](config.lr))
    return optax.chain(*parts)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(tx: optax.GradientTransformation, grad_fn: Callable | None = None):
    r"""One jitted step: hand BPTT, mean-per-character gradient, optax update.

    Args:
      tx: the optax transformation (clipping and optimizer).
      grad_fn: ``(params, xs, ys, h0) -> (E, grads, dh0, h_T)``; the hand
        :func:`bptt_jax.core.bptt.bptt_core` by default.

    Returns:
      ``step(params, opt_state, xs (B, T), ys (B, T), h0 (B, H)) ->
      (params, opt_state, h_T (B, H), loss, finite)`` where ``loss = E/(B T)``
      in nats per character; when ``finite`` is False the returned params and
      optimizer state are the ones passed in and ``h_T`` is zeros.
    """
    grad_fn = grad_fn or bptt_core

    @jax.jit
    def step(params, opt_state, xs, ys, h0):
        E, grads, _, h_T = grad_fn(params, xs, ys, h0)
        n = xs.shape[0] * xs.shape[1]
        loss = E / n  # mean loss per character
        grads = jax.tree.map(lambda g: g / n, grads)
        # optax mixes Python floats with its int32 step count (Adam's bias
        # correction, schedules); allow that inside optax only, whatever the
        # caller's promotion mode (the tests run everything else strict).
        with jax.numpy_dtype_promotion("standard"):
            updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)

        def keep(new, old):
            return jnp.where(finite, new, old)

        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        h_T = jnp.where(finite, h_T, jnp.zeros_like(h_T))
        return params, opt_state, h_T, loss, finite

    return step


@functools.cache
def _cached_step(optimizer: str, lr: float, clip: float, clip_value: float, grad_fn=None):
    # One jitted step per optimizer setting and gradient function, so that runs
    # in one process (tests, a resume) reuse its compilation.
    config = TrainConfig(optimizer=optimizer, lr=lr, clip=clip, clip_value=clip_value)
    tx = make_optimizer(config)
    return tx, make_train_step(tx, grad_fn)


#: What ``TrainConfig.matmul_dtype`` accepts besides ``None``.
MATMUL_DTYPES = ("bfloat16",)


@functools.cache
def hand_grad_fn(matmul_dtype: str | None = None, recompute: bool = False):
    """The hand ``bptt_core`` with the run's speed/memory options (cached: one per setting)."""
    if matmul_dtype is None and not recompute:
        return bptt_core
    mm = None if matmul_dtype is None else jnp.dtype(matmul_dtype)
    return functools.partial(bptt_core, matmul_dtype=mm, recompute=recompute)


@functools.cache
def _data_parallel_grad_fn(mesh, matmul_dtype: str | None = None, recompute: bool = False):
    # One per mesh and setting, so that _cached_step's cache (keyed on it) reuses compilations.
    mm = None if matmul_dtype is None else jnp.dtype(matmul_dtype)
    return data_parallel_bptt_core(mesh, matmul_dtype=mm, recompute=recompute)


def training_mesh(devices: int | None, batch_size: int):
    """The 1-D mesh of a run over ``devices`` devices (all of them by default).

    Raises:
      TrainingError: more devices than exist, fewer than 1, a batch size the
        device count does not divide, or (multi-process) a mesh that leaves
        out some process's devices.
    """
    try:
        mesh = make_mesh(devices)
        check_batch_divides(batch_size, mesh)
    except ValueError as e:
        raise TrainingError(f"--devices: {e}") from None
    n = mesh.shape[AXIS]
    if jax.process_count() > 1 and n != jax.device_count():
        raise TrainingError(
            f"--devices {n}: a multi-process run uses all {jax.device_count()} devices of "
            f"its {jax.process_count()} processes; leave --devices out"
        )
    return mesh


@jax.jit
def _evaluate_core(params: Params, xs: jax.Array, ys: jax.Array):
    h0 = jnp.zeros((xs.shape[0], params.U.shape[0]), params.U.dtype)  # (S, H)
    _, z = forward_core(params, xs, h0)  # (S, L, C)
    log_yhat = jax.nn.log_softmax(z, axis=-1)
    nll = -jnp.take_along_axis(log_yhat, ys[..., None], axis=-1)[..., 0]  # (S, L)
    return jnp.mean(nll), jnp.argmax(z, axis=-1)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean nats per character
    accuracy: float | None = None  # tag: fraction of characters labelled right
    per_class: dict[str, float | None] = field(default_factory=dict)  # tag: accuracy per class
    counts: dict[str, int] = field(default_factory=dict)  # tag: characters per class

    @property
    def bits(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # no OverflowError


def evaluate(params: Params, xs: np.ndarray, ys: np.ndarray, task: str) -> Evaluation:
    """Validation loss (and, for ``tag``, accuracy per class) of ``params``."""
    loss, pred = _evaluate_core(params, xs, ys)
    if task != "tag":
        return Evaluation(loss=float(loss))
    pred, ys = np.asarray(pred), np.asarray(ys)
    per_class, counts = {}, {}
    for c, name in enumerate(TOKEN_TYPES):
        mask = ys == c
        counts[name] = int(mask.sum())
        per_class[name] = float((pred[mask] == c).mean()) if mask.any() else None
    return Evaluation(float(loss), float((pred == ys).mean()), per_class, counts)


def baselines(corpus: Corpus, ys_val: np.ndarray, xs_val: np.ndarray) -> dict[str, float]:
    """What a model without memory gets on the same validation characters.

    ``lm``: the cross-entropy (bits/char) of the training text's character
    unigram distribution (add-one smoothed). ``tag``: the accuracy of always
    answering the most frequent class, and of answering each character's most
    frequent class in the training text.
    """
    K = corpus.vocab.size
    if corpus.task == "lm":
        p = (np.bincount(corpus.train_ids, minlength=K) + 1.0) / (len(corpus.train_ids) + K)
        return {"unigram_bits": float(-np.mean(np.log2(p[ys_val])))}
    C = len(TOKEN_TYPES)
    labels = corpus.train_labels
    majority = int(np.argmax(np.bincount(labels, minlength=C)))
    table = np.zeros((K, C), np.int64)
    np.add.at(table, (corpus.train_ids, labels), 1)
    best = np.where(table.sum(1) > 0, table.argmax(1), majority)  # (K,)
    return {
        "majority": float(np.mean(ys_val == majority)),
        "majority_class": TOKEN_TYPES[majority],
        "char_unigram": float(np.mean(best[xs_val] == ys_val)),
    }


#: --verify-every's tolerance with bf16 products: 4 bf16 ulps (2**-8) against
#: float32 autodiff, as in tests/test_fast_paths.py (measured 0.8-1.5 ulps).


def verify_gradients(
    params: Params, xs, ys, h0, grad_fn: Callable | None = None, *, tol: float | None = None
) -> dict:
    """Hand gradients vs ``jax.grad`` on one batch: max relative error per parameter.

    Raises:
      TrainingError: if any error exceeds ``tol`` (default: the tolerance of
        ``bptt-jax check`` for the parameters' dtype).
    """
    params, xs, ys, h0 = jax.tree.map(jnp.asarray, (params, xs, ys, h0))  # one device
    E, grads, _, _ = (grad_fn or bptt_core)(params, xs, ys, h0)
    E_ad, grads_ad = autodiff_bptt(params, xs, ys, h0)
    if tol is None:
        tol = AUTODIFF[str(params.U.dtype)]
    errors = {"E": max_relative_error(E, E_ad)}
    errors |= {
        n: max_relative_error(getattr(grads, n), getattr(grads_ad, n)) for n in Params._fields
    }
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        raise TrainingError(
            "hand BPTT disagrees with jax.grad on the current batch: "
            + ", ".join(f"{k} rel. error {v:.2e}" for k, v in bad.items())
            + f" (tolerance {tol:.0e}); training stopped, no step applied with these gradients"
        )
    return errors


# --------------------------------------------------------------------------- state


class TrainState(NamedTuple):
    """What a step changes; replaced as a whole, so Ctrl-C never sees half an update."""

    params: Params
    opt_state: Any
    h: jax.Array  # (B, H) the state carried into the next chunk
    key: jax.Array  # the run's RNG key (used for the initialisation)
    step: int  # steps taken
    chunk: int  # next chunk of the streams
    epoch: int  # completed passes over the training streams


@dataclass
class History:
    train: list = field(default_factory=list)  # [step, loss nats/char, finite]
    val: list = field(default_factory=list)  # [step, loss nats/char, accuracy or None]
    nonfinite: int = 0  # steps skipped in all
    nonfinite_run: int = 0  # skipped in a row, up to the last one
    seconds: float = 0.0  # training time over all sessions
    verified: int = 0  # --verify-every checks passed
    verify_error: float = 0.0  # the largest relative error they saw


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

    def summary(self) -> str:
        c, ev = self.config, self.evaluation
        rate = self.steps_run / self.seconds if self.seconds > 0 else float("nan")
        parts = [
            f"{c.task} H={c.hidden_size} B={c.batch_size} T={c.seq_len} {c.optimizer} lr={c.lr}"
            + (f" {c.dtype}" if c.dtype != "float32" else "")
            + (f" {c.matmul_dtype} products" if c.matmul_dtype else "")
            + (" recompute" if c.recompute else "")
            + f" on {self.devices} device{'s' if self.devices > 1 else ''}",
            f"step {self.state.step}/{c.steps}"
            + (" (interrupted)" if self.interrupted else "")
            + f" in {self.history.seconds:.0f} s ({rate:.1f} steps/s, "
            f"{rate * c.batch_size * c.seq_len:,.0f} tokens/s)",
        ]
        if ev is not None:
            val = f"val {ev.bits:.3f} bits/char, ppl {ev.perplexity:.2f}"
            if c.task == "lm":
                val += f" (unigram {self.baselines['unigram_bits']:.3f} bits/char)"
            else:
                b = self.baselines
                val += (
                    f", accuracy {ev.accuracy:.1%} (majority class {b['majority']:.1%}, "
                    f"char unigram {b['char_unigram']:.1%})"
                )
            parts.append(val)
        parts.append(f"{self.history.nonfinite} non-finite steps skipped")
        if self.history.verified:
            parts.append(
                f"hand gradients = jax.grad in {self.history.verified} checks "
                f"(max rel. error {self.history.verify_error:.1e})"
            )
        parts.append(f"checkpoint {self.checkpoint}")
        return "bptt-jax train: " + "; ".join(parts)


def _host_h(h: jax.Array) -> np.ndarray:
    """The carried state ``(B, H)`` as one host array, row b = stream b."""
    local = local_rows(h)  # this process's streams p, p + P, ...
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return streams_in_order(multihost_utils.process_allgather(local))  # (P, B/P, H) -> (B, H)


def _checkpoint_arrays(state: TrainState) -> dict[str, np.ndarray]:
    # Host arrays only: parameters and optimizer state are replicated (any
    # device's copy), h is gathered in stream order, so the file does not
    # depend on the device count that wrote it.
    arrays = {f"params/{n}": np.asarray(getattr(state.params, n)) for n in Params._fields}
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    arrays["h"] = _host_h(state.h)
    arrays["key"] = np.asarray(jax.random.key_data(state.key))
    return arrays


def _header(config: TrainConfig, corpus: Corpus, state: TrainState, history: History) -> dict:
    return {
        "kind": "bptt-jax train",
        "config": config.to_json(),
        "dims": {"K": corpus.vocab.size, "H": config.hidden_size, "C": corpus.num_classes},
        "vocab": corpus.vocab.chars,
        "labels": list(TOKEN_TYPES) if config.task == "tag" else None,
        "step": state.step,
        "chunk": state.chunk,
        "epoch": state.epoch,
        "history": dataclasses.asdict(history),
    }


def check_model_arrays(header: dict, arrays: dict, where) -> Params:
    """The checkpoint's ``Params``, after checking them against its recorded sizes."""
    try:
        K, H, C = (int(header["dims"][k]) for k in "KHC")
        expected = {"U": (H, H), "V": (C, H), "W": (H, K), "b": (H,), "c": (C,)}
        params = Params(**{n: arrays[f"params/{n}"] for n in Params._fields})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: not a bptt-jax model checkpoint (missing {e})") from None
    for n, shape in expected.items():
        if getattr(params, n).shape != shape:
            raise CheckpointError(
                f"{where}: {n} has shape {getattr(params, n).shape}, but the checkpoint's "
                f"model is K={K} H={H} C={C} (expected {shape})"
            )
    return Params(*(jnp.asarray(p) for p in params))


def _restore(header, arrays, where, config, corpus, tx) -> tuple[TrainState, History]:
    if header.get("kind") != "bptt-jax train":
        raise CheckpointError(f"{where}: not a bptt-jax training checkpoint")
    if header["vocab"] != corpus.vocab.chars:
        raise CheckpointError(
            f"{where}: the corpus has changed since the checkpoint was written "
            f"(vocabulary of {len(corpus.vocab.chars)} characters, checkpoint has "
            f"{len(header['vocab'])}); cannot resume on different data"
        )
    dims = header["dims"]
    if (dims["K"], dims["H"], dims["C"]) != (
        corpus.vocab.size,
        config.hidden_size,
        corpus.num_classes,
    ):
        raise CheckpointError(f"{where}: model size {dims} does not match the configuration")
    params = check_model_arrays(header, arrays, where)
    template = tx.init(params)
    leaves, treedef = jax.tree.flatten(template)
    restored = []
    for i, leaf in enumerate(leaves):
        a = arrays.get(f"opt/{i}")
        if a is None or a.shape != leaf.shape or a.dtype != leaf.dtype:
            raise CheckpointError(
                f"{where}: optimizer state does not match --optimizer {config.optimizer}"
            )
        restored.append(jnp.asarray(a))
    h = arrays["h"]
    if h.shape != (config.batch_size, config.hidden_size) or h.dtype != params.U.dtype:
        raise CheckpointError(f"{where}: hidden state has shape {h.shape} and dtype {h.dtype}")
    state = TrainState(
        params=params,
        opt_state=jax.tree.unflatten(treedef, restored),
        h=h,  # (B, H) host, stream order; the caller places its rows
        key=jax.random.wrap_key_data(jnp.asarray(arrays["key"])),
        step=int(header["step"]),
        chunk=int(header["chunk"]),
        epoch=int(header["epoch"]),
    )
    return state, History(**header["history"])


# --------------------------------------------------------------------------- the loop


def _nonfinite_message(config: TrainConfig) -> str:
    if config.clip <= 0 and config.clip_value <= 0:
        cause = "likely cause: exploding gradients with no clipping; try --clip 1"
    else:
        cause = f"likely cause: the learning rate --lr {config.lr} is too high; try a smaller one"
    return (
        f"{MAX_NONFINITE_IN_A_ROW} steps in a row had a non-finite loss or gradient and were "
        f"not applied; training stopped ({cause})"
    )


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
) -> Result:
    """Trains (or resumes) a run; saves checkpoints and the loss plot under ``config.out``.

    Args:
      config: the run (for a resume, see :func:`config_for_resume`).
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

    Raises:
      DataError, CheckpointError, TrainingError: each with a message for the user.
      A Ctrl-C (KeyboardInterrupt) is not raised: the checkpoint is saved and
      the result is marked ``interrupted``.
    """
    if config.dtype not in DTYPES:
        raise TrainingError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    # float64 needs x64 for the whole run (initialisation, steps, checkpoints);
    # the context leaves the caller's setting as it was.
    with jax.enable_x64(True) if config.dtype == "float64" else contextlib.nullcontext():
        return _train(config, resume, corpus, progress, echo, grad_fn, on_step, devices)


def _train(config, resume, corpus, progress, echo, grad_fn, on_step, devices) -> Result:
    from tqdm import tqdm

    mesh = training_mesh(devices, config.batch_size)
    n_devices = mesh.shape[AXIS]
    n_proc, proc = jax.process_count(), jax.process_index()
    lead = proc == 0  # the process that writes files and shows progress
    if corpus is None:
        corpus = load_corpus(config.text, task=config.task, max_files=config.max_files)
    K, C, B, H = corpus.vocab.size, corpus.num_classes, config.batch_size, config.hidden_size
    streams = Streams(
        corpus.train_ids, corpus.train_labels if config.task == "tag" else None, B,
        config.seq_len, num_processes=n_proc, process_id=proc,
    )  # fmt: skip
    xs_val, ys_val = eval_arrays(
        corpus.val_ids, corpus.val_labels if config.task == "tag" else None, B, config.val_chars
    )
    for name, a, n in (("input ids", streams.xs, K), ("labels", streams.ys, C)):
        if a.size and (a.min() < 0 or a.max() >= n):  # JAX would clamp silently
            raise DataError(f"training {name} outside 0..{n - 1}")
    base = baselines(corpus, ys_val, xs_val)

    if config.optimizer not in OPTIMIZERS:
        raise TrainingError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if config.matmul_dtype not in (None, *MATMUL_DTYPES):
        raise TrainingError(
            f"unknown matmul dtype {config.matmul_dtype!r}; choose "
            f"{', '.join(MATMUL_DTYPES)} or leave it unset (products in {config.dtype})"
        )
    options = (config.matmul_dtype, bool(config.recompute))
    step_grad_fn = grad_fn
    if step_grad_fn is None and n_devices > 1:
        step_grad_fn = _data_parallel_grad_fn(mesh, *options)
    elif step_grad_fn is None and options != (None, False):
        step_grad_fn = hand_grad_fn(*options)
    verify_fn = grad_fn or hand_grad_fn(*options)
    verify_tol = AUTODIFF["bfloat16"] if config.matmul_dtype else None
    tx, step_fn = _cached_step(
        config.optimizer, config.lr, config.clip, config.clip_value, step_grad_fn
    )
    dtype = jnp.dtype(config.dtype)

    def zeros_h():  # (B, H) zeros, this process's rows on its devices
        return shard_batch(np.zeros((B // n_proc, H), dtype), mesh)

    out = pathlib.Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME

    if resume is not None:
        header, arrays = load_checkpoint(resume)
        state, history = _restore(header, arrays, resume, config, corpus, tx)
        h = shard_batch(state.h[proc::n_proc], mesh)  # this process's streams p, p + P, ...
        state = state._replace(
            params=replicate(state.params, mesh), opt_state=replicate(state.opt_state, mesh), h=h
        )
    else:
        key, init_key = jax.random.split(jax.random.key(config.seed))
        params = replicate(init_params(init_key, K, H, num_classes=C, dtype=dtype), mesh)
        state = TrainState(
            params=params,
            opt_state=replicate(tx.init(params), mesh),
            h=zeros_h(),
            key=key,
            step=0,
            chunk=0,
            epoch=0,
        )
        history = History()

    def save():
        arrays = _checkpoint_arrays(state)  # every process: gathering h is collective
        if lead:
            save_checkpoint(ckpt_path, _header(config, corpus, state, history), arrays)

    def host_params():  # a single-device copy, for evaluation and --verify-every
        return jax.tree.map(jnp.asarray, jax.device_get(state.params))

    pending = []  # (step, loss, finite) still on the device

    def flush():
        if not pending:
            return
        values = jax.device_get([(loss, finite) for _, loss, finite in pending])
        for (s, _, _), (loss, finite) in zip(pending, values, strict=True):
            history.train.append([s, float(loss), bool(finite)])
            if finite:
                history.nonfinite_run = 0
            else:
                history.nonfinite += 1
                history.nonfinite_run += 1
        pending.clear()
        last = history.train[-1]
        elapsed = time.perf_counter() - t_start
        done = state.step - first_step
        bar.set_postfix_str(
            f"loss {last[1] / math.log(2):.3f} bits/char, "
            f"{done * B * config.seq_len / max(elapsed, 1e-9):,.0f} tokens/s"
            + (f", {history.nonfinite} skipped" if history.nonfinite else ""),
            refresh=False,
        )

    def run_eval() -> Evaluation:
        ev = evaluate(host_params(), xs_val, ys_val, config.task)
        history.val.append([state.step, ev.loss, ev.accuracy])
        line = (
            f"step {state.step}: val loss {ev.loss:.4f} nats/char, {ev.bits:.3f} bits/char, "
            f"perplexity {ev.perplexity:.2f}"
        )
        if ev.accuracy is not None:
            line += f", accuracy {ev.accuracy:.1%}"
        if lead:
            bar.write(line) if progress else echo(line)
        return ev

    first_step = state.step
    interrupted = False
    evaluation = None
    bar = tqdm(
        total=config.steps, initial=state.step, disable=not (progress and lead), unit="step",
        # A pty that reports a 0×0 size would hide the bar; shutil falls back to 80×24.
        ncols=shutil.get_terminal_size().columns, nrows=shutil.get_terminal_size().lines,
        smoothing=0.1,
    )  # fmt: skip
    if config.eval_every and state.step == 0:
        run_eval()  # where the curve starts: about log2(C) bits/char
    t_start = time.perf_counter()
    try:
        while state.step < config.steps:
            xs, ys = streams.chunk(state.chunk)
            if config.verify_every and state.step % config.verify_every == 0:
                errors = verify_gradients(
                    host_params(), xs, ys, local_rows(state.h), verify_fn, tol=verify_tol
                )
                history.verified += 1
                history.verify_error = max(history.verify_error, *errors.values())
            params, opt_state, h, loss, finite = step_fn(
                state.params, state.opt_state, shard_batch(xs, mesh), shard_batch(ys, mesh),
                state.h,
            )  # fmt: skip
            chunk, epoch = state.chunk + 1, state.epoch
            if chunk == streams.num_chunks:  # the streams wrap round: start from zeros
                chunk, epoch, h = 0, epoch + 1, zeros_h()
            pending.append((state.step, loss, finite))
            state = TrainState(params, opt_state, h, state.key, state.step + 1, chunk, epoch)
            bar.update(1)
            if on_step is not None:
                on_step(state)
            if len(pending) >= _SYNC_EVERY or state.step == config.steps:
                flush()
                if history.nonfinite_run >= MAX_NONFINITE_IN_A_ROW:
                    save()
                    raise TrainingError(_nonfinite_message(config) + f"; checkpoint {ckpt_path}")
            if config.eval_every and state.step % config.eval_every == 0:
                flush()
                evaluation = run_eval()
            if config.save_every and state.step % config.save_every == 0:
                flush()
                save()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        seconds = time.perf_counter() - t_start
        bar.close()
    flush()
    history.seconds += seconds
    if interrupted:
        save()  # first of all, before anything else can go wrong
    if evaluation is None or history.val[-1][0] != state.step:
        evaluation = run_eval()
    save()
    plot = None
    if history.train and lead:
        from .plots import plot_history

        plot = plot_history(out / PLOT_NAME, history, base, config, K)
    return Result(
        config, state, history, evaluation, base, ckpt_path, plot, interrupted, seconds,
        state.step - first_step, n_devices,
    )  # fmt: skip


# --------------------------------------------------------------------------- loading models


@dataclass(frozen=True)
class Model:
    """A trained model read from a checkpoint, for ``sample`` and ``tag``."""

    params: Params
    vocab: Vocab
    task: str
    config: TrainConfig
    step: int


def load_model(path) -> Model:
    """Reads the model of a training checkpoint (refusing corrupted files)."""
    header, arrays = load_checkpoint(path)
    if header.get("kind") != "bptt-jax train":
        raise CheckpointError(f"{path}: not a bptt-jax training checkpoint")
    params = check_model_arrays(header, arrays, path)
    config = TrainConfig.from_json(header["config"])
    vocab = Vocab(header["vocab"])
    if vocab.size != params.W.shape[1]:
        raise CheckpointError(f"{path}: vocabulary does not match the model's K")
    return Model(params, vocab, config.task, config, int(header["step"]))
