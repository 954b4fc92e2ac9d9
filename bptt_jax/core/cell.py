r"""The seed's vanilla cell: its forward step and its δ step, the only place they are written.

.. math::

    s_t = U h^{\mathrm{in}}_t + a_t,\quad a_t = W x_t + b,\quad h_t = f(s_t)

    \delta_t = \partial E/\partial s_t = (G_t + \gamma_{t+1}) \odot f'(h_t),\qquad
    \gamma_t = \partial E/\partial h^{\mathrm{in}}_t = U^\top \delta_t

with :math:`h^{\mathrm{in}}_t` the state the step reads (:math:`h_{t-1}`, or
:math:`h_0` at the first step and at resets), :math:`G_t` the gradient reaching
:math:`h_t` from above (:math:`V^\top r_t` under the output layer) and
:math:`\gamma_{t+1}` the one from the next step. :math:`f'` is written from
:math:`h_t` (:mod:`.activations`), so the backward pass keeps only the states.

A cell is a frozen, hashable value (a static argument of the jitted cores, inside
:class:`~bptt_jax.core.options.Options`) with four methods:

- ``project(layer, X, mm, cast)``: :math:`a_t` for every step at once (batched work,
  outside the recursion);
- ``forward(mm, UT, h_in, a_t)``: one step of the forward recursion;
- ``delta(total, h_t)``: :math:`\delta_t` from :math:`G_t + \gamma_{t+1}`;
- ``back(mm, U, delta)``: :math:`\gamma_t = U^\top\delta_t`, the gradient handed to
  the state the step read.

The drivers (:mod:`.steps` and the modules that scan them) apply padding, resets,
truncation and δ clipping around these, once for every cell; the Pallas kernels
(:mod:`.kernels`) call the same methods inside their loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .activations import get_activation


class RNNCell(NamedTuple):
    r"""The vanilla cell :math:`h_t = f(U h_{t-1} + W x_t + b)` of the source (seed §2).

    Attributes:
      activation: the name of :math:`f` (``"tanh"``, the seed's; ``"sigmoid"``,
        ``"relu"``).
    """

    activation: str = "tanh"

    @property
    def f(self):
        """:math:`f`, ``s -> h``."""
        return get_activation(self.activation).f

    @property
    def df_from_h(self):
        """:math:`f'(s)` written from :math:`h = f(s)`."""
        return get_activation(self.activation).df_from_h

    def project(self, layer, X: jax.Array, mm, cast) -> jax.Array:
        r""":math:`a_t = W x_t + b` for every step: ``X`` time-major ``(T, B)`` ids (a
        gather of columns of ``W``; an id out of range gives NaN) or ``(T, B, D_in)``."""
        if jnp.issubdtype(X.dtype, jnp.integer):
            return jnp.take(layer.W.T, X, axis=0, mode="fill") + layer.b  # (T, B, H)
        return mm(X, cast(layer.W.T)) + layer.b  # (T, B, H)

    def forward(self, mm, UT: jax.Array, h_in: jax.Array, a_t: jax.Array) -> jax.Array:
        r""":math:`h_t = f(U h^{\mathrm{in}}_t + a_t)`: ``(B, H), (B, H) -> (B, H)``
        (``UT`` is :math:`U^\top`, cast for the product)."""
        return self.f(mm(h_in, UT) + a_t)

    def delta(self, total: jax.Array, h_t: jax.Array) -> jax.Array:
        r""":math:`\delta_t = (G_t + \gamma_{t+1}) \odot f'(h_t)`; ``total`` is the sum in
        brackets, ``(B, H)``."""
        return total * self.df_from_h(h_t)

    def back(self, mm, U: jax.Array, delta: jax.Array) -> jax.Array:
        r""":math:`\gamma_t = U^\top \delta_t` (``U`` cast for the product): ``(B, H)``."""
        return mm(delta, U)
