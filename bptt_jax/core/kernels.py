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

from .kernel_layout import (  # BLOCK_B, padded_size: part of this module's face
    BLOCK_B,  # noqa: F401
    Launch,
    block_spec,
    compiler_params,
    interpret_mode,
    layout,
    pad_to,
    pad_weights,
    padded_size,
    padder,
)
from .options import DEFAULT
from .steps import delta_step, forward_step

#: The default launch: blocks of :data:`BLOCK_B` sequences, interpret mode off the GPU.
LAUNCH = Launch()

#: Bits of the per-step, per-sequence int32 flags.
REAL, RESET, KEEP = 1, 2, 4
#: The most bytes of a padded ``U`` one program keeps on chip (see the module doc).
U_BYTES_MAX = 128 * 1024
#: The products' dtypes the kernels take (float64 in interpret mode only).
GPU_DTYPES = ("float32", "bfloat16")
INTERPRET_DTYPES = ("float32", "bfloat16", "float64")


def kernel_supported(H: int, B: int, dtype, backend: str, gates: int = 1) -> bool:
    """Whether the kernels take a cell of ``H`` units and ``gates`` row blocks of ``U``
    (1 vanilla, 4 LSTM, 3 GRU), ``B`` sequences, products in ``dtype``, on ``backend``
    ("gpu" compiled; any other backend in interpret mode).

    ``B`` is any positive count (padded to the block); the limit is ``U`` on chip:
    :math:`G \\cdot H_p^2 \\cdot \\mathrm{itemsize} \\le` :data:`U_BYTES_MAX`.
    """
    name = jnp.dtype(dtype).name
    dtypes = GPU_DTYPES if backend == "gpu" else INTERPRET_DTYPES
    if name not in dtypes or H < 1 or B < 1 or (backend == "gpu" and gates > 1):
        return False
    return gates * padded_size(H) ** 2 * jnp.dtype(dtype).itemsize <= U_BYTES_MAX


