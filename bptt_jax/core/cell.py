r"""The cell contract, and the seed's vanilla cell: the only place its equations are written.

.. math::

    s_t = U h^{\mathrm{in}}_t + a_t,\quad a_t = W x_t + b,\quad h_t = f(s_t)

    \delta_t = \partial E/\partial s_t = (G_t + \gamma_{t+1}) \odot f'(h_t),\qquad
    \gamma_t = \partial E/\partial h^{\mathrm{in}}_t = U^\top \delta_t

with :math:`h^{\mathrm{in}}_t` the state the step reads (:math:`h_{t-1}`, or
:math:`h_0` at the first step and at resets), :math:`G_t` the gradient reaching
:math:`h_t` from above (:math:`V^\top r_t` under the output layer) and
:math:`\gamma_{t+1}` the one from the next step. :math:`f'` is written from
:math:`h_t` (:mod:`.activations`), so the backward pass keeps only the states.

**The contract.** A cell is a frozen, hashable value (a static argument of the jitted
cores, inside :class:`~bptt_jax.core.options.Options`): a frozen dataclass, so two
cells are equal only when of one class with equal fields. Its parameters are a
:class:`~bptt_jax.core.params.Layer` ``(U (G·H, H), W (G·H, D_in), b)`` with ``G``
:attr:`gates` row blocks; its *state* is a pytree of ``(B, H)`` arrays (``h``, or
``(h, c)`` for the LSTM) and each step leaves a *trace*, a pytree holding the state
and whatever the δ step needs (the LSTM's gates), stored for the backward pass. Its
methods:

- ``project(layer, X, mm, cast)``: :math:`a_t = W x_t + b` for every step at once
  (batched work, outside the recursion), ``(T, B, G·H)``;
- ``weights(layer, cast)``: what the forward step reads (:math:`U^\top`, cast);
- ``forward(mm, R, s_in, a_t) -> trace_t``: one step of the forward recursion;
- ``state(trace)``, ``output(trace)`` (:math:`h_t`), ``with_state(trace, s)``,
  ``h_of(state)``, ``zero_state(shape, dtype)``, ``state_parts``: the trace's and the
  state's parts;
- ``total(g, G_t)``: the gradient of the step's state, :math:`G_t` added to the
  carried :math:`\gamma_{t+1}`;
- ``delta(mm, U, total, trace_t, s_in_t, clip) -> (γ_t, δ_t)``: the step's
  :math:`\delta_t` (the rows of :math:`\partial E/\partial U, W, b`) and the
  gradient :math:`\gamma_t` of the state it read; ``clip`` (``None`` or a function
  of a pytree) is applied where the cell defines δ clipping;
- ``u_rows(δ)``, ``w_rows(δ)``: the columns of δ that multiply :math:`h^{\mathrm{in}}`
  into :math:`\partial E/\partial U`, and :math:`x_t` into :math:`\partial E/\partial W`
  (and go down to the layer below as :math:`W^\top\delta`); :math:`\partial E/\partial b
  = \sum_t \delta_t`.

The drivers (:mod:`.steps` and the modules that scan them) apply padding, resets,
truncation and δ clipping around these, once for every cell; the Pallas kernels
(:mod:`.kernels`) call the same methods inside their loops. The gated cells are
:mod:`.lstm` and :mod:`.gru`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .activations import get_activation


def project_inputs(layer, X: jax.Array, mm, cast, b: jax.Array) -> jax.Array:
    r""":math:`W x_t + b` for every step: ``X`` time-major ``(T, B)`` ids (a gather of
    columns of ``W``; an id out of range gives NaN) or ``(T, B, D_in)``."""
    if jnp.issubdtype(X.dtype, jnp.integer):
        return jnp.take(layer.W.T, X, axis=0, mode="fill") + b  # (T, B, G·H)
    return mm(X, cast(layer.W.T)) + b  # (T, B, G·H)


#: Largest vocabulary whose ∂E/∂W of token ids is accumulated rows first, as
#: :math:`(\partial E/\partial W)^\top` ``(K, G·H)`` transposed at the end (see
#: :func:`scatter_inputs`).
ROWS_FIRST_MAX_K = 1024


def rows_first(K: int) -> bool:
    """Whether ∂E/∂W of ``K`` token ids is accumulated as ``(K, G·H)`` (see
    :func:`scatter_inputs`)."""
    return K <= ROWS_FIRST_MAX_K


def scatter_inputs(acc: jax.Array, ids: jax.Array, rows: jax.Array, first: bool) -> jax.Array:
    r""":math:`\partial E/\partial W \mathrel{+}= \sum \delta \otimes x` for one-hot
    :math:`x`, the adjoint of :func:`project_inputs`' gather: row ``j`` of ``rows`` ``(n,
    G·H)`` added at token ``ids[j]`` (repeated ids accumulate).

    ``first`` (:func:`rows_first`): ``acc`` is ``(K, G·H)``, each δ a contiguous row,
    transposed once at the end; otherwise ``acc`` is ``dW (G·H, K)`` itself, each δ a
    column. XLA's CPU backend runs the rows faster at a small vocabulary (the seed's
    model at K = 65: 6-7 % of the whole backward) and the two alike at K = 10000, where
    the ``(K, G·H)`` buffer would be a second W (41 MB for the LSTM at H = 256:
    ``benchmarks/README.md``)."""
    ids = ids.reshape(-1)
    return acc.at[ids].add(rows) if first else acc.at[:, ids].add(rows.T)


def input_gradient_of_ids(ids: jax.Array, rows: jax.Array, K: int) -> jax.Array:
    """``dW (G·H, K)`` of token ``ids`` with δ ``rows`` ``(n, G·H)`` in one scatter."""
    first, GH = rows_first(K), rows.shape[-1]
    acc = jnp.zeros((K, GH) if first else (GH, K), rows.dtype)
    dW = scatter_inputs(acc, ids, rows, first)
    return dW.T if first else dW


@dataclasses.dataclass(frozen=True)
class RNNCell:
    r"""The vanilla cell :math:`h_t = f(U h_{t-1} + W x_t + b)` of the source (seed §2).

    State :math:`h` ``(B, H)``; trace :math:`h_t`. ``U (H, H)``, ``W (H, D_in)``,
    ``b (H,)``.

    Attributes:
      activation: the name of :math:`f` (``"tanh"``, the seed's; ``"sigmoid"``,
        ``"relu"``).
    """

    activation: str = "tanh"

    name: ClassVar[str] = "rnn"
    gates: ClassVar[int] = 1
    #: Whether ``delta`` reads the state the step read (``s_in_t``).
    reads_state_in: ClassVar[bool] = False
    #: The names of the state's parts, as the public keywords give them.
    state_parts: ClassVar[tuple[str, ...]] = ("h",)

    @property
    def f(self):
        """:math:`f`, ``s -> h``."""
        return get_activation(self.activation).f

    @property
    def df_from_h(self):
        """:math:`f'(s)` written from :math:`h = f(s)`."""
        return get_activation(self.activation).df_from_h

    def project(self, layer, X: jax.Array, mm, cast) -> jax.Array:
        r""":math:`a_t = W x_t + b` for every step, ``(T, B, H)``."""
        return project_inputs(layer, X, mm, cast, layer.b)

    def weights(self, layer, cast):
        """:math:`U^\\top`, cast for the products."""
        return cast(layer.U.T)

    def forward(self, mm, UT: jax.Array, h_in: jax.Array, a_t: jax.Array) -> jax.Array:
        r""":math:`h_t = f(U h^{\mathrm{in}}_t + a_t)`: ``(B, H), (B, H) -> (B, H)``."""
        return self.f(mm(h_in, UT) + a_t)

    def state(self, trace):
        return trace

    def output(self, trace):
        return trace

    def with_state(self, trace, state):
        return state

    def h_of(self, state):
        return state

    def zero_state(self, shape, dtype):
        """The zero state of ``shape`` (each part's) and ``dtype``."""
        return jnp.zeros(shape, dtype)

    def total(self, g, G_t):
        r""":math:`G_t + \gamma_{t+1}`."""
        return G_t + g

    def delta(self, mm, U, total, h_t, s_in=None, clip=None):
        r"""``(γ_t, δ_t)``: :math:`\delta_t = (G_t + \gamma_{t+1}) \odot f'(h_t)` (``total``
        the sum in brackets, ``(B, H)``), clipped by ``clip``; :math:`\gamma_t = U^\top
        \delta_t` (``U`` cast for the product)."""
        delta = total * self.df_from_h(h_t)
        if clip is not None:
            delta = clip(delta)
        return mm(delta, U), delta

    def u_rows(self, delta):
        return delta

    def w_rows(self, delta):
        return delta
