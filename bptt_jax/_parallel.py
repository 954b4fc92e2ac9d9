r"""Data-parallel hand BPTT on JAX's own SPMD machinery.

The batch of sequences is split across a 1-D device mesh (axis ``"batch"``);
every device runs the identical jitted hand BPTT (:func:`bptt_jax._bptt.bptt_core`)
on its shard, and the loss and gradients are summed across devices with
``lax.psum``. Because the seed's loss is a sum over sequences,

.. math::

    E = \sum_{d} E^{(d)},\qquad
    \frac{\partial E}{\partial \theta} = \sum_{d} \frac{\partial E^{(d)}}{\partial \theta}

is exact: the data-parallel gradient equals the single-device gradient of the
full batch up to the order of floating-point additions. Parameters come in
replicated; each device's slice of ``h0`` and of the final states stays on
that device.

A batch whose size is not a multiple of the device count is refused with a
clear error (rather than padded): every device must get the same number of
whole sequences.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from ._bptt import bptt_core

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


def data_parallel_bptt(mesh: Mesh, *, activation: str = "tanh", truncate: int | None = None):
    """A jitted ``fn(params, xs, ys, h0) -> (E, grads, h_T)`` split over ``mesh``.

    Args:
      mesh: from :func:`make_mesh`.
      activation, truncate: as for :func:`bptt_jax.bptt`.

    The returned function takes the batched layout of the cores (``xs (B, T)``
    ids or ``(B, T, K)``, ``ys (B, T)`` or ``(B, T, C)``, ``h0 (B, H)``), with
    ``B`` a multiple of the mesh size (check with :func:`check_batch_divides`
    before calling: inside ``jit`` a wrong size fails in the sharding). ``E``
    and ``grads`` come back replicated (summed over devices), ``h_T (B, H)``
    sharded like ``h0``.
    """

    def local(params, xs, ys, h0):  # one device's shard of the batch
        E, grads, _, h_T = bptt_core(params, xs, ys, h0, activation=activation, truncate=truncate)
        return lax.psum(E, AXIS), jax.tree.map(lambda g: lax.psum(g, AXIS), grads), h_T

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
        out_specs=(P(), P(), P(AXIS)),
    )
    return jax.jit(sharded)
