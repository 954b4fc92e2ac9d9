r"""Stacked and bidirectional RNNs: forward pass, loss and hand BPTT (``docs/math.md`` §7).

Layer :math:`\ell` reads the outputs of layer :math:`\ell - 1` (the token ids or
vectors for :math:`\ell = 1`); a bidirectional layer runs a second cell backward in
time and concatenates both directions' outputs. The forward pass and the loss are
:mod:`bptt_jax.core.recurrence`'s (padding and per-step resets included); the hand
backward is the chunked one of :mod:`bptt_jax.core.backward`, which this module drives:
one sweep through every layer for unidirectional stacks, one sweep per cell, top layer
first, for bidirectional ones.

Padding: past a sequence's length a cell keeps the carried state, outputs zeros and
gets zero gradient; the backward-in-time direction starts at each sequence's own end.
Resets (``resets[b, t]``): the state entering step t is ``h0``; the backward-in-time
direction mirrors them (a reset at t ends the previous document at t − 1).

Truncation (``truncate=τ``) cuts the time axis into windows 1..τ, τ+1..2τ, ...: no
gradient of the state recursion crosses a window boundary, in either direction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .backward import _Out, _splitter, _stored_starts, _sweep, make_ctx, outputs, run_cell
from .options import DEFAULT, Options
from .params import DeepParams, Layer
from .recurrence import _forward, _output_layer, _prepare, _time_major
from .schedule import default_chunk
from .steps import pick, stack


def _top(params: DeepParams, xs, h0, mask, resets, options: Options):
    """``(m (T, B, 1) or None, finals, top (T, B, D*H))`` of :mod:`.recurrence`'s forward."""
    X, m, r = _prepare(xs, mask, resets)
    _, _, finals, top = _forward(params.cells(), X, h0, m, r, options)
    return m, finals, top


def cell_outputs(params: DeepParams, xs, h0, mask, options: Options = DEFAULT):
    """``(m (T, B), outs)``: the time-major mask and ``outs[l][d]`` ``(T, B, H)`` of every
    layer and direction (zeros at padding); batched layout, ``mask`` may be None."""
    if mask is None:
        mask = jnp.ones(xs.shape[:2], bool)
    X, m, _ = _prepare(xs, mask, None)
    _, traces, _, _ = _forward(params.cells(), X, h0, m, None, options)
    D = params.num_directions
    L = len(traces) // D
    out = options.cell.output
    outs = [[jnp.where(m, out(traces[l * D + d]), 0) for d in range(D)] for l in range(L)]
    return m[..., 0], outs


@functools.partial(jax.jit, static_argnames=("options",))
def deep_forward_core(params: DeepParams, xs, h0, mask=None, resets=None, *, options=DEFAULT):
    """``(hs (B, T, D*H), logits (B, T, C), h_final (L*D, B, H))``; no checks."""
    m, finals, top = _top(params, xs, h0, mask, resets, options)
    logits = jnp.matmul(top, params.V.T, precision=options.precision) + params.c
    logits = logits if m is None else jnp.where(m, logits, 0)
    return _time_major(top), _time_major(logits), finals


@functools.partial(jax.jit, static_argnames=("options", "reduction"))
def deep_loss_core(params: DeepParams, xs, ys, h0, mask=None, resets=None, *, options=DEFAULT,
                   reduction="sum"):  # fmt: skip
    """The loss for the batched layout; differentiable by ``jax.grad`` (the referee) with
    ``kernel="scan"``."""
    m, _, top = _top(params, xs, h0, mask, resets, options)
    return _output_layer(params, top, _time_major(ys), m, reduction, options)[0]


