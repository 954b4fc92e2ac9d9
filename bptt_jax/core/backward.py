r"""Hand BPTT for every model: one chunked backward (``docs/math.md`` §4, §4.1, §7).

Stacked layers, bidirectional layers, padding, per-step resets, ``reduction="mean"``,
soft labels, dense inputs and every option of :func:`bptt_jax.core.bptt.bptt_core`
(``truncate``, ``clip_delta``, ``chunk``, ``recompute``, ``unroll``, ``matmul_dtype``).
Every cell (one direction of one layer) is run on a *view* of time: its own processing
order, so a backward-in-time direction is the same code on flipped arrays. In its view
a cell's recursion and its hand backward are (§4, §7)

.. math::

    h_t = f(U h^{\mathrm{in}}_t + W x_t + b),\qquad
    \delta_t = (G_t + \gamma_{t+1}) \odot f'(h_t),\qquad
    \gamma_t = U^\top \delta_t

with :math:`h^{\mathrm{in}}_t = h_0` at the first step and at resets (the gradient
:math:`U^\top\delta_t` then goes to :math:`h_0`, not to step t − 1), :math:`G_t =
V^\top r_t` for the top layer and :math:`W^{\ell+1\top}\delta^{\ell+1}_t` below, and
:math:`\gamma` cut at truncation boundaries. Padding freezes the state, outputs zero,
has :math:`\delta_t = 0` and passes :math:`\gamma` through.

The backward pass walks chunks of ``chunk`` steps, last first (§4.1): a chunk's logits,
:math:`r_t` and :math:`V^\top r_t` exist only while it is processed, so no ``(T, B, C)``
array is built. Unidirectional stacks run every layer inside the same chunk, top
first, so of size ``T·B·H`` only each layer's :math:`h_t` are kept (with
``recompute``, only the states entering each chunk). A bidirectional layer's two
directions run their δ recursions in opposite time orders, so the layer below needs
both directions' δ at every step: there each cell runs its own chunked sweep and
hands :math:`\sum_d W^{\ell,d\top}\delta^{\ell,d}_t` down in one ``(T, B, D·H)``
buffer per layer boundary (with ``recompute`` each cell keeps only the states entering
its chunks, and a middle layer's input is run again when its sweeps begin). No autodiff.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .cell import rows_first, scatter_inputs
from .kernels import backward_recursion, forward_recursion, step_flags
from .losses import softmax_cross_entropy
from .options import Options
from .params import Layer
from .steps import delta_step, forward_step


def _rows(a: jax.Array) -> jax.Array:
    """``(c, B, ...) -> (c·B, ...)``: a chunk's steps as the rows of 2-D products."""
    return a.reshape(-1, *a.shape[2:])


class _Ctx(NamedTuple):
    """What every chunk needs: the options (the cell among them), the product, the cast."""

    options: Options
    mm: object
    cast: object


def make_ctx(options: Options, dtype) -> _Ctx:
    """The :class:`_Ctx` of ``options`` for parameters of ``dtype``."""
    return _Ctx(options, *options.products(dtype))


def run_cell(ctx: _Ctx, layer: Layer, X, s_start, s0, m, e):
    """One cell over a chunk of its view: ``(s_end, traces)``, the state leaving it and
    every step's trace (``(c, B, ·)`` leaves; the vanilla cell's is its states)."""
    cell, options = ctx.options.cell, ctx.options
    a = cell.project(layer, X, ctx.mm, ctx.cast)  # W x_t + b, all steps at once
    R = cell.weights(layer, ctx.cast)
    if options.pallas:
        flags = step_flags(*a.shape[:2], real=m, reset=e)
        traces = forward_recursion(a, s_start, R, s0, flags, options=options)
        end = jax.tree.map(lambda x: x[-1], cell.state(traces)) if a.shape[0] else s_start
        return end, traces
    step = forward_step(cell, ctx.mm, R, s0)

    def scan_step(s_prev, inputs):
        trace = step(s_prev, *inputs)
        return cell.state(trace), trace

    return lax.scan(scan_step, s_start, (a, m, e), unroll=options.unroll)


def entering(cell, traces, s_start, s0, e):
    """The state each step of a view read, ``(c, B, H)`` leaves: the previous step's
    (``s_start`` at the first), ``s0`` at a reset."""
    prev = jax.tree.map(lambda s, a: jnp.concatenate([s[None], a[:-1]]), s_start,
                        cell.state(traces))  # fmt: skip
    return prev if e is None else jax.tree.map(lambda r, p: jnp.where(e, r, p), s0, prev)


def _masked(hs, m):
    """A cell's outputs ``(c, B, H)``, zero at padding."""
    return hs if m is None else jnp.where(m, hs, 0)


