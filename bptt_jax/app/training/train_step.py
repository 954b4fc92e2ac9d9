r"""The app's jitted training step: the optimizer of a configuration, the gradient
function of its options, and the mesh it runs on.

The step itself is :func:`bptt_jax.core.step.train_step` (hand BPTT of any model,
:func:`bptt_jax.core.step.hand_bptt`, with the streams' per-step resets to zero; mean
per character, optax update, non-finite steps skipped), jitted once per setting.
On ``N > 1`` devices the gradient function is the data-parallel twin of the
hand BPTT (:func:`bptt_jax.app.training.parallel.data_parallel_bptt_core`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ...api.options import resolve_kernel
from ...core.options import DEFAULT, Options
from ...core.params import as_layers, like
from ...core.step import hand_bptt, train_step
from .config import (
    OPTIMIZERS,
    TrainConfig,
    TrainingError,
    check_optimizer,
    is_deep,
    learning_rate,
    model_cell,
    warmup_steps,
)
from .parallel import AXIS, check_batch_divides, data_parallel_bptt_core, make_mesh

__all__ = [
    "cached_step",
    "data_parallel_grad_fn",
    "make_optimizer",
    "make_train_step",
    "model_grad_fn",
    "run_options",
    "step_grad_fn",
    "training_mesh",
]


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clipping (element-wise, then global norm), then the optimizer's update.

    Raises:
      TrainingError: an optimizer not in :data:`bptt_jax.app.training.config.OPTIMIZERS`.
    """
    check_optimizer(config.optimizer)
    parts = []
    if config.clip_value > 0:
        parts.append(optax.clip(config.clip_value))
    if config.clip > 0:
        parts.append(optax.clip_by_global_norm(config.clip))
    constant = config.schedule == "constant" and warmup_steps(config) == 0
    # A constant rate stays a float: the optimizer state of the first checkpoints (no
    # schedule count) reads back as it was written.
    parts.append(OPTIMIZERS[config.optimizer](config.lr if constant else learning_rate(config)))
    return optax.chain(*parts)


def make_train_step(tx: optax.GradientTransformation, grad_fn: Callable | None = None) -> Callable:
    r"""One jitted step: hand BPTT, mean-per-character gradient, optax update.

    Args:
      tx: the optax transformation (clipping and optimizer).
      grad_fn: ``(params, xs, ys, h0, resets) -> (E, grads, dh0, h_T)``; the hand
        :func:`bptt_jax.core.step.hand_bptt` by default (any model of the vanilla cell;
        resets to zero; :func:`model_grad_fn` for the other cells).

    Returns:
      ``step(params, opt_state, xs (B, T), ys (B, T), h0, resets=None) ->
      (params, opt_state, h_T, loss, finite, gnorm)`` where ``h0``, ``h_T`` are
      ``(B, H)`` (``(L*D, B, H)`` for a DeepParams; the LSTM's a pair ``(h, c)`` of
      them), ``resets`` ``(B, T)`` bool
      (True where a document starts: the state entering that step is zero) or
      ``None``, ``loss = E/(B T)`` in nats per character and ``gnorm`` the global
      norm of the mean gradient before clipping; when ``finite`` is False the
      returned params and optimizer state are the ones passed in and ``h_T`` is zeros.
    """
    grad_fn = grad_fn or hand_bptt

    @jax.jit
    def step(params, opt_state, xs, ys, h0, resets=None):
        n = xs.shape[0] * xs.shape[1]  # B T characters
        new = train_step(grad_fn, tx, params, opt_state, xs, ys, h0, resets, n=n)
        return (
            new.params,
            new.opt_state,
            new.h_T,
            new.loss,
            new.finite,
            optax.tree.norm(new.grads),
        )

    return step


@functools.cache
def cached_step(
    optimizer: str,
    lr: float,
    clip: float,
    clip_value: float,
    grad_fn: Callable | None = None,
    schedule: str = "constant",
    warmup: int | None = 0,
    steps: int = 1,
) -> tuple[optax.GradientTransformation, Callable]:
    """``(tx, step)`` of a setting, cached: runs in one process (tests, a resume) reuse
    its compilation."""
    config = TrainConfig(optimizer=optimizer, lr=lr, clip=clip, clip_value=clip_value,
                         schedule=schedule, warmup=warmup, steps=steps)  # fmt: skip
    tx = make_optimizer(config)
    return tx, make_train_step(tx, grad_fn)