def _views(T: int, mask, resets, truncate):
    """Per direction ``d``: ``(m, e, keep)`` time-major ``(T, B|1, 1)`` in its view.

    ``e``: entry resets (mirrored backward in time); ``keep``: where the gradient from
    the step processed next may enter (False at window boundaries; never cut at
    padding or at a sequence's last real step, where ``dh_final`` enters).
    """
    m = None if mask is None else mask.T[..., None]
    r = None if resets is None else resets.T[..., None]
    if r is not None and m is not None:
        r = r & m  # resets on padding are ignored
    t = jnp.arange(1, T + 1)
    views = []
    for d in (0, 1):
        flip = (lambda a: a) if d == 0 else (lambda a: None if a is None else jnp.flip(a, 0))
        e = r if r is None or d == 0 else jnp.concatenate([r[1:], jnp.zeros_like(r[:1])])
        keep = None
        if truncate is not None and truncate < T:
            cut = (t % truncate == 0) & (t < T) if d == 0 else ((t - 1) % truncate == 0) & (t > 1)
            keep = flip(~cut[:, None, None])
        m_v = flip(m)
        if keep is not None and m_v is not None:
            last = m_v & ~jnp.concatenate([m_v[1:], jnp.zeros_like(m_v[:1])])
            keep = keep | ~m_v | last
        views.append((m_v, flip(e), keep))
    return views


#: Per direction, its view of time: as is (left to right), or reversed.
_FLIPS = (lambda a: a, lambda a: jnp.flip(a, 0))


def _layer(ctx, cell, inp, h0, r0, views, l):
    """Layer ``l``'s two cells over its input ``inp`` ``(T, B, D_in)``, each in its view:
    ``(finals, states, outputs (T, B, 2H))``."""
    finals, states, outs = [], [], []
    for d, layer in enumerate(cell):
        m, e, _ = views[d]
        i = 2 * l + d
        h_fin, hs = run_cell(ctx, layer, _FLIPS[d](inp), pick(h0, i), pick(r0, i), m, e)
        finals.append(h_fin)
        states.append(hs)
        outs.append(_FLIPS[d](outputs(ctx, hs, m)))
    return finals, states, jnp.concatenate(outs, axis=-1)


def _input_again(ctx, cells, X, after, h0, r0, views, l):
    """Layer ``l``'s input run again from ``X`` (``recompute``), once ``after`` exists: the
    barrier keeps XLA from holding or merging the first forward pass's copy."""
    inp, _ = lax.optimization_barrier((X, after))
    for k in range(l):
        inp = _layer(ctx, cells[k], inp, h0, r0, views, k)[2]
    return inp


def _bidirectional(ctx, params: DeepParams, X, Y, h0, dh_final, views, scale, cs, r0):
    """Per cell sweeps, top layer first; ``(E, grads[l][d], dV, dc, dh0s, finals)``;
    ``r0``: the states resets restore (``h0``, or zeros), like ``h0``.

    ``ctx.options.recompute``: each cell keeps only the states entering its chunks (its sweep runs
    the rest again), and a middle layer's input is run again from ``X`` when its sweeps
    begin; what stays of size ``T·B·H`` is the top layer's input and outputs and the
    gradient handed down one layer boundary (both directions' δ at every step)."""
    cells, H = params.cells(), params.layers[0].U.shape[1]
    recompute = ctx.options.recompute
    L = len(cells)
    n, rem, split, _ = _splitter(X.shape[0], cs)
    inputs, stored, inp = [], {}, X  # the forward pass
    for l, cell in enumerate(cells):
        inputs.append(inp)
        fins, states, inp = _layer(ctx, cell, inp, h0, r0, views, l)
        for d, (h_fin, hs) in enumerate(zip(fins, states, strict=True)):
            i = 2 * l + d
            state = ctx.options.cell.state(hs)
            starts = _stored_starts((state,), (pick(h0, i),), split, n, rem) if recompute else None
            stored[i] = ((h_fin,), None if recompute else (hs,), starts)
    grads = [[None, None] for _ in cells]
    dh0s, G_buf, extra = {}, None, None
    for l in reversed(range(L)):
        G_next, layer_in = None, inputs[l]
        if recompute and 0 < l < L - 1:
            layer_in = _input_again(ctx, cells, X, G_buf, h0, r0, views, l)
        for d, layer in enumerate(cells[l]):
            i, fl, (m, e, k) = 2 * l + d, _FLIPS[d], views[d]
            top = out = G = None
            if l == L - 1 and d == 0:  # the output layer, once: V columns of both
                out, top = _Out(params.V, params.c, scale, 0, H, (H, 2 * H)), inp
            else:
                G = fl(extra if l == L - 1 else G_buf[..., d * H : (d + 1) * H])
            view = (fl(layer_in), Y if out else None, m, e, k, top, G)
            r0s = None if r0 is h0 else (pick(r0, i),)
            res = _sweep(ctx, (layer,), (pick(h0, i),), (pick(dh_final, i),), view, cs, out,
                         l > 0, stored=stored[i], r0s=r0s)  # fmt: skip
            E_i, (g,), dV_i, dc_i, (dh0s[i],), _, (below, ex) = res
            if out is not None:
                E, dV, dc, extra = E_i, dV_i, dc_i, ex
            grads[l][d] = Layer(*g)
            if l > 0:
                G_next = fl(below) if G_next is None else G_next + fl(below)
        G_buf = G_next
    finals = stack([stored[i][0][0] for i in range(2 * L)])
    return E, grads, dV, dc, stack([dh0s[i] for i in range(2 * L)]), finals