def outputs(ctx: _Ctx, traces, m):
    """The outputs :math:`h_t` of a cell's traces, zero at padding."""
    return _masked(ctx.options.cell.output(traces), m)


def _scan_step(ctx: _Ctx, U_):
    r"""``((γ, acc), (G_t, trace_t, s_in_t, m_t, e_t, k_t)) -> ((γ', acc'), δ_t)``: the
    reverse scan's step, :func:`.steps.delta_step` of the cell (§4)."""
    step = delta_step(ctx.options.cell, ctx.mm, U_, ctx.options.clip_delta)

    def scan_step(carry, inputs):
        g, acc, delta = step(*carry, *inputs)
        return (g, acc), delta

    return scan_step


#: Widest operand whose transpose :func:`_transposed` copies (see there).
_COPY_TRANSPOSE_MAX = 1024


def _transposed(a):
    """``aᵀ`` for a product ``aᵀ @ b``, ``a`` ``(rows, n)``: materialized when n is small.

    XLA folds a plain transpose into the product as a transposed-operand dot, which
    its CPU backend runs off its fast matmul path: for n = 65 to 512 (δ_t rows, or
    r_t at a small vocabulary) copying ``aᵀ`` first is 10-35% faster per product;
    for n = 10000 (r_t at a large vocabulary) the copy costs more than it saves
    (``benchmarks/README.md``, deep models)."""
    if a.shape[1] > _COPY_TRANSPOSE_MAX:
        return a.T
    return lax.optimization_barrier(a.T)


def cell_backward(ctx: _Ctx, layer: Layer, X_c, tr_c, s_start, s0, carry, G, marks):
    """A cell's part of one chunk: ``(γ, acc, (dU, dW rows, db), δ (c, B, ·))``;
    ``carry = (γ, acc)`` (pytrees like the state; ``acc`` the reset steps' gradient of
    ``s0``), ``marks = (m, e, k)`` (padding, entry resets, truncation)."""
    (g, acc), (m, e, k), cell = carry, marks, ctx.options.cell
    s_in = entering(cell, tr_c, s_start, s0, e)
    read = s_in if cell.reads_state_in else None
    if ctx.options.pallas:
        flags = step_flags(*G.shape[:2], real=m, reset=e, keep=k)
        deltas, g, acc_k = backward_recursion(G, tr_c, g, ctx.cast(layer.U), flags, acc, read,
                                              options=ctx.options)  # fmt: skip
        acc = None if acc is None else acc_k
    else:
        step = _scan_step(ctx, ctx.cast(layer.U))
        (g, acc), deltas = lax.scan(step, (g, acc), (G, tr_c, read, m, e, k), reverse=True,
                                    unroll=ctx.options.unroll)  # fmt: skip
    d2 = _rows(deltas)
    dU = ctx.mm(_transposed(cell.u_rows(d2)), _rows(cell.h_of(s_in)))  # Σ_t δ_t ⊗ h_in_t
    ids = jnp.issubdtype(X_c.dtype, jnp.integer)
    dW = cell.w_rows(d2)
    dW = dW if ids else ctx.mm(_transposed(dW), _rows(X_c))  # ids: rows to scatter into dW
    return g, acc, (dU, dW, jnp.sum(d2, axis=0)), deltas


def _output_chunk(ctx: _Ctx, V, c, top_c, y_c, m_c, scale):
    r"""A chunk's loss, :math:`\partial E/\partial V, c` terms and :math:`V^\top r_t`."""
    h2 = _rows(top_c)
    z = ctx.mm(h2, ctx.cast(V.T)) + c
    y2 = _rows(y_c)
    if m_c is None:
        E_c, r = softmax_cross_entropy(z, y2)  # r_t = ŷ_t Σ y − y_t
        E_c, r = E_c * scale, r * scale
    else:
        m2 = _rows(m_c)  # (c·B, 1)
        if not jnp.issubdtype(y2.dtype, jnp.floating):
            y2 = jnp.where(m2[:, 0], y2, 0)  # labels at padding are never read
        E_c, r = softmax_cross_entropy(z, y2, m2[:, 0])  # padded rows: no loss
        E_c = E_c * scale
        r = jnp.where(m2, r, 0) * scale
    Vr = ctx.mm(r, ctx.cast(V)).reshape(*top_c.shape[:2], V.shape[1])  # Vᵀ r_t
    return E_c, ctx.mm(_transposed(r), h2), jnp.sum(r, axis=0), Vr


