r"""The two steps every driver scans, written once around a cell (``docs/math.md`` §4, §7).

A driver (the seed's chunked BPTT, the stacked and bidirectional backward, the
composable recurrence, the Pallas kernels) runs :func:`forward_step` forward in its
view of time and :func:`delta_step` backward; the cell (:mod:`.cell`, :mod:`.lstm`,
:mod:`.gru`) supplies the equations, these add what is the same for every cell. A
state is a pytree (``h``, or ``(h, c)``), and so is the gradient carried back:

- **resets**: where ``e_t`` is set, the state the step reads is ``s0`` instead of
  the previous one; backward, the gradient :math:`\gamma_t` it hands on then goes to
  ``s0`` (accumulated in ``acc``), not to step t − 1;
- **padding** (``m_t`` off): the state stays frozen (the step's state is the one it
  read), :math:`\delta_t = 0`, and :math:`\gamma` passes through unchanged;
- **truncation** (``k_t`` off): no gradient enters from the step processed before
  (a window boundary);
- **clipping** (:func:`clip`): rescaled per sequence to norm ≤ θ, where the cell says
  (the vanilla cell's :math:`\delta_t`; the gated cells' state gradients).

``None`` for ``m_t``, ``e_t``, ``k_t`` or ``acc`` means "none of those": the step is
then exactly the cell's equation, so the seed's fast path pays nothing for them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def clip(tree, theta: float):
    r"""Each row rescaled to norm ≤ θ: :math:`v\,θ/\|v\|_2` where :math:`\|v\|_2 > θ`,
    untouched elsewhere; ``tree`` is an array ``(B, ·)`` or a pytree of them (one norm
    over all its leaves' rows)."""
    leaves = jax.tree.leaves(tree)
    norm = jnp.sqrt(sum(jnp.sum(a * a, axis=-1, keepdims=True) for a in leaves))  # (B, 1)
    over = norm > theta
    factor = theta / jnp.where(over, norm, 1)
    return jax.tree.map(lambda a: jnp.where(over, a * factor, a), tree)


def where(flag, a, b):
    """``jnp.where`` over matching pytrees (a flag ``(B, 1)`` broadcast to every leaf)."""
    return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def forward_step(cell, mm, R, s0=None):
    r"""``step(s_prev, a_t, m_t=None, e_t=None) -> trace_t``: one step of the forward
    recursion (the state is ``cell.state(trace_t)``).

    Args:
      cell: the cell (:mod:`.cell`).
      mm: the product; ``R``: ``cell.weights(layer, cast)``.
      s0: the state a reset restores (unused without resets).
    """

    def step(s_prev, a_t, m_t=None, e_t=None):
        s_in = s_prev if e_t is None else where(e_t, s0, s_prev)  # reset: read s0
        trace = cell.forward(mm, R, s_in, a_t)
        if m_t is None:
            return trace
        return cell.with_state(trace, where(m_t, cell.state(trace), s_in))  # padding: frozen

    return step


def delta_step(cell, mm, U, clip_delta=None):
    r"""``step(g, acc, G_t, trace_t, s_in_t=None, m_t=None, e_t=None, k_t=None)
    -> (γ_t, acc, δ_t)``.

    ``cell.delta`` of :math:`G_t + \gamma_{t+1}` (``g``, zero across a truncation cut),
    clipped to norm ≤ ``clip_delta`` when given; :math:`\gamma_t` goes back to step
    t − 1, or into ``acc`` (the gradient of ``s0``) at a reset. ``s_in_t``: the state
    the step read, for cells that read it (``cell.reads_state_in``).

    Args:
      cell: the cell (:mod:`.cell`).
      mm: the product; ``U``: cast for it.
      clip_delta: ``None`` or θ > 0.
    """
    clipper = None if clip_delta is None else functools.partial(clip, theta=clip_delta)

    def step(g, acc, G_t, trace_t, s_in_t=None, m_t=None, e_t=None, k_t=None):
        if k_t is not None:  # truncation: no gradient from the next window
            g = jax.tree.map(lambda a: jnp.where(k_t, a, 0), g)
        total = cell.total(g, G_t)
        g_in, delta = cell.delta(mm, U, total, trace_t, s_in_t, clipper)
        if m_t is not None:
            delta = jnp.where(m_t, delta, 0)
            g_in = where(m_t, g_in, total)  # padding: the state was frozen, pass γ through
        if e_t is not None:  # a reset: the step read s0
            acc = jax.tree.map(lambda a, x: a + jnp.where(e_t, x, 0), acc, g_in)
            g_in = jax.tree.map(lambda x: jnp.where(e_t, 0, x), g_in)
        return g_in, acc, delta

    return step


def pick(state, i):
    """Cell ``i``'s state of a stacked one (``(L*D, B, H)`` leaves -> ``(B, H)``)."""
    return jax.tree.map(lambda a: a[i], state)


def stack(states):
    """Per-cell states stacked into one, ``(L*D, B, H)`` leaves (the inverse of
    :func:`pick`)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *states)
