r"""Backpropagation through time, derived by hand (the seed's §5).

No autodiff here: every gradient is a formula of ``docs/math.md`` §3, §4.

.. math::

    r_t &= \hat y_t - y_t \\
    \partial E/\partial V &= \textstyle\sum_t r_t \otimes h_t,\qquad
    \partial E/\partial c = \textstyle\sum_t r_t \\
    \delta_t &= (V^\top r_t + U^\top \delta_{t+1}) \odot f'(h_t),
        \qquad \delta_{T+1} = 0 \\
    \partial E/\partial U &= \textstyle\sum_t \delta_t \otimes h_{t-1},\qquad
    \partial E/\partial W = \textstyle\sum_t \delta_t \otimes x_t,\qquad
    \partial E/\partial b = \textstyle\sum_t \delta_t \\
    \partial E/\partial h_0 &= U^\top \delta_1

where :math:`\delta_t = \partial E/\partial s_t = \sum_{t' \ge t} \delta_t^{(t')}`
sums the seed's per-loss deltas. Only the :math:`h` and :math:`\delta`
recursions are sequential.

The seed's model is the one-layer, one-direction case of the stacked models, and it
runs through the same chunked driver (:func:`bptt_jax.core.deep.deep_bptt_core`,
:mod:`bptt_jax.core.backward`): measured, that driver is as fast as the separate
single-layer one it replaced (``benchmarks/README.md``). The backward pass walks the
steps in chunks of ``chunk`` steps, last chunk first: for a chunk it computes the logits,
:math:`r_t`, :math:`V^\top r_t`, :math:`\partial E/\partial V` and (after the
chunk's part of the :math:`\delta` recursion) :math:`\partial E/\partial U`
as batched products over its ``chunk * B`` rows, and
:math:`\partial E/\partial W` for token ids as a scatter-add of
:math:`\delta_t` into column :math:`x_t`. So it never holds a ``(T, B, C)``
array, and of size ``T * B * H`` only the forward's :math:`h_t`; :math:`f'`
(for tanh :math:`1 - h_t^2`) is recomputed from them inside the scan. With
``recompute=True`` even the :math:`h_t` are kept only at chunk boundaries.

Truncation (``truncate=τ``) cuts the gradient every τ steps, as character
RNNs are trained on long text (k1 = k2 = τ): :math:`U^\top \delta_{t+1}` does
not flow into step :math:`t` when :math:`t` is a multiple of τ, so each chunk
of τ steps back-propagates within itself only.
"""

from __future__ import annotations

import functools

import jax

from .deep import deep_bptt_core
from .options import DEFAULT, Options
from .params import Params, from_deep, to_deep
from .steps import pick


@functools.partial(jax.jit, static_argnames=("options",))
def bptt_core(
    params: Params,
    xs: jax.Array,
    ys: jax.Array,
    h0: jax.Array,
    dh_T: jax.Array | None = None,
    *,
    options: Options = DEFAULT,
):
    r"""Hand BPTT of the seed's model on the batched layout; no checks.

    The one-layer case of :func:`~bptt_jax.core.deep.deep_bptt_core`: the forward pass
    stores :math:`h_1 \ldots h_T` (or, with ``recompute``, only the state entering
    each chunk); the backward pass walks the steps in chunks of ``chunk`` steps, last
    chunk first, computing each chunk's logits, :math:`\hat y_t`, :math:`r_t` and
    :math:`V^\top r_t` only when it gets there, so no ``(T, B, C)`` logits and no
    ``(T, B, H)`` array besides the :math:`h_t` are ever held.

    Args:
      params: the model.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      ys: ``(B, T)`` class ids or ``(B, T, C)`` probabilities.
      h0: ``(B, H)``.
      dh_T: ``(B, H)``, the gradient of a later loss with respect to this
        chunk's final state :math:`h_T`, or ``None`` (zero). It enters the
        recursion as :math:`\delta_T = (V^\top r_T + dh_T) \odot f'(h_T)`.
      options: the cell and the backward's options
        (:class:`~bptt_jax.core.options.Options`; see :func:`bptt_jax.bptt`).

    Returns:
      ``(E, grads, dh0, h_T)``: the loss, the gradients as :class:`Params`,
      :math:`\partial E/\partial h_0 = U^\top \delta_1` ``(B, H)``, and the
      final state :math:`h_T` ``(B, H)`` (to carry into the next chunk of a
      long stream).
    """
    lift = functools.partial(jax.tree.map, lambda a: a[None])  # one cell's state, stacked
    dh = None if dh_T is None else lift(dh_T)
    E, grads, dh0, h_T = deep_bptt_core(to_deep(params), xs, ys, lift(h0), dh_final=dh,
                                        options=options)  # fmt: skip
    return E, from_deep(grads), pick(dh0, 0), pick(h_T, 0)