@functools.partial(jax.jit, static_argnames=("options", "reduction", "zero_resets"))
def deep_bptt_core(params: DeepParams, xs, ys, h0, mask=None, dh_final=None, resets=None, *,
                   options=DEFAULT, reduction="sum", zero_resets=False):  # fmt: skip
    """Hand BPTT through every layer and direction; no checks.

    Args:
      params: :class:`DeepParams`.
      xs: ``(B, T)`` ids or ``(B, T, K)``; ys: ``(B, T)`` ids or ``(B, T, C)``.
      h0: ``(L*D, B, H)``; mask, resets: ``(B, T)`` bool or None; dh_final: like h0 or None.
      options: the cell and the backward's options, as :func:`bptt_jax.bptt`'s keywords
        (``kernel="pallas"`` runs every cell's two recursions as the fused kernels).
      reduction: ``"sum"`` or ``"mean"`` over the real steps.
      zero_resets: ``False``: a reset restores ``h0`` (the API's ``resets``); ``True``: it
        restores zeros, :math:`h^{\\mathrm{in}}_t = 0` (a document starts from the zero
        state while the chunk's first step continues ``h0``, the training streams' case),
        and ``dh0`` is then :math:`U^\\top\\delta_1` only.

    Returns:
      ``(E, grads DeepParams, dh0 (L*D, B, H), h_final (L*D, B, H))``.
    """
    B, T = xs.shape[:2]
    ctx = make_ctx(options, params.V.dtype)
    chunk, recompute = options.chunk, options.recompute
    cs = default_chunk(T, B, recompute) if chunk is None else min(chunk, max(T, 1))
    X, _, _ = _prepare(xs, mask, None)  # ids at padding set in range
    Y = _time_major(ys)
    dh_final = jax.tree.map(jnp.zeros_like, h0) if dh_final is None else dh_final
    if T == 0:  # no steps: E = 0, zero gradients, dh0 = dh_final, h_final = h0
        zero = jax.tree.map(jnp.zeros_like, params)
        return jnp.zeros((), params.V.dtype), zero, dh_final, h0
    n_real = B * T if mask is None else jnp.sum(mask)
    scale = jnp.ones((), params.V.dtype)
    if reduction == "mean":
        scale = 1 / jnp.maximum(n_real, 1).astype(params.V.dtype)
    views = _views(T, mask, resets, options.truncate)
    r0 = jax.tree.map(jnp.zeros_like, h0) if zero_resets else h0  # what a reset restores
    if params.bidirectional:
        E, grads, dV, dc, dh0, finals = _bidirectional(
            ctx, params, X, Y, h0, dh_final, views, scale, cs, r0
        )
        layers, reverse = tuple(g[0] for g in grads), tuple(g[1] for g in grads)
    else:
        m, e, k = views[0]
        H, L = params.layers[0].U.shape[1], params.num_layers
        out = _Out(params.V, params.c, scale, 0, H, None)
        cells_of = lambda s: tuple(pick(s, i) for i in range(L))  # noqa: E731
        E, grads, dV, dc, dh0, finals, _ = _sweep(
            ctx, params.layers, cells_of(h0), cells_of(dh_final), (X, Y, m, e, k, None, None),
            cs, out, False, r0s=cells_of(r0) if zero_resets else None,
        )  # fmt: skip
        layers, reverse = tuple(Layer(*g) for g in grads), ()
        dh0, finals = stack(dh0), stack(finals)
    grads = DeepParams(layers=layers, reverse_layers=reverse, V=dV, c=dc)
    return E, grads, dh0, finals
