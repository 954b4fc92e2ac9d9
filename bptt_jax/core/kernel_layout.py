"""The Pallas kernels' launch and layout (:mod:`.kernels`): how a cell's arrays are padded
to the shapes Triton takes, the BlockSpecs of one program's block of sequences, and the
launch options. Every gate's block of ``H`` units is padded to ``Hp`` (a power of two
≥ 16) on its own, so a gated cell's padded units have zero weights in every gate and
stay zero; rows are padded to the block of sequences (frozen padding). Pure: no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

#: Sequences per program (the rows of each step's ``(block_b, H) @ (H, G·H)`` product).
BLOCK_B = 16


class Launch(NamedTuple):
    """How the kernels are launched (static).

    Attributes:
      block_b: sequences per program (at least 16).
      interpret: ``None``: interpret mode unless the backend is a GPU.
      num_warps: Triton warps per program (``None``: :func:`num_warps_for`).
    """

    block_b: int = BLOCK_B
    interpret: bool | None = None
    num_warps: int | None = None


def padded_size(H: int) -> int:
    """:math:`H_p`: the next power of two ≥ max(H, 16) (Triton's shape rules)."""
    return max(16, 1 << max(int(H) - 1, 0).bit_length())


def interpret_mode(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def pad_to(x, axis_sizes):
    """Zero-pads ``x`` to ``axis_sizes`` (None: unchanged)."""
    pads = [(0, 0 if n is None else n - s) for s, n in zip(x.shape, axis_sizes, strict=True)]
    return x if all(p == (0, 0) for p in pads) else jnp.pad(x, pads)


def block_spec(x, bB: int, kind: str):
    """The BlockSpec of one (padded) array: per-step ``(T, bB, w)``, flags ``(T, bB)``,
    per-sequence ``(bB, w)`` or a resident weight (whole, every program)."""
    if kind == "steps":
        return pl.BlockSpec((x.shape[0], bB, x.shape[2]), lambda i: (0, i, 0))
    if kind == "flags":
        return pl.BlockSpec((x.shape[0], bB), lambda i: (0, i))
    if kind == "state":
        return pl.BlockSpec((bB, x.shape[1]), lambda i: (i, 0))
    return pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)


def num_warps_for(Hp: int, itemsize: int, gates: int = 1) -> int:
    """Warps per program on a GPU: enough threads that ``U``'s ``gates · Hp² · itemsize``
    bytes take at most ~128 registers per thread (4 to 16 warps, 32 threads each)."""
    regs = gates * Hp * Hp * itemsize // 4  # 32-bit registers holding U
    return max(4, min(16, pl.next_power_of_2(-(-regs // (128 * 32)))))


def compiler_params(interpret: bool, Hp: int, U, num_warps: int | None, gates: int = 1):
    if interpret:
        return None
    warps = num_warps_for(Hp, U.dtype.itemsize, gates) if num_warps is None else num_warps
    return pltriton.CompilerParams(num_warps=warps, num_stages=1)


def layout(T, B, H, block_b):
    bB = max(16, block_b)
    Bp = -(-B // bB) * bB
    return bB, Bp, padded_size(H)


def blocks(x, axis: int, H: int, Hp: int):
    """``x`` with ``axis`` (a whole number of H-unit blocks: one per gate) padded to
    blocks of ``Hp`` units, zeros appended to each block."""
    n = x.shape[axis] // H
    shape = (*x.shape[:axis], n, H, *x.shape[axis + 1 :])
    pads = [(0, 0)] * (x.ndim + 1)
    pads[axis + 1] = (0, Hp - H)
    y = jnp.pad(x.reshape(shape), pads) if Hp != H else x.reshape(shape)
    return y.reshape(*x.shape[:axis], n * Hp, *x.shape[axis + 1 :])


def unblocks(x, axis: int, H: int, Hp: int):
    """The inverse of :func:`blocks`: each block's first ``H`` units."""
    n = x.shape[axis] // Hp
    y = x.reshape(*x.shape[:axis], n, Hp, *x.shape[axis + 1 :])
    y = lax.slice_in_dim(y, 0, H, axis=axis + 1)
    return y.reshape(*x.shape[:axis], n * H, *x.shape[axis + 1 :])


def padder(B: int, Bp: int, H: int, Hp: int):
    """``(pad, unpad)`` of per-step ``(T, B, w)`` and per-sequence ``(B, w)`` arrays:
    rows to ``Bp`` (frozen padding), units to ``Hp`` in every gate's block."""

    def pad(x):
        rows = 1 if x.ndim == 3 else 0
        x = blocks(x, x.ndim - 1, H, Hp)
        return pad_to(x, tuple(Bp if a == rows else None for a in range(x.ndim)))

    def unpad(x):
        rows = 1 if x.ndim == 3 else 0
        return unblocks(lax.slice_in_dim(x, 0, B, axis=rows), x.ndim - 1, H, Hp)

    return pad, unpad


def pad_weights(R, H: int, Hp: int):
    """A cell's resident weights padded: every axis is whole gate blocks of H units."""

    def pad(x):
        for axis in range(x.ndim):
            x = blocks(x, axis, H, Hp)
        return x

    return jax.tree.map(pad, R)
