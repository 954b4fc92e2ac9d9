r"""The LSTM cell, as PyTorch's ``nn.LSTM`` defines it: its equations, written once
(``docs/math.md``, the LSTM sections).

Gates in PyTorch's order i, f, g, o; ``U (4H, H)`` (``weight_hh``), ``W (4H, D_in)``
(``weight_ih``), ``b (4H,)`` (``bias_ih + bias_hh``: the two only ever add):

.. math::

    s_t &= U h_{t-1} + W x_t + b = [s^i; s^f; s^g; s^o],\qquad
    i, f, o = \sigma(s^{i,f,o}),\quad g = \tanh s^g \\
    c_t &= f \odot c_{t-1} + i \odot g,\qquad h_t = o \odot \tanh c_t

The state is the pair :math:`(h_t, c_t)`; two gradients are carried back,
:math:`\gamma^h_{t+1} = \partial E/\partial h_t` and :math:`\gamma^c_{t+1} =
\partial E/\partial c_t` through step t + 1. With :math:`\bar h = G_t +
\gamma^h_{t+1}` and :math:`\bar c = \gamma^c_{t+1} + \bar h \odot o \odot (1 -
\tanh^2 c_t)` (the complete gradients of the step's state):

.. math::

    \delta^o &= \bar h \odot \tanh c_t \odot o(1-o),\quad
    \delta^i = \bar c \odot g \odot i(1-i),\quad
    \delta^f = \bar c \odot c_{t-1} \odot f(1-f),\quad
    \delta^g = \bar c \odot i \odot (1-g^2) \\
    \gamma^h_t &= U^\top \delta_t,\qquad \gamma^c_t = \bar c \odot f_t
    \quad(\partial c_t/\partial c_{t-1} = \mathrm{diag}\, f_t)

with :math:`\delta_t = [\delta^i; \delta^f; \delta^g; \delta^o]`, so
:math:`\partial E/\partial U = \sum_t \delta_t \otimes h_{t-1}`, :math:`\partial
E/\partial W = \sum_t \delta_t \otimes x_t`, :math:`\partial E/\partial b = \sum_t
\delta_t`. ``clip_delta`` rescales the pair :math:`(\bar h, \bar c)` of each sequence
(one norm over its 2H numbers) to norm ≤ θ before the gates' δ are formed.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .cell import project_inputs


class LSTMTrace(NamedTuple):
    """What one LSTM step leaves for the backward pass, each ``(B, ·)``."""

    h: jax.Array  # (B, H)  h_t
    c: jax.Array  # (B, H)  c_t
    gates: jax.Array  # (B, 4H) [i, f, g, o] after their activations


@dataclasses.dataclass(frozen=True)
class LSTMCell:
    r"""The LSTM cell (PyTorch's ``nn.LSTM``); state ``(h, c)``, trace :class:`LSTMTrace`.

    A cell has no fields of its own: the forget-gate bias is an initialisation
    (:func:`bptt_jax.init_params`'s ``forget_bias``), part of ``b``.
    """

    name: ClassVar[str] = "lstm"
    gates: ClassVar[int] = 4
    reads_state_in: ClassVar[bool] = True  # δ^f reads c_{t-1}
    state_parts: ClassVar[tuple[str, ...]] = ("h", "c")

    def project(self, layer, X: jax.Array, mm, cast) -> jax.Array:
        """:math:`W x_t + b` for every step, ``(T, B, 4H)``."""
        return project_inputs(layer, X, mm, cast, layer.b)

    def weights(self, layer, cast):
        return cast(layer.U.T)  # (H, 4H)

    def forward(self, mm, UT, s_in, a_t) -> LSTMTrace:
        r"""One step: ``(h_in, c_in) (B, H) each, a_t (B, 4H) -> LSTMTrace``."""
        h_in, c_in = s_in
        H = h_in.shape[-1]
        s = mm(h_in, UT) + a_t  # (B, 4H)
        sig = jax.nn.sigmoid(s)
        i, f, o = sig[..., :H], sig[..., H : 2 * H], sig[..., 3 * H :]
        g = jnp.tanh(s[..., 2 * H : 3 * H])
        c = f * c_in + i * g
        h = o * jnp.tanh(c)
        return LSTMTrace(h, c, jnp.concatenate([i, f, g, o], axis=-1))

    def state(self, trace: LSTMTrace):
        return (trace.h, trace.c)

    def output(self, trace: LSTMTrace):
        return trace.h

    def with_state(self, trace: LSTMTrace, state) -> LSTMTrace:
        return trace._replace(h=state[0], c=state[1])

    def h_of(self, state):
        return state[0]

    def zero_state(self, shape, dtype):
        return (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def total(self, g, G_t):
        r""":math:`(G_t + \gamma^h_{t+1}, \gamma^c_{t+1})`."""
        return (G_t + g[0], g[1])

    def delta(self, mm, U, total, trace: LSTMTrace, s_in, clip=None):
        r"""``((γ^h_t, γ^c_t), δ_t (B, 4H))`` of the module doc; ``U`` cast for the product."""
        dh, dc = total
        H = dh.shape[-1]
        q = trace.gates
        i, f, g, o = q[..., :H], q[..., H : 2 * H], q[..., 2 * H : 3 * H], q[..., 3 * H :]
        tc = jnp.tanh(trace.c)
        dc = dc + dh * o * (1 - tc * tc)  # c̄: through h_t = o ⊙ tanh c_t as well
        if clip is not None:
            dh, dc = clip((dh, dc))
        d_i = dc * g * i * (1 - i)
        d_f = dc * s_in[1] * f * (1 - f)
        d_g = dc * i * (1 - g * g)
        d_o = dh * tc * o * (1 - o)
        delta = jnp.concatenate([d_i, d_f, d_g, d_o], axis=-1)
        return (mm(delta, U), dc * f), delta

    def u_rows(self, delta):
        return delta

    def w_rows(self, delta):
        return delta