def model_grad_fn(options: Options = DEFAULT, bidirectional: bool = False) -> Callable:
    """The hand BPTT of the step on one device (cached: one per setting and cell type).

    :func:`~bptt_jax.core.step.hand_bptt` with ``options`` (the cell, products,
    recompute, kernel), on any state pytree (the LSTM's ``(h, c)``); a bidirectional
    ``DeepParams`` carries only its left-to-right cells' final states into the next
    chunk: the right-to-left cells (``h_T[1::2]``, every part) start every chunk from
    zero, since they have not read the text after it.
    """
    return _model_grad_fn(options, bidirectional, type(options.cell))


# The cell's type is part of the key: LSTMCell() and GRUCell(), fieldless NamedTuples, are
# equal as tuples (both ()), so an Options of one would find the other's function.
@functools.cache
def _model_grad_fn(options: Options, bidirectional: bool, _cell_type: type) -> Callable:
    def grad_fn(params, xs, ys, h0, resets=None):
        deep, h = as_layers(params, h0)  # the seed's Params: each part (B, H) as (1, B, H)
        E, grads, dh0, h_T = hand_bptt(deep, xs, ys, h, resets, options)
        if bidirectional:  # cell l*2 + 1 reads right to left
            h_T = jax.tree.map(lambda a: a.at[1::2].set(0), h_T)
        return E, *like(params, grads, dh0, h_T)

    return grad_fn


def data_parallel_grad_fn(mesh: Mesh, options: Options = DEFAULT) -> Callable:
    """The data-parallel hand BPTT on ``mesh`` (cached, so :func:`cached_step` reuses it;
    one per cell type, as :func:`model_grad_fn`)."""
    return _data_parallel_grad_fn(mesh, options, type(options.cell))


@functools.cache
def _data_parallel_grad_fn(mesh: Mesh, options: Options, _cell_type: type) -> Callable:
    return data_parallel_bptt_core(mesh, options)


def run_kernel(config: TrainConfig, devices: int = 1) -> str:
    """The configuration's ``kernel`` resolved for its shapes on this backend (``"scan"`` or
    ``"pallas"``); a forced ``"pallas"`` the kernels do not support is a TrainingError."""
    dtype = config.matmul_dtype or config.dtype
    B = max(config.batch_size // max(devices, 1), 1)
    try:
        return resolve_kernel(config.kernel, config.hidden_size, B, dtype, "train")
    except ValueError as err:
        raise TrainingError(str(err)) from None


def run_options(config: TrainConfig, devices: int = 1) -> Options:
    """The :class:`~bptt_jax.core.options.Options` of a run's hand BPTT: its cell
    (:func:`~bptt_jax.app.training.config.model_cell`), bf16 products, recompute and
    resolved kernel."""
    mm = None if config.matmul_dtype is None else jnp.dtype(config.matmul_dtype)
    return Options(
        cell=model_cell(config), matmul_dtype=mm, recompute=bool(config.recompute),
        kernel=run_kernel(config, devices),
    )  # fmt: skip


def step_grad_fn(
    config: TrainConfig, mesh: Mesh, grad_fn: Callable | None = None
) -> Callable | None:
    """The gradient function of the step: ``grad_fn`` if given, else the hand BPTT
    with the configuration's options (data-parallel on several devices: the one-layer
    model only, :func:`run_devices`)."""
    if grad_fn is not None:
        return grad_fn
    options = run_options(config, mesh.shape[AXIS])
    if mesh.shape[AXIS] > 1:
        return data_parallel_grad_fn(mesh, options)
    return model_grad_fn(options, bool(config.bidirectional))


def training_mesh(devices: int | None, batch_size: int) -> Mesh:
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


def run_devices(config: TrainConfig, devices: int | None, echo: Callable[[str], None]):
    """``--devices`` as given, checked against the model; left out, 1 for a deep or
    bidirectional model on a single-process host with several devices, said with ``echo``.
    Only the one-layer model is data-parallel: its states are ``(B, H)``, which the
    data-parallel step shards; a deep model's are ``(L*D, B, H)``.

    Raises:
      TrainingError: a deep or bidirectional model on several devices.
    """
    if not is_deep(config):
        return devices
    model = f"--num-layers {config.num_layers}" if config.num_layers > 1 else "--bidirectional"
    if devices is None and jax.process_count() == 1:
        if jax.device_count() > 1:
            echo(f"devices: a {model} model trains on one device: using 1 of the "
                 f"{jax.device_count()} (--devices)")  # fmt: skip
        return 1
    if (jax.device_count() if devices is None else devices) > 1:
        raise TrainingError(f"--num-layers > 1 and --bidirectional train on one device "
                            f"(a {model} model); give --devices 1")  # fmt: skip
    return devices
