r"""The two sequential recursions of BPTT as fused Pallas kernels (``docs/performance.md``).

Only two parts of BPTT are sequential; everything else (the input projections
:math:`a_t = W x_t + b`, the output layer, :math:`V^\top r_t`, the outer-product sums
of the gradients) is batched work that XLA does well. In a cell's view of time
(``docs/math.md`` §4, §7):

.. math::

    h_t = f(U h^{\mathrm{in}}_t + a_t),\qquad
    h^{\mathrm{in}}_t = \begin{cases} h_0 & \text{a reset at } t \\
                                       h_{t-1} & \text{otherwise} \end{cases}

    \delta_t = (G_t + \gamma_{t+1}) \odot f'(h_t),\qquad
    \gamma_t = U^\top \delta_t \ (0 \text{ at a reset, whose } U^\top\delta_t
    \text{ goes to } h_0)

with :math:`\gamma` zeroed where the truncation ``keep`` flag is off, and at padding
(``real`` off) the state frozen (:math:`h_t = h^{\mathrm{in}}_t`), :math:`\delta_t = 0`
and :math:`\gamma` passed through. Exactly the conventions of the ``lax.scan`` steps of
:mod:`bptt_jax.core.backward` and :mod:`bptt_jax.core.bptt`, step for step, in the
same order of operations (``clip_delta`` too).

Design. One program per block of ``block_b`` sequences (a grid over ``B / block_b``).
Each program loads :math:`U` (``(H, H)`` in the products' dtype) once and keeps it on
chip for the whole ``lax.fori_loop`` over the steps; :math:`h` (or :math:`\gamma` and
the reset accumulator) is the loop's carry, so it never leaves the chip either. Per
step it reads :math:`a_t` (or :math:`G_t, h_t`) and one int32 of flags per sequence,
and writes :math:`h_t` (or :math:`\delta_t`): no kernel launch and no read of
:math:`U` per step. The activation and :math:`f'` from :math:`h` are fused. Products
take ``U``'s dtype (float32, bfloat16, float64 in interpret mode) and accumulate in
the state's dtype (float32 for bfloat16 products).

Sizes. On an NVIDIA GPU the Triton lowering needs power-of-two shapes and matrix
products of at least 16 × 16, so the wrappers pad ``B`` to a multiple of ``block_b``
(≥ 16) and ``H`` to :math:`H_p` = the next power of two ≥ 16 (padded rows are
frozen padding, padded units have zero weights and zero gradient; both are sliced
off). :math:`U` is held by one streaming multiprocessor, whose register file is
256 KiB and shared memory at most 227 KiB per block on an H100/H200; with room left
for the carry, the step's inputs and Triton's staging, the kernels accept
:math:`H_p^2 \cdot \mathrm{itemsize} \le 128` KiB:

============== ================= ===========
products        largest ``H``     ``U`` bytes
============== ================= ===========
float32         128               64 KiB
bfloat16        256               128 KiB
float64         128 (interpret)   128 KiB
============== ================= ===========

(a float32 ``U`` at H = 256 is 256 KiB: more than the register file or the shared
memory of one SM). :func:`kernel_supported` states the rule; on non-GPU backends the
kernels run in Pallas interpret mode (correct, slow: for tests) under the same rule,
so what is accepted does not depend on the machine. Pure: no I/O, no globals.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from .options import DEFAULT
from .steps import delta_step, forward_step

#: Bits of the per-step, per-sequence int32 flags.
REAL, RESET, KEEP = 1, 2, 4
#: Sequences per program (the rows of each step's ``(block_b, H) @ (H, H)`` product).
BLOCK_B = 16
#: The most bytes of a padded ``U`` one program keeps on chip (see the module doc).
U_BYTES_MAX = 128 * 1024
#: The products' dtypes the kernels take (float64 in interpret mode only).
GPU_DTYPES = ("float32", "bfloat16")
INTERPRET_DTYPES = ("float32", "bfloat16", "float64")


def padded_size(H: int) -> int:
    """:math:`H_p`: the next power of two ≥ max(H, 16) (Triton's shape rules)."""
    return max(16, 1 << max(int(H) - 1, 0).bit_length())


def kernel_supported(H: int, B: int, dtype, backend: str) -> bool:
    """Whether the kernels take a cell of ``H`` units, ``B`` sequences, products in
    ``dtype``, on ``backend`` ("gpu" compiled; any other backend in interpret mode).

    ``B`` is any positive count (padded to the block); the limit is ``U`` on chip:
    :math:`H_p^2 \\cdot \\mathrm{itemsize} \\le` :data:`U_BYTES_MAX`.
    """
    name = jnp.dtype(dtype).name
    dtypes = GPU_DTYPES if backend == "gpu" else INTERPRET_DTYPES
    if name not in dtypes or H < 1 or B < 1:
        return False
    return padded_size(H) ** 2 * jnp.dtype(dtype).itemsize <= U_BYTES_MAX


def unsupported_reason(H: int, B: int, dtype, backend: str) -> str:
    """One line saying why :func:`kernel_supported` is False (for the caller's error)."""
    name = jnp.dtype(dtype).name
    dtypes = GPU_DTYPES if backend == "gpu" else INTERPRET_DTYPES
    if name not in dtypes:
        return f"products in {name} on {backend} (expected {' or '.join(dtypes)})"
    Hp = padded_size(H)
    return (
        f"H={H} (padded to {Hp}) with {name} products: U is {Hp * Hp * jnp.dtype(dtype).itemsize}"
        f" bytes, over the {U_BYTES_MAX} one program keeps on chip (float32: H <= 128, "
        "bfloat16: H <= 256)"
    )


def step_flags(T: int, B: int, real=None, reset=None, keep=None) -> jax.Array:
    """``(T, B)`` int32 flags from bool masks broadcastable to ``(T, B)`` (a trailing
    axis of 1 is dropped); ``None``: real everywhere, no reset, keep everywhere."""

    def bits(x, bit, default):
        if x is None:
            return jnp.full((T, B), bit if default else 0, jnp.int32)
        x = jnp.asarray(x)
        if x.ndim == 3:
            x = x[..., 0]
        if x.ndim == 1:
            x = x[:, None]
        return jnp.where(jnp.broadcast_to(x, (T, B)), bit, 0).astype(jnp.int32)

    return bits(real, REAL, True) | bits(reset, RESET, False) | bits(keep, KEEP, True)


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def _pad(x, axis_sizes):
    """Zero-pads ``x`` to ``axis_sizes`` (None: unchanged)."""
    pads = [(0, 0 if n is None else n - s) for s, n in zip(x.shape, axis_sizes, strict=True)]
    return x if all(p == (0, 0) for p in pads) else jnp.pad(x, pads)


def _flag(fl, bit):
    """``(bB,)`` int32 flags -> ``(bB, 1)`` bool of one bit."""
    return ((fl & bit) != 0)[:, None]


def _kernel_mm(options):
    """The kernels' product: operands in the matrix's dtype, accumulated in the state's, at
    ``options.precision``; ``None`` follows ``jax_default_matmul_precision`` as XLA's
    products do (Triton's own default for float32 is TF32; "highest" gives IEEE float32)."""
    precision = options.precision
    if precision is None:
        name = jax.config.jax_default_matmul_precision
        if name in ("highest", "float32"):
            precision = lax.Precision.HIGHEST
        elif name in ("high", "tensorfloat32", "bfloat16_3x"):
            precision = lax.Precision.HIGH

    def mm(x, M):
        return jnp.dot(x.astype(M.dtype), M, precision=precision, preferred_element_type=x.dtype)

    return mm


def _forward_kernel(options, a_ref, fl_ref, hs_ref0, h0_ref, UT_ref, hs_ref):
    """One block of sequences: :func:`.steps.forward_step` of the cell for every t."""
    UT = UT_ref[...]  # (Hp, Hp): loaded once, on chip for every step
    h0 = h0_ref[...]  # (bB, Hp): the state every reset restarts from
    step = forward_step(options.cell, _kernel_mm(options), UT, h0)

    def body(t, h_prev):
        fl = fl_ref[t]  # (bB,)
        h = step(h_prev, a_ref[t], _flag(fl, REAL), _flag(fl, RESET))
        hs_ref[t] = h
        return h

    lax.fori_loop(0, a_ref.shape[0], body, hs_ref0[...])


def _backward_kernel(options, G_ref, hs_ref, fl_ref, g_ref, acc_ref, U_ref, d_ref, g_out_ref,
                     acc_out_ref):  # fmt: skip
    """One block of sequences: :func:`.steps.delta_step` of the cell, last step first."""
    U = U_ref[...]  # (Hp, Hp): loaded once, on chip for every step
    T = G_ref.shape[0]
    mm = _kernel_mm(options)
    step = delta_step(options.cell, mm, U, options.clip_delta)

    def body(i, carry):
        t = T - 1 - i
        fl = fl_ref[t]
        g, acc, delta = step(*carry, G_ref[t], hs_ref[t], None, _flag(fl, REAL), _flag(fl, RESET),
                             _flag(fl, KEEP))  # fmt: skip
        d_ref[t] = delta
        return g, acc

    g, acc = lax.fori_loop(0, T, body, (g_ref[...], acc_ref[...]))
    g_out_ref[...] = g
    acc_out_ref[...] = acc


def _specs(T, bB, Hp):
    """BlockSpecs: per-step arrays, flags, per-sequence states, the resident matrix."""
    steps = pl.BlockSpec((T, bB, Hp), lambda i: (0, i, 0))
    flags = pl.BlockSpec((T, bB), lambda i: (0, i))
    state = pl.BlockSpec((bB, Hp), lambda i: (i, 0))
    matrix = pl.BlockSpec((Hp, Hp), lambda i: (0, 0))
    return steps, flags, state, matrix


def num_warps_for(Hp: int, itemsize: int) -> int:
    """Warps per program on a GPU: enough threads that ``U``'s ``Hp² · itemsize`` bytes
    take at most ~128 registers per thread (4 to 16 warps, 32 threads each)."""
    regs = Hp * Hp * itemsize // 4  # 32-bit registers holding U
    return max(4, min(16, pl.next_power_of_2(-(-regs // (128 * 32)))))


def _compiler_params(interpret: bool, Hp: int, U, num_warps: int | None):
    if interpret:
        return None
    warps = num_warps_for(Hp, U.dtype.itemsize) if num_warps is None else num_warps
    return pltriton.CompilerParams(num_warps=warps, num_stages=1)


def _layout(T, B, H, block_b):
    bB = max(16, block_b)
    Bp = -(-B // bB) * bB
    return bB, Bp, padded_size(H)


@functools.partial(jax.jit, static_argnames=("options", "block_b", "interpret", "num_warps"))
def forward_recursion(a, h_start, UT, h0=None, flags=None, *, options=DEFAULT, block_b=BLOCK_B,
                      interpret=None, num_warps=None):  # fmt: skip
    r"""Every :math:`h_t = f(U h^{\mathrm{in}}_t + a_t)`, ``(T, B, H)``, in one kernel.

    Args:
      a: ``(T, B, H)`` the input projections :math:`W x_t + b` (the state's dtype).
      h_start: ``(B, H)`` the state entering step 1.
      UT: ``(H, H)`` :math:`U^\top` in the products' dtype.
      h0: ``(B, H)`` the state a reset restarts from (``None``: ``h_start``).
      flags: ``(T, B)`` int32 of :func:`step_flags` (``REAL``, ``RESET``), or ``None``.
      options: the cell (its step) and the products' ``precision`` (``None``: as
        ``jax_default_matmul_precision``).
      block_b: sequences per program (at least 16).
      interpret: ``None``: interpret mode unless the backend is a GPU.
      num_warps: Triton warps per program (``None``: :func:`num_warps_for`).

    Returns:
      ``hs (T, B, H)``: the states carried out of each step (frozen at padding).
    """
    T, B, H = a.shape
    if T == 0:
        return a
    bB, Bp, Hp = _layout(T, B, H, block_b)
    h0 = h_start if h0 is None else h0
    flags = step_flags(T, B) if flags is None else flags
    steps, fspec, state, matrix = _specs(T, bB, Hp)
    kernel = functools.partial(_forward_kernel, options)
    hs = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((T, Bp, Hp), h_start.dtype),
        grid=(Bp // bB,),
        in_specs=[steps, fspec, state, state, matrix],
        out_specs=steps,
        interpret=_interpret(interpret),
        compiler_params=_compiler_params(_interpret(interpret), Hp, UT, num_warps),
        name="rnn_forward_recursion",
    )(
        _pad(a.astype(h_start.dtype), (T, Bp, Hp)), _pad(flags, (T, Bp)),
        _pad(h_start, (Bp, Hp)), _pad(h0, (Bp, Hp)), _pad(UT, (Hp, Hp)),
    )  # fmt: skip
    return hs[:, :B, :H]


@functools.partial(jax.jit, static_argnames=("options", "block_b", "interpret", "num_warps"))
def backward_recursion(G, hs, g, U, flags=None, acc=None, *, options=DEFAULT, block_b=BLOCK_B,
                       interpret=None, num_warps=None):  # fmt: skip
    r"""Every :math:`\delta_t` of a chunk and the gradient leaving it, in one kernel.

    Args:
      G: ``(T, B, H)`` the gradient reaching each :math:`h_t` from outside the
        recursion (:math:`V^\top r_t`, or the layer above's :math:`W^\top\delta_t`).
      hs: ``(T, B, H)`` the states :math:`h_t` (:math:`f'` is computed from them).
      g: ``(B, H)`` :math:`\gamma`, the gradient carried into the chunk's last step.
      U: ``(H, H)`` in the products' dtype.
      flags: ``(T, B)`` int32 of :func:`step_flags` (``REAL``, ``RESET``, ``KEEP``).
      acc: ``(B, H)`` the running :math:`\partial E/\partial h_0` of reset steps
        (``None``: zeros).
      options: the cell (its δ step), ``clip_delta`` (``None`` or θ > 0: each
        sequence's :math:`\delta_t` rescaled to norm ≤ θ) and ``precision``.
      block_b, interpret, num_warps: as :func:`forward_recursion`.

    Returns:
      ``(deltas (T, B, H), g_out (B, H), acc_out (B, H))``: every :math:`\delta_t`, the
      gradient leaving the chunk through the state entering its first step, and ``acc``
      plus the reset steps' :math:`U^\top\delta_t`.
    """
    T, B, H = G.shape
    acc = jnp.zeros_like(g) if acc is None else acc
    if T == 0:
        return G, g, acc
    bB, Bp, Hp = _layout(T, B, H, block_b)
    flags = step_flags(T, B) if flags is None else flags
    steps, fspec, state, matrix = _specs(T, bB, Hp)
    kernel = functools.partial(_backward_kernel, options)
    dt = g.dtype
    deltas, g_out, acc_out = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((T, Bp, Hp), dt),
            jax.ShapeDtypeStruct((Bp, Hp), dt),
            jax.ShapeDtypeStruct((Bp, Hp), dt),
        ),
        grid=(Bp // bB,),
        in_specs=[steps, steps, fspec, state, state, matrix],
        out_specs=(steps, state, state),
        interpret=_interpret(interpret),
        compiler_params=_compiler_params(_interpret(interpret), Hp, U, num_warps),
        name="rnn_backward_recursion",
    )(
        _pad(G.astype(dt), (T, Bp, Hp)), _pad(hs.astype(dt), (T, Bp, Hp)), _pad(flags, (T, Bp)),
        _pad(g, (Bp, Hp)), _pad(acc, (Bp, Hp)), _pad(U, (Hp, Hp)),
    )  # fmt: skip
    return deltas[:, :B, :H], g_out[:B, :H], acc_out[:B, :H]