class _Out(NamedTuple):
    """The output layer on top of a sweep: ``G`` is ``Vᵀr[..., lo:hi]``; ``extra`` columns
    of :math:`V^\\top r_t` are handed out (the other direction's), or ``None``."""

    V: jax.Array
    c: jax.Array
    scale: jax.Array
    lo: int
    hi: int
    extra: tuple[int, int] | None


def _chunk_body(ctx: _Ctx, cells, r0s, out: _Out | None, emit_below: bool):
    """One chunk of a sweep, top cell first: ``(carry, (starts, data)) -> (carry, emitted)``.

    ``r0s``: per cell, the state a reset restores.

    ``data = (X, hs, y, m, e, k, top, G)``: the bottom cell's input, the cells' states
    (``None``: recompute them from ``starts``), labels, mask, entry resets, truncation
    keep, the output layer's input (``None``: the top cell's outputs) and ``G`` from
    above (``None``: from ``out``).
    """

    def body(carry, chunk_data):
        gs, accs, E, grads, dV, dc = carry
        starts, (X_c, hs_c, y_c, m_c, e_c, k_c, top_c, G_c) = chunk_data
        if hs_c is None:  # recompute the chunk's traces, layer by layer
            hs_c, inp = [], X_c
            for cell, start, r0 in zip(cells, starts, r0s, strict=True):
                hs_c.append(run_cell(ctx, cell, inp, start, r0, m_c, e_c)[1])
                inp = outputs(ctx, hs_c[-1], m_c)
        extra = None
        if out is not None:
            top_c = outputs(ctx, hs_c[-1], m_c) if top_c is None else top_c
            E_c, dV_c, dc_c, Vr = _output_chunk(ctx, out.V, out.c, top_c, y_c, m_c, out.scale)
            E, dV, dc = E + E_c, dV + dV_c, dc + dc_c
            G_c = Vr[..., out.lo : out.hi]
            extra = None if out.extra is None else Vr[..., out.extra[0] : out.extra[1]]
        gs, accs, grads = list(gs), list(accs), list(grads)
        for i in reversed(range(len(cells))):
            X_i = X_c if i == 0 else outputs(ctx, hs_c[i - 1], m_c)
            gs[i], accs[i], (dU, dW, db), deltas = cell_backward(
                ctx, cells[i], X_i, hs_c[i], starts[i], r0s[i], (gs[i], accs[i]), G_c,
                (m_c, e_c, k_c),
            )  # fmt: skip
            gU, gW, gb = grads[i]
            if jnp.issubdtype(X_i.dtype, jnp.integer):  # δ_t at token x_t of dW
                gW = scatter_inputs(gW, X_i, dW, rows_first(cells[i].W.shape[1]))
            else:
                gW = gW + dW
            grads[i] = (gU + dU, gW, gb + db)
            if i > 0 or emit_below:
                G_c = ctx.mm(ctx.options.cell.w_rows(deltas), ctx.cast(cells[i].W))  # W^ℓᵀ δ^ℓ_t
        new = (tuple(gs), tuple(accs), E, tuple(grads), dV, dc)
        return new, (G_c if emit_below else None, extra)

    return body


def _splitter(T: int, cs: int):
    """``(T, ...) -> (first chunk (rem, ...), full chunks (n, cs, ...))``, Nones kept."""
    n, rem = divmod(T, cs)

    def split(tree):
        head = jax.tree.map(lambda a: a[:rem], tree)
        body = jax.tree.map(lambda a: a[rem:].reshape(n, cs, *a.shape[1:]), tree)
        return head, body

    def join(head, body):  # the inverse, for what the chunks emit
        return jax.tree.map(
            lambda h, b: jnp.concatenate([h, b.reshape(-1, *b.shape[2:])]), head, body
        )

    return n, rem, split, join


def _stored_starts(states, h0s, split, n, rem):
    """The state entering each full chunk, from the stored states of every cell (each a
    pytree of ``(T, B, H)`` leaves)."""
    head, body = split(tuple(states))
    mid = tuple(jax.tree.map(lambda h: h[-1], h) for h in head) if rem else tuple(h0s)

    def entering_chunks(mid_i, b):
        return jnp.concatenate([mid_i[None], b[:-1, -1]]) if n else b[:, 0]

    pairs = zip(mid, body, strict=True)
    return tuple(jax.tree.map(entering_chunks, mid_i, b) for mid_i, b in pairs)


