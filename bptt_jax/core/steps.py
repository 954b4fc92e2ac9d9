r"""The two steps every driver scans, written once around a cell (``docs/math.md`` §4, §7).

A driver (the seed's chunked BPTT, the stacked and bidirectional backward, the
composable recurrence, the Pallas kernels) runs :func:`forward_step` forward in its
view of time and :func:`delta_step` backward; the cell (:mod:`.cell`) supplies the
equations, these add what is the same for every cell:

- **resets**: where ``e_t`` is set, the state the step reads is ``h0`` instead of
  :math:`h_{t-1}`; backward, the gradient :math:`\gamma_t` it hands on then goes to
  ``h0`` (accumulated in ``acc``), not to step t − 1;
- **padding** (``m_t`` off): the state stays frozen (:math:`h_t = h^{\mathrm{in}}_t`),
  :math:`\delta_t = 0`, and :math:`\gamma` passes through unchanged;
- **truncation** (``k_t`` off): no gradient enters from the step processed before
  (a window boundary);
- **δ clipping** (:func:`clip`): each sequence's :math:`\delta_t` rescaled to norm ≤ θ.

``None`` for ``m_t``, ``e_t``, ``k_t`` or ``acc`` means "none of those": the step is
then exactly the cell's equation, so the seed's fast path pays nothing for them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def clip(delta: jax.Array, theta: float) -> jax.Array:
    r"""Each row's :math:`\delta_t` rescaled to norm ≤ θ: :math:`\delta\,θ/\|\delta\|_2`
    where :math:`\|\delta\|_2 > θ`, untouched elsewhere. ``(B, H) -> (B, H)``."""
    norm = jnp.sqrt(jnp.sum(delta * delta, axis=-1, keepdims=True))  # (B, 1)
    over = norm > theta
    return jnp.where(over, delta * (theta / jnp.where(over, norm, 1)), delta)


def forward_step(cell, mm, UT, h0=None):
    r"""``step(h_prev, a_t, m_t=None, e_t=None) -> h_t``: one step of the forward recursion.

    Args:
      cell: the cell (:mod:`.cell`).
      mm: the product; ``UT``: :math:`U^\top`, cast for it.
      h0: ``(B, H)``, the state a reset restores (unused without resets).
    """

    def step(h_prev, a_t, m_t=None, e_t=None):
        h_in = h_prev if e_t is None else jnp.where(e_t, h0, h_prev)  # reset: read h0
        h = cell.forward(mm, UT, h_in, a_t)
        return h if m_t is None else jnp.where(m_t, h, h_in)  # padding: frozen

    return step


def delta_step(cell, mm, U, clip_delta=None):
    r"""``step(g, acc, G_t, h_t, m_t=None, e_t=None, k_t=None) -> (γ_t, acc, δ_t)``.

    :math:`\delta_t = \mathrm{cell.delta}(G_t + g)` with ``g`` = :math:`\gamma_{t+1}`
    (zero across a truncation cut), clipped to norm ≤ ``clip_delta`` when given;
    :math:`\gamma_t = U^\top\delta_t` goes back to step t − 1, or into ``acc`` (the
    gradient of ``h0``) at a reset.

    Args:
      cell: the cell (:mod:`.cell`).
      mm: the product; ``U``: cast for it.
      clip_delta: ``None`` or θ > 0.
    """

    def step(g, acc, G_t, h_t, m_t=None, e_t=None, k_t=None):
        if k_t is not None:
            g = jnp.where(k_t, g, 0)  # truncation: no gradient from the next window
        total = G_t + g
        delta = cell.delta(total, h_t)  # δ_t = (G_t + γ_{t+1}) ⊙ f'(h_t)
        if m_t is not None:
            delta = jnp.where(m_t, delta, 0)
        if clip_delta is not None:
            delta = clip(delta, clip_delta)
        g_in = cell.back(mm, U, delta)  # ∂E/∂h_in_t = Uᵀ δ_t
        if m_t is not None:
            g_in = jnp.where(m_t, g_in, total)  # padding: h_t = h_in_t, pass γ through
        if e_t is not None:  # a reset: h_in_t was h0
            acc = acc + jnp.where(e_t, g_in, 0)
            g_in = jnp.where(e_t, 0, g_in)
        return g_in, acc, delta

    return step
