r"""The gradient that reaches each state, for every cell (``docs/math.md`` §6, §13).

For the loss :math:`E_t` of one step and every earlier step k, the hand recursion
of the cell (:func:`bptt_jax.core.steps.delta_step`, no autodiff) gives the gradient
of the state at k: :math:`\partial E_t/\partial h_k` for every cell, and for the LSTM
also :math:`\partial E_t/\partial c_k` through :math:`c_{k+1}` (the cell-state path
of §10, whose factors are the forget gates :math:`f_j`). :math:`\|\partial E_t/
\partial h_k\|` against the distance t − k is the quantity §6 bounds for the vanilla
cell (there :math:`\partial E_t/\partial h_k = U^\top\delta^{(t)}_{k+1}` for k < t)
and §13 discusses for the gated ones: measured on one batch, the three cells can be
set side by side. Pure: no I/O.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..core.backward import entering, make_ctx, run_cell
from ..core.cells import cell_named
from ..core.init import DEFAULT_SCHEME, Scheme
from ..core.losses import log_softmax, residual
from ..core.options import DEFAULT, Options
from ..core.params import DeepParams, init_params, to_deep
from ..core.steps import delta_step, pick
from .diagnostics import _decay_by_distance, _fit_rate


class StateFlow(NamedTuple):
    r"""What :func:`state_flow_core` measured on one batch (``T`` steps).

    ``norms`` is ``(T, T)`` indexed ``[t-1, k-1]`` (loss t, step k), zero for k > t:
    :math:`\|\partial E_t/\partial h_k\|_2`, mean over the batch; ``decay`` ``(T,)``
    by distance d = t − k (a ratio of sums over the losses that reach that far, as
    :func:`bptt_jax.gradient_flow`'s), ``decay_rate`` the fitted per-step factor.
    ``c_norms``/``c_decay``: the same for :math:`\partial E_t/\partial c_k` through
    :math:`c_{k+1}` (the LSTM; ``None`` for the other cells).
    """

    norms: jax.Array
    decay: jax.Array
    decay_rate: jax.Array
    c_norms: jax.Array | None = None
    c_decay: jax.Array | None = None


@functools.partial(jax.jit, static_argnames=("options",))
def state_flow_core(params: DeepParams, xs, ys, h0, *, options: Options = DEFAULT) -> StateFlow:
    """:class:`StateFlow` of a one-layer, one-direction model; batched layout
    (``h0`` ``(1, B, H)`` leaves), summed loss, no checks."""
    cell, layer = options.cell, params.layers[0]
    ctx = make_ctx(options, params.V.dtype)
    X, Y, s0 = jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1), pick(h0, 0)
    _, traces = run_cell(ctx, layer, X, s0, s0, None, None)
    hs = cell.output(traces)  # (T, B, H)
    r = residual(log_softmax(ctx.mm(hs, params.V.T) + params.c), Y)  # (T, B, C)
    Vr = ctx.mm(r, params.V)  # (T, B, H): what E_t sends into h_t
    s_in = entering(cell, traces, s0, s0, None) if cell.reads_state_in else None
    step = delta_step(cell, ctx.mm, ctx.cast(layer.U))
    T = hs.shape[0]

    def one_loss(t):  # every ∂E_t/∂(state at k), k = T..1
        def scan_step(g, inputs):
            k, trace_k, s_in_k = inputs
            G_k = jnp.where(k == t, Vr[t], 0)
            total = cell.total(g, G_k)  # the gradient of the state at k
            g, _, _ = step(g, None, G_k, trace_k, s_in_k)
            return g, total

        zero = jax.tree.map(jnp.zeros_like, s0)
        _, totals = lax.scan(scan_step, zero, (jnp.arange(T), traces, s_in), reverse=True)
        return jax.tree.map(lambda a: jnp.mean(jnp.linalg.norm(a, axis=-1), axis=-1), totals)

    parts = jax.tree.leaves(lax.map(one_loss, jnp.arange(T)))  # each (T_t, T_k)
    parts = [jnp.tril(p) for p in parts]  # k > t: no signal from E_t
    h_norms = parts[0]
    decay = _decay_by_distance(h_norms)
    c = (parts[1], _decay_by_distance(parts[1], h_norms)) if len(parts) > 1 else (None, None)
    return StateFlow(h_norms, decay, _fit_rate(decay), *c)


#: The models ``bptt-jax diagnose`` sets side by side (``docs/math.md`` §13): label,
#: cell, the LSTM's forget-gate bias (0 is PyTorch's centre; 1 the training runs').
COMPARED_CELLS = (("rnn", "rnn", 0.0), ("lstm, forget bias 0", "lstm", 0.0),
                  ("lstm, forget bias 1", "lstm", 1.0), ("gru", "gru", 0.0))  # fmt: skip


def cell_flows(
    key: jax.Array, xs, ys, *, vocab_size: int, hidden_size: int, activation: str = "tanh",
    scheme: Scheme = DEFAULT_SCHEME, dtype=jnp.float32, cells=COMPARED_CELLS,
) -> list[tuple[str, StateFlow]]:  # fmt: skip
    """``(label, StateFlow)`` of each of ``cells`` (:data:`COMPARED_CELLS`) on one batch
    ``xs``, ``ys`` ``(B, T)`` ids, from the zero state: every model drawn from the same
    ``key`` by the same ``scheme`` (its ``init`` and ``spectral_radius``; the cell and
    forget bias from ``cells``), in ``dtype``. The vanilla cell's ``activation`` is
    named in its label."""
    B, flows = xs.shape[0], []
    for label, name, forget_bias in cells:
        cell = cell_named(name, activation if name == "rnn" else "tanh")
        drawn = scheme._replace(cell=name, forget_bias=forget_bias)
        params = init_params(key, vocab_size, hidden_size, dtype=dtype, scheme=drawn)
        h0 = cell.zero_state((1, B, hidden_size), dtype)
        flow = state_flow_core(to_deep(params), xs, ys, h0, options=Options(cell=cell))
        flows.append((f"rnn ({activation})" if name == "rnn" else label, flow))
    return flows