def _forward(ctx: _Ctx, cells, h0s, r0s, X, m, e, chunks):
    """A stack's forward pass in its view: ``(finals, hs per cell or None, body starts)``;
    ``r0s``: the states a reset restores (``h0s``, or zeros)."""
    split, n, rem = chunks
    if not ctx.options.recompute:
        hs, finals, inp = [], [], X
        for cell, h0, r0 in zip(cells, h0s, r0s, strict=True):
            h_fin, traces = run_cell(ctx, cell, inp, h0, r0, m, e)  # (T, B, ·) leaves
            hs.append(traces)
            finals.append(h_fin)
            inp = outputs(ctx, traces, m)
        states = [ctx.options.cell.state(t) for t in hs]
        return tuple(finals), tuple(hs), _stored_starts(states, h0s, split, n, rem)

    def run_stack(states, data):  # the chunk through every layer: the states leaving it
        X_c, m_c, e_c = data
        new, inp = [], X_c
        for cell, start, r0 in zip(cells, states, r0s, strict=True):
            h_end, hs_c = run_cell(ctx, cell, inp, start, r0, m_c, e_c)
            new.append(h_end)
            inp = outputs(ctx, hs_c, m_c)
        return tuple(new), states

    head, body = split((X, m, e))
    mid = run_stack(tuple(h0s), head)[0] if rem else tuple(h0s)
    finals, starts = lax.scan(run_stack, mid, body)
    return finals, None, starts


def _sweep(ctx: _Ctx, cells, h0s, g0s, view, cs: int, out, emit_below,
           stored=None, r0s=None):  # fmt: skip
    """One chunked backward sweep of a stack of cells (same view), last chunk first.

    ``view = (X, y, m, e, k, top, G)``, time-major in the stack's view. Returns
    ``(E, grads per cell (dU, dW, db), dV, dc, dh0s, finals, emitted)`` with
    ``emitted = (G below (T, B, D_in) or None, extra Vᵀr columns or None)``.
    ``stored``: ``(finals, hs, starts)`` of a forward pass already run (``hs`` ``None``:
    recompute each chunk's states from ``starts``; ``starts`` ``None``: from ``hs``), or
    ``None``.
    ``r0s``: the states a reset restores, or ``None`` for ``h0s`` (then the gradient
    that reaches a reset is part of ``dh0s``; with ``r0s`` given it is not).
    """
    X, y, m, e, k, top, G = view
    T, ids = X.shape[0], jnp.issubdtype(X.dtype, jnp.integer)
    n, rem, split, join = _splitter(T, cs)
    own_r0s = r0s is not None
    r0s = tuple(h0s) if r0s is None else tuple(r0s)
    if stored is None:
        finals, hs, starts = _forward(ctx, cells, h0s, r0s, X, m, e, (split, n, rem))
    else:
        finals, hs, starts = stored
        if starts is None:
            states = [ctx.options.cell.state(t) for t in hs]
            starts = _stored_starts(states, h0s, split, n, rem)
    # accumulators from a leaf of the state (not constants): under jax.shard_map they
    # then vary over the mesh as the carried state does (the scan carries keep a type)
    zeros = functools.partial(jnp.zeros_like, jax.tree.leaves(h0s[0])[0], cells[0].U.dtype)
    first = bool(ids) and rows_first(cells[0].W.shape[1])  # dW of ids as (K, G·H) rows
    grads = tuple((zeros(c.U.shape), zeros(c.W.shape[::-1] if i == 0 and first else c.W.shape),
                   zeros(c.b.shape)) for i, c in enumerate(cells))  # fmt: skip
    accs = tuple(None if e is None else jax.tree.map(jnp.zeros_like, h0) for h0 in h0s)
    V_shape = (1, 1) if out is None else out.V.shape
    carry = (tuple(g0s), accs, zeros(()), grads, zeros(V_shape), zeros(V_shape[:1]))
    body = _chunk_body(ctx, cells, r0s, out, emit_below)
    data_head, data_body = split((X, hs, y, m, e, k, top, G))
    emitted_body = emitted_head = None
    if n:
        carry, emitted_body = lax.scan(body, carry, (starts, data_body), reverse=True)
    if rem:
        carry, emitted_head = body(carry, (tuple(h0s), data_head))
    emitted = (None, None)
    if emitted_body is not None and emitted_head is not None:
        emitted = join(emitted_head, emitted_body)
    elif emitted_body is not None:
        emitted = jax.tree.map(lambda b: b.reshape(-1, *b.shape[2:]), emitted_body)
    elif emitted_head is not None:
        emitted = emitted_head
    gs, accs, E, grads, dV, dc = carry
    if first:  # the bottom cell's (K, G·H) rows back to W's layout
        grads = ((grads[0][0], grads[0][1].T, grads[0][2]), *grads[1:])
    dh0s = tuple(g if a is None or own_r0s else jax.tree.map(jnp.add, g, a)
                 for g, a in zip(gs, accs, strict=True))  # fmt: skip
    return E, grads, dV, dc, dh0s, finals, emitted
