r"""Data-parallel hand BPTT on JAX's own SPMD machinery.

The batch of sequences is split across a 1-D device mesh (axis ``"batch"``);
every device runs the identical jitted hand BPTT (:func:`bptt_jax.core.bptt.bptt_core`)
on its shard, and the loss and gradients are summed across devices with
``lax.psum``. Because the seed's loss is a sum over sequences,

.. math::

    E = \sum_{d} E^{(d)},\qquad
    \frac{\partial E}{\partial \theta} = \sum_{d} \frac{\partial E^{(d)}}{\partial \theta}

is exact: the data-parallel gradient equals the single-device gradient of the
full batch up to the order of floating-point additions. Parameters come in
replicated; each device's slice of ``h0`` and of the final states stays on
that device (every part of the state: the LSTM's ``(h, c)`` is split alike).

A batch whose size is not a multiple of the device count is refused with a
clear error (rather than padded): every device must get the same number of
whole sequences.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ...core.cells import cell_named
from ...core.options import DEFAULT, Options
from ...core.params import as_layers, like
from ...core.step import hand_bptt

AXIS = "batch"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default).

    Raises ValueError naming how many devices exist when more are asked for.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be an int >= 1, got {num_devices!r}")
    if num_devices > len(devices):
        raise ValueError(
            f"asked for {num_devices} devices but only {len(devices)} are visible "
            f"({devices[0].platform}); on CPU, XLA_FLAGS="
            f"--xla_force_host_platform_device_count={num_devices} simulates more"
        )
    # Auto axes: jit reshards inputs to the shard_map's specs (a replicated
    # batch is split on the way in), as the classic pjit mesh did.
    return jax.make_mesh(
        (num_devices,), (AXIS,), axis_types=(AxisType.Auto,), devices=devices[:num_devices]
    )


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    """ValueError unless ``batch_size`` splits evenly over the mesh."""
    n = mesh.shape[AXIS]
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (each device takes batch_size / {n} whole sequences)"
        )


def data_parallel_bptt_core(mesh: Mesh, options: Options = DEFAULT):
    r"""A jitted ``fn(params, xs, ys, h0, resets=None) -> (E, grads, dh0, h_T)`` split
    over ``mesh``.

    The data-parallel twin of :func:`bptt_jax.core.bptt.bptt_core`, with the same
    signature and outputs, so that it can be the ``grad_fn`` of the training
    step (:func:`bptt_jax.app.training.train_step.make_train_step`). Every device runs
    ``bptt_core`` on its ``B / N`` sequences and

    .. math::

        E = \sum_d E^{(d)},\qquad \nabla E = \sum_d \nabla E^{(d)}

    by ``lax.psum`` over the mesh axis; ``E`` and ``grads`` come back
    replicated, ``dh0 (B, H)`` = ∂E/∂h_0 and ``h_T (B, H)`` sharded like ``h0``
    (they are per sequence, nothing to sum). ``resets`` ``(B, T)`` bool (a reset
    restores the zero state, :func:`bptt_jax.core.step.hand_bptt`) is sharded like
    ``xs``. The seed's :class:`~bptt_jax.core.params.Params` only (``h0 (B, H)``, or
    the LSTM's pair of them: the specs apply to every part).

    Args:
      mesh: from :func:`make_mesh`.
      options: the cell and the backward's options
        (:class:`~bptt_jax.core.options.Options`, ``kernel`` resolved).
    """

    def local(params, xs, ys, h0, resets=None):  # one device's shard of the batch
        deep, h = as_layers(params, h0)  # each part of the state (B/N, H) as (1, B/N, H)
        E, grads, dh0, h_T = hand_bptt(deep, xs, ys, h, resets, options)
        grads, dh0, h_T = like(params, grads, dh0, h_T)
        return lax.psum(E, AXIS), jax.tree.map(lambda g: lax.psum(g, AXIS), grads), dh0, h_T

    out_specs = (P(), P(), P(AXIS), P(AXIS))
    plain = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=out_specs
    )  # fmt: skip
    with_resets = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
        out_specs=out_specs,
    )  # fmt: skip

    @jax.jit
    def fn(params, xs, ys, h0, resets=None):
        if resets is None:
            return plain(params, xs, ys, h0)
        return with_resets(params, xs, ys, h0, resets)

    return fn


def data_parallel_bptt(mesh: Mesh, *, activation: str = "tanh", truncate: int | None = None,
                       cell: str = "rnn"):  # fmt: skip
    """A jitted ``fn(params, xs, ys, h0) -> (E, grads, h_T)`` split over ``mesh``.

    Args:
      mesh: from :func:`make_mesh`.
      activation, truncate: as for :func:`bptt_jax.bptt`.
      cell: the model's cell (``bptt_jax.core.cells``): ``"rnn"``, ``"lstm"`` (``h0`` the
        pair ``(h0, c0)``) or ``"gru"``.

    The returned function takes the batched layout of the cores (``xs (B, T)``
    ids or ``(B, T, K)``, ``ys (B, T)`` or ``(B, T, C)``, ``h0 (B, H)``), with
    ``B`` a multiple of the mesh size (check with :func:`check_batch_divides`
    before calling: inside ``jit`` a wrong size fails in the sharding). ``E``
    and ``grads`` come back replicated (summed over devices), ``h_T (B, H)``
    sharded like ``h0``.
    """
    options = Options(cell=cell_named(cell, activation), truncate=truncate)
    core = data_parallel_bptt_core(mesh, options)

    @jax.jit
    def fn(params, xs, ys, h0):
        E, grads, _, h_T = core(params, xs, ys, h0)
        return E, grads, h_T

    return fn


# --------------------------------------------------------------------------- placement


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of ``mesh`` holds the whole array (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh: device ``i`` holds rows ``i·B/N ...``."""
    return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh: Mesh):
    """Places every leaf of ``tree`` (host or device arrays) replicated on ``mesh``.

    In a multi-process run every process must pass the same values (they do:
    the same seed, or the same checkpoint).
    """
    return jax.device_put(tree, replicated(mesh))


def shard_batch(local, mesh: Mesh):
    """The global ``(B, ...)`` array whose rows on this process's devices are ``local``
    (a pytree of them: every part of a state alike).

    ``local`` is this process's ``(B / P, ...)`` slice of the batch (the whole
    batch in a single-process run, where this is ``device_put`` with
    :func:`batch_sharded`).
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def local_rows(x):
    """This process's rows of a batch-sharded array (or of each leaf of a pytree), in
    order, as one host array.

    The inverse of :func:`shard_batch` (the whole array in a single-process run).
    """

    def rows(a: jax.Array) -> np.ndarray:
        shards = {s.index[0].start or 0: s.data for s in a.addressable_shards}
        return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])

    return jax.tree.map(rows, x)
