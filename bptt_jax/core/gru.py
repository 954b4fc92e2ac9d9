r"""The GRU cell, as PyTorch's ``nn.GRU`` defines it: its equations, written once
(``docs/math.md``, the GRU sections).

Gates in PyTorch's order r, z, n; ``U (3H, H)`` (``weight_hh``), ``W (3H, D_in)``
(``weight_ih``) and ``b (4H,) = [b_ir + b_hr; b_iz + b_hz; b_in; b_hn]``: ``b_hn``
sits inside :math:`r \odot (\cdot)`, so it is a parameter of its own.

.. math::

    r &= \sigma(W_r x_t + U_r h_{t-1} + b_r),\qquad
    z = \sigma(W_z x_t + U_z h_{t-1} + b_z) \\
    q_t &= U_n h_{t-1} + b_{hn},\qquad n = \tanh(W_n x_t + b_{in} + r \odot q_t),\qquad
    h_t = (1 - z) \odot n + z \odot h_{t-1}

Backward, with :math:`\bar h = G_t + \gamma_{t+1}`:

.. math::

    \delta^n &= \bar h \odot (1 - z) \odot (1 - n^2),\quad
    \delta^z = \bar h \odot (h_{t-1} - n) \odot z(1 - z),\quad
    \varepsilon = \delta^n \odot r,\quad
    \delta^r = \delta^n \odot q_t \odot r(1 - r) \\
    \gamma_t &= \bar h \odot z + U^\top [\delta^r; \delta^z; \varepsilon]

so :math:`\partial E/\partial U = \sum_t [\delta^r;\delta^z;\varepsilon] \otimes
h_{t-1}`, :math:`\partial E/\partial W = \sum_t [\delta^r;\delta^z;\delta^n] \otimes
x_t` (also what goes down to the layer below) and :math:`\partial E/\partial b =
\sum_t [\delta^r;\delta^z;\delta^n;\varepsilon]`: ``δ_t`` is ``(B, 4H)`` in ``b``'s
order. ``clip_delta`` rescales each sequence's :math:`\bar h` to norm ≤ θ.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .cell import project_inputs


class GRUTrace(NamedTuple):
    """What one GRU step leaves for the backward pass."""

    h: jax.Array  # (B, H)  h_t
    gates: jax.Array  # (B, 3H) [r, z, n] after their activations
    q: jax.Array  # (B, H)  U_n h_{t-1} + b_hn


@dataclasses.dataclass(frozen=True)
class GRUCell:
    """The GRU cell (PyTorch's ``nn.GRU``); state ``h``, trace :class:`GRUTrace`."""

    name: ClassVar[str] = "gru"
    gates: ClassVar[int] = 3
    reads_state_in: ClassVar[bool] = True  # δ^z and the direct path read h_{t-1}
    state_parts: ClassVar[tuple[str, ...]] = ("h",)

    def project(self, layer, X: jax.Array, mm, cast) -> jax.Array:
        """:math:`W x_t + [b_r; b_z; b_{in}]` for every step, ``(T, B, 3H)``."""
        H = layer.U.shape[1]
        return project_inputs(layer, X, mm, cast, layer.b[: 3 * H])

    def weights(self, layer, cast):
        """``(Uᵀ (H, 3H) cast, b_hn (H,))``."""
        H = layer.U.shape[1]
        return cast(layer.U.T), layer.b[3 * H :]

    def forward(self, mm, R, h_in, a_t) -> GRUTrace:
        """One step: ``h_in (B, H), a_t (B, 3H) -> GRUTrace``."""
        UT, b_hn = R
        H = h_in.shape[-1]
        u = mm(h_in, UT)  # (B, 3H)
        rz = jax.nn.sigmoid(a_t[..., : 2 * H] + u[..., : 2 * H])
        r, z = rz[..., :H], rz[..., H:]
        q = u[..., 2 * H :] + b_hn
        n = jnp.tanh(a_t[..., 2 * H :] + r * q)
        h = (1 - z) * n + z * h_in
        return GRUTrace(h, jnp.concatenate([rz, n], axis=-1), q)

    def state(self, trace: GRUTrace):
        return trace.h

    def output(self, trace: GRUTrace):
        return trace.h

    def with_state(self, trace: GRUTrace, state) -> GRUTrace:
        return trace._replace(h=state)

    def h_of(self, state):
        return state

    def zero_state(self, shape, dtype):
        return jnp.zeros(shape, dtype)

    def total(self, g, G_t):
        return G_t + g

    def delta(self, mm, U, dh, trace: GRUTrace, h_in, clip=None):
        r"""``(γ_t, δ_t (B, 4H))`` of the module doc; ``U`` cast for the product."""
        if clip is not None:
            dh = clip(dh)
        H = dh.shape[-1]
        gt = trace.gates
        r, z, n = gt[..., :H], gt[..., H : 2 * H], gt[..., 2 * H :]
        d_n = dh * (1 - z) * (1 - n * n)
        d_z = dh * (h_in - n) * z * (1 - z)
        eps = d_n * r
        d_r = d_n * trace.q * r * (1 - r)
        g_in = dh * z + mm(jnp.concatenate([d_r, d_z, eps], axis=-1), U)
        return g_in, jnp.concatenate([d_r, d_z, d_n, eps], axis=-1)

    def u_rows(self, delta):
        """``[δ^r; δ^z; ε]``: the columns multiplying :math:`h_{t-1}`."""
        H = delta.shape[-1] // 4
        return jnp.concatenate([delta[..., : 2 * H], delta[..., 3 * H :]], axis=-1)

    def w_rows(self, delta):
        """``[δ^r; δ^z; δ^n]``: the columns multiplying :math:`x_t`."""
        H = delta.shape[-1] // 4
        return delta[..., : 3 * H]