def unsupported_reason(H: int, B: int, dtype, backend: str, gates: int = 1) -> str:
    """One line saying why :func:`kernel_supported` is False (for the caller's error)."""
    name = jnp.dtype(dtype).name
    dtypes = GPU_DTYPES if backend == "gpu" else INTERPRET_DTYPES
    if name not in dtypes:
        return f"products in {name} on {backend} (expected {' or '.join(dtypes)})"
    if backend == "gpu" and gates > 1:
        return (
            "a gated cell on the GPU (its kernels run in interpret mode only: Pallas' "
            "Triton lowering has no slice of a value, which splits the gates)"
        )
    Hp = padded_size(H)
    size = gates * Hp * Hp * jnp.dtype(dtype).itemsize
    limits = "float32: H <= 128, bfloat16: H <= 256" if gates == 1 else (
        f"{gates} gate blocks: float32 H <= 64, bfloat16 H <= 128")  # fmt: skip
    return (
        f"H={H} (padded to {Hp}) with {name} products: U is {size} bytes, over the "
        f"{U_BYTES_MAX} one program keeps on chip ({limits})"
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


def _get(refs):
    """The values of a pytree of refs (whole blocks)."""
    return jax.tree.map(lambda r: r[...], refs)


def _forward_kernel(options, trees, *refs):
    """One block of sequences: :func:`.steps.forward_step` of the cell for every t."""
    a_ref, fl_ref, s_refs, s0_refs, R_refs, out_refs = jax.tree.unflatten(trees, refs)
    R = _get(R_refs)  # loaded once, on chip for every step
    cell = options.cell
    step = forward_step(cell, _kernel_mm(options), R, _get(s0_refs))

    def body(t, s_prev):
        fl = fl_ref[t]  # (bB,)
        trace = step(s_prev, a_ref[t], _flag(fl, REAL), _flag(fl, RESET))
        jax.tree.map(lambda ref, v: ref.__setitem__(t, v), out_refs, trace)
        return cell.state(trace)

    lax.fori_loop(0, a_ref.shape[0], body, _get(s_refs))


def _backward_kernel(options, trees, *refs):
    """One block of sequences: :func:`.steps.delta_step` of the cell, last step first."""
    (G_ref, tr_refs, in_refs, fl_ref, g_refs, acc_refs, U_ref,
     (d_ref, g_out_refs, acc_out_refs)) = jax.tree.unflatten(trees, refs)  # fmt: skip
    U = U_ref[...]  # loaded once, on chip for every step
    T = G_ref.shape[0]
    step = delta_step(options.cell, _kernel_mm(options), U, options.clip_delta)
    at = lambda refs, t: jax.tree.map(lambda r: r[t], refs)  # noqa: E731

    def body(i, carry):
        t = T - 1 - i
        fl = fl_ref[t]
        s_in = None if in_refs is None else at(in_refs, t)
        g, acc, delta = step(*carry, G_ref[t], at(tr_refs, t), s_in, _flag(fl, REAL),
                             _flag(fl, RESET), _flag(fl, KEEP))  # fmt: skip
        d_ref[t] = delta
        return g, acc

    g, acc = lax.fori_loop(0, T, body, (_get(g_refs), _get(acc_refs)))
    jax.tree.map(lambda ref, v: ref.__setitem__(Ellipsis, v), g_out_refs, g)
    jax.tree.map(lambda ref, v: ref.__setitem__(Ellipsis, v), acc_out_refs, acc)


def _call(body, options, name, args, kinds, outs, grid, launch: Launch, weight):
    """``pl.pallas_call`` over flattened pytrees: ``args``/``outs`` trees of arrays /
    ShapeDtypeStructs with a BlockSpec kind per leaf (``kinds``, trees alike); ``grid``
    ``(programs, block_b, Hp)``; ``weight``: the resident matrix (its dtype sets the
    warps)."""
    bB, interpret, gates = grid[1], interpret_mode(launch.interpret), options.cell.gates
    kind_leaves = jax.tree.leaves(kinds)
    in_specs = [block_spec(x, bB, k)
                for x, k in zip(jax.tree.leaves(args), kind_leaves, strict=True)]  # fmt: skip
    out_leaves, out_tree = jax.tree.flatten(outs[0])
    out_specs = [block_spec(x, bB, k) for x, k in zip(out_leaves, jax.tree.leaves(outs[1]),
                                                 strict=True)]  # fmt: skip
    trees = jax.tree.structure((*args, outs[0]))
    result = pl.pallas_call(
        functools.partial(body, options, trees),
        out_shape=out_leaves,
        grid=(grid[0],),
        in_specs=in_specs,
        out_specs=out_specs,
        interpret=interpret,
        compiler_params=compiler_params(interpret, grid[2], weight, launch.num_warps, gates),
        name=name,
    )(*jax.tree.leaves(args))
    return jax.tree.unflatten(out_tree, result)


@functools.partial(jax.jit, static_argnames=("options", "launch"))
def forward_recursion(a, h_start, UT, h0=None, flags=None, *, options=DEFAULT,
                      launch: Launch = LAUNCH):  # fmt: skip
    r"""Every step's trace (for the vanilla cell, every :math:`h_t = f(U h^{\mathrm{in}}_t +
    a_t)`, ``(T, B, H)``) in one kernel.

    Args:
      a: ``(T, B, G·H)`` the input projections :math:`W x_t + b` (the state's dtype).
      h_start: the state entering step 1 (``(B, H)``; the LSTM's a pair).
      UT: the cell's resident weights, ``cell.weights(layer, cast)`` (the vanilla
        cell's :math:`U^\top` ``(H, H)``) in the products' dtype.
      h0: the state a reset restarts from (``None``: ``h_start``).
      flags: ``(T, B)`` int32 of :func:`step_flags` (``REAL``, ``RESET``), or ``None``.
      options: the cell (its step) and the products' ``precision`` (``None``: as
        ``jax_default_matmul_precision``).
      launch: sequences per program, interpret mode, Triton warps
        (:class:`~.kernel_layout.Launch`).

    Returns:
      The traces, ``(T, B, ·)`` leaves (the vanilla cell's: the states, frozen at
      padding).
    """
    cell, s_start = options.cell, h_start
    (T, B), H = a.shape[:2], jax.tree.leaves(s_start)[0].shape[-1]
    dt = jax.tree.leaves(s_start)[0].dtype
    if T == 0:  # no steps: empty traces
        return _empty_traces(cell, a, s_start, UT)
    bB, Bp, Hp = layout(T, B, H, launch.block_b)
    s0 = s_start if h0 is None else h0
    flags = step_flags(T, B) if flags is None else flags
    pad, unpad = padder(B, Bp, H, Hp)
    R = pad_weights(UT, H, Hp)
    a_p, s_p, s0_p = pad(a.astype(dt)), jax.tree.map(pad, s_start), jax.tree.map(pad, s0)
    trace = jax.eval_shape(lambda: cell.forward(_kernel_mm(options), R, s_p, a_p[0]))
    outs = jax.tree.map(lambda x: jax.ShapeDtypeStruct((T, *x.shape), x.dtype), trace)
    args = (a_p, pad_to(flags, (T, Bp)), s_p, s0_p, R)
    kinds = (
        "steps",
        "flags",
        jax.tree.map(lambda _: "state", s_p),
        jax.tree.map(lambda _: "state", s0_p),
        jax.tree.map(lambda _: "weight", R),
    )
    out = _call(_forward_kernel, options, f"{cell.name}_forward_recursion", args, kinds,
                (outs, jax.tree.map(lambda _: "steps", outs)), (Bp // bB, bB, Hp), launch,
                jax.tree.leaves(R)[0])  # fmt: skip
    return jax.tree.map(unpad, out)


def _empty_traces(cell, a, s_start, R):
    """The traces of no steps: ``(0, B, ·)`` leaves."""
    trace = jax.eval_shape(lambda: cell.forward(jnp.matmul, R, s_start, a[0] if a.shape[0] else
                                                jnp.zeros(a.shape[1:], a.dtype)))  # fmt: skip
    return jax.tree.map(lambda x: jnp.zeros((0, *x.shape), x.dtype), trace)


@functools.partial(jax.jit, static_argnames=("options", "launch"))
def backward_recursion(G, hs, g, U, flags=None, acc=None, s_in=None, *, options=DEFAULT,
                       launch: Launch = LAUNCH):  # fmt: skip
    r"""Every :math:`\delta_t` of a chunk and the gradient leaving it, in one kernel.

    Args:
      G: ``(T, B, H)`` the gradient reaching each :math:`h_t` from outside the
        recursion (:math:`V^\top r_t`, or the layer above's :math:`W^\top\delta_t`).
      hs: the traces of :func:`forward_recursion` (the vanilla cell's states
        :math:`h_t`: :math:`f'` is computed from them).
      g: :math:`\gamma`, the gradient carried into the chunk's last step (like the
        state: ``(B, H)``, the LSTM's a pair).
      U: ``(G·H, H)`` in the products' dtype.
      flags: ``(T, B)`` int32 of :func:`step_flags` (``REAL``, ``RESET``, ``KEEP``).
      acc: like ``g``, the running :math:`\partial E/\partial h_0` of reset steps
        (``None``: zeros).
      s_in: the states each step read, for a cell that reads them
        (``cell.reads_state_in``), else ``None``.
      options: the cell (its δ step), ``clip_delta`` (``None`` or θ > 0, as the cell
        applies it) and ``precision``.
      launch: as :func:`forward_recursion`.

    Returns:
      ``(deltas (T, B, ·), g_out, acc_out)``: every :math:`\delta_t`, the gradient
      leaving the chunk through the state entering its first step, and ``acc`` plus
      the reset steps' :math:`\gamma_t`.
    """
    cell = options.cell
    acc = jax.tree.map(jnp.zeros_like, g) if acc is None else acc
    (T, B, H), dt = G.shape, jax.tree.leaves(g)[0].dtype
    if T == 0:
        width = cell.gates * H if cell.name != "gru" else 4 * H
        return jnp.zeros((0, B, width), dt), g, acc
    bB, Bp, Hp = layout(T, B, H, launch.block_b)
    flags = step_flags(T, B) if flags is None else flags
    pad, unpad = padder(B, Bp, H, Hp)
    cast = lambda tree: jax.tree.map(lambda x: pad(x.astype(dt)), tree)  # noqa: E731
    U_p = pad_weights(U, H, Hp)
    tr_p, in_p = cast(hs), None if s_in is None else cast(s_in)
    g_p, acc_p, G_p = cast(g), cast(acc), cast(G)
    d_shape = jax.eval_shape(
        lambda: cell.delta(_kernel_mm(options), U_p, cell.total(g_p, G_p[0]),
                           jax.tree.map(lambda x: x[0], tr_p),
                           None if in_p is None else jax.tree.map(lambda x: x[0], in_p))[1]
    )  # fmt: skip
    st = lambda tree: jax.tree.map(lambda _: "state", tree)  # noqa: E731
    sp = lambda tree: jax.tree.map(lambda _: "steps", tree)  # noqa: E731
    args = (G_p, tr_p, in_p, pad_to(flags, (T, Bp)), g_p, acc_p, U_p)
    kinds = ("steps", sp(tr_p), sp(in_p), "flags", st(g_p), st(acc_p), "weight")
    like = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    outs = (jax.ShapeDtypeStruct((T, *d_shape.shape), dt), like(g_p), like(acc_p))
    out_kinds = ("steps", st(g_p), st(acc_p))
    deltas, g_out, acc_out = _call(
        _backward_kernel, options, f"{cell.name}_backward_recursion", args, kinds,
        (outs, out_kinds), (Bp // bB, bB, Hp), launch, U_p,
    )  # fmt: skip
    return unpad(deltas), jax.tree.map(unpad, g_out), jax.tree.map(unpad, acc_out)
