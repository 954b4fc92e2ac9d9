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
recursions are sequential. The backward pass walks the steps in chunks of
``chunk`` steps, last chunk first: for a chunk it computes the logits,
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
import jax.numpy as jnp
from jax import lax

from .kernels import backward_recursion, step_flags
from .losses import cross_entropy, log_softmax, residual, softmax_cross_entropy
from .options import DEFAULT, Options
from .params import Params
from .rnn import output_logits, recursion, time_major
from .schedule import default_chunk
from .steps import delta_step


def input_gradient(deltas: jax.Array, xs: jax.Array, K: int, precision=None) -> jax.Array:
    r""":math:`\partial E/\partial W = \sum_t \delta_t \otimes x_t`, ``(H, K)``.

    Args:
      deltas: :math:`\delta_t`, time-major ``(T, B, H)``.
      xs: ``(B, T)`` ids -- a scatter-add of each :math:`\delta_t` into
        column :math:`x_t` (repeated ids accumulate) -- or ``(B, T, K)``
        vectors, a batched outer-product sum.
      K: the vocabulary size.
      precision: the product's ``jax.lax.Precision`` (``None``: JAX's default).
    """
    H = deltas.shape[-1]
    if jnp.issubdtype(xs.dtype, jnp.integer):
        ids = xs.T.reshape(-1)  # (T*B,) in the order of deltas
        dWT = jnp.zeros((K, H), deltas.dtype).at[ids].add(deltas.reshape(-1, H))  # (K, H)
        return dWT.T
    return jnp.einsum("tbh,btk->hk", deltas, xs, precision=precision)


def output_layer(params: Params, hs: jax.Array, ys_tm: jax.Array, precision=None):
    r"""Loss and output-layer gradients for all steps at once.

    Args:
      params: the model.
      hs: :math:`h_t`, ``(T, B, H)``.
      ys_tm: labels, time-major: ids ``(T, B)`` or probabilities ``(T, B, C)``.
      precision: the products' ``jax.lax.Precision`` (``None``: JAX's default).

    Returns:
      ``(E, r, dV, dc)``: the loss, :math:`r_t = \partial E_t/\partial z_t`
      ``(T, B, C)`` (appendix 1), :math:`\sum_t r_t \otimes h_t` and
      :math:`\sum_t r_t`.
    """
    log_yhat = log_softmax(output_logits(params, hs, precision))  # (T, B, C)
    E = cross_entropy(log_yhat, ys_tm)
    r = residual(log_yhat, ys_tm)  # (T, B, C): ŷ_t − y_t
    dV = jnp.einsum("tbc,tbh->ch", r, hs, precision=precision)  # Σ_t r_t ⊗ h_t
    dc = jnp.sum(r, axis=(0, 1))  # Σ_t r_t
    return E, r, dV, dc


def truncation_mask(T: int, truncate: int | None):
    r"""``(T,)`` bool: where :math:`U^\top\delta_{t+1}` flows into step t (False at cuts).

    Step t (1-based) is the last of its chunk when t % τ == 0; the gradient
    from the next chunk is cut there. ``None`` when nothing is cut. The last
    step always keeps its incoming gradient (``dh_T``, given by the caller).
    """
    if truncate is None or truncate >= T:
        return None
    t = jnp.arange(1, T + 1)
    return (t % truncate != 0) | (t == T)


def _scan_step(options: Options, mm, U_):
    r"""The reverse scan's step: :func:`.steps.delta_step` of the cell on
    ``(g, (Vr_t, h_t[, keep_t])) -> (Uᵀ δ_t, δ_t)``, ``g`` the carried
    :math:`\partial E/\partial h_t` from the future (zeroed at truncation cuts)."""
    step = delta_step(options.cell, mm, U_, options.clip_delta)

    def scan_step(g, inputs):
        g, _, delta = step(g, None, *inputs[:2], k_t=inputs[2] if len(inputs) > 2 else None)
        return g, delta

    return scan_step


def _forward_chunks(run, split, h0, xs_tm, x_head, x_body, rem, recompute):
    """The forward pass of :func:`bptt_core` (``docs/math.md`` §2, §4 "chunks").

    Returns ``(h_T (B, H), starts (n, B, H), hs_head, hs_body)``: the final
    state, the state entering each full chunk, and the :math:`h_t` of the first
    (short) chunk ``(rem, B, H)`` and of the full chunks ``(n, cs, B, H)`` --
    both ``None`` with ``recompute``, which keeps only the ``starts``.
    """
    if recompute:  # keep only the state entering each full chunk
        h_mid = run(h0, x_head)[0] if rem else h0

        def forward_chunk(h, x_c):
            return run(h, x_c)[0], h

        h_T, starts = lax.scan(forward_chunk, h_mid, x_body)  # (B, H), (n, B, H)
        return h_T, starts, None, None
    T = xs_tm.shape[0]
    h_T, hs = run(h0, xs_tm) if T else (h0, None)  # (B, H), (T, B, H)
    if not T:
        return h_T, None, None, None
    hs_head, hs_body = split(hs)
    h_mid = hs_head[-1] if rem else h0
    starts = jnp.concatenate([h_mid[None], hs_body[:-1, -1]])  # (n, B, H)
    return h_T, starts, hs_head, hs_body


def _rows(a: jax.Array) -> jax.Array:
    """``(c, B, ...) -> (c·B, ...)``: a chunk's steps as the rows of 2-D products."""
    return a.reshape(-1, *a.shape[2:])


def _chunk_output_layer(mm, VT, V_, c, hs_c, y_c):
    r"""A chunk's output layer (``docs/math.md`` §3, §9) on its ``c·B`` rows.

    Returns ``(E_c, dV_c, dc_c, Vr)``: the chunk's loss, :math:`\sum r_t \otimes
    h_t`, :math:`\sum r_t` and :math:`V^\top r_t` ``(c, B, H)``, with
    :math:`r_t = \hat y_t - y_t`. 2-D products (measured faster than 3-D einsums).
    """
    h2 = _rows(hs_c)
    E_c, r = softmax_cross_entropy(mm(h2, VT) + c, _rows(y_c))  # r_t = ŷ_t − y_t
    Vr = mm(r, V_).reshape(hs_c.shape)  # Vᵀ r_t
    return E_c, mm(r.T, h2), jnp.sum(r, axis=0), Vr


def _chunk_recurrent_grads(mm, ids, h_start, hs_c, x_c, deltas):
    r"""A chunk's :math:`\partial E/\partial U, W, b` terms from its δ_t (``docs/math.md`` §4).

    ``dW`` is returned as ``(c·B, ·)`` rows to add: for ids, :math:`\delta_t` to
    scatter into rows :math:`x_t` of :math:`dW^\top`; else :math:`\sum \delta_t
    \otimes x_t`.
    """
    h_prev = jnp.concatenate([h_start[None], hs_c[:-1]])  # h_{t-1}
    d2 = _rows(deltas)
    dU = mm(d2.T, _rows(h_prev))  # Σ_t δ_t ⊗ h_{t−1}
    dW = d2 if ids else mm(d2.T, _rows(x_c))  # Σ_t δ_t ⊗ x_t
    return dU, dW, jnp.sum(d2, axis=0)


def _kernel_recursion(U_, options: Options):
    """A chunk's δ recursion as one kernel (:func:`.kernels.backward_recursion`):
    ``(g, (Vᵀr (c, B, H), hs (c, B, H)[, keep])) -> (g, δ (c, B, H))``."""

    def kernel_recursion(g, scanned):
        Vr, hs_c = scanned[:2]
        flags = step_flags(*Vr.shape[:2], keep=scanned[2] if len(scanned) > 2 else None)
        deltas, g, _ = backward_recursion(Vr, hs_c, g, U_, flags, options=options)
        return g, deltas

    return kernel_recursion


def _backward_chunk(run, step, mm, VT, V_, c, ids, unroll, recursion=None):
    r"""The body of :func:`bptt_core`'s backward scan: one chunk, last chunk first.

    ``(carry, (h_start, hs_c, x_c, y_c, k_c)) -> (carry, None)`` with carry
    ``(g, E, dU, dV, dW, db, dc)`` (``dW`` transposed, ``(K, H)``, for ids): the
    chunk's output layer, its part of the δ recursion (``step``, a reverse
    ``lax.scan``) and its terms of every gradient. ``hs_c`` is ``None`` in
    recompute mode: the chunk's :math:`h_t` are then recomputed from ``h_start``.
    ``recursion``: ``(g, (Vr, hs_c[, k_c])) -> (g, deltas)`` replacing the scan of
    ``step`` (the Pallas kernel), or ``None``.
    """

    def backward_chunk(carry, data):
        g, E, dU, dV, dW, db, dc = carry
        h_start, hs_c, x_c, y_c, k_c = data
        if hs_c is None:
            hs_c = run(h_start, x_c)[1]  # recompute the chunk's h_t
        E_c, dV_c, dc_c, Vr = _chunk_output_layer(mm, VT, V_, c, hs_c, y_c)
        scanned = (Vr, hs_c) if k_c is None else (Vr, hs_c, k_c)
        if recursion is None:
            g, deltas = lax.scan(step, g, scanned, reverse=True, unroll=unroll)  # (c, B, H)
        else:
            g, deltas = recursion(g, scanned)
        dU_c, dW_c, db_c = _chunk_recurrent_grads(mm, ids, h_start, hs_c, x_c, deltas)
        # for ids a scatter-add of δ_t into rows x_t of dWᵀ
        dW = dW.at[x_c.reshape(-1)].add(dW_c) if ids else dW + dW_c
        return (g, E + E_c, dU + dU_c, dV + dV_c, dW, db + db_c, dc + dc_c), None

    return backward_chunk


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
    r"""Hand BPTT on the batched layout; no checks.

    The forward pass stores :math:`h_1 \ldots h_T` (or, with ``recompute``,
    only the state entering each chunk). The backward pass walks the steps in
    chunks of ``chunk`` steps, last chunk first; for each chunk it computes
    the logits, :math:`\hat y_t`, :math:`r_t` and :math:`V^\top r_t` of its
    steps only, runs the :math:`\delta` recursion through them, and adds the
    chunk's terms into :math:`\partial E/\partial U, V, W, b, c`. So no
    ``(T, B, C)`` logits and no ``(T, B, H)`` array besides the :math:`h_t`
    are ever held; every product is a ``(chunk·B, ·)`` matrix product.

    Args:
      params: the model.
      xs: ``(B, T)`` ids or ``(B, T, K)`` vectors.
      ys: ``(B, T)`` class ids or ``(B, T, C)`` probabilities.
      h0: ``(B, H)``.
      dh_T: ``(B, H)``, the gradient of a later loss with respect to this
        chunk's final state :math:`h_T`, or ``None`` (zero). It enters the
        recursion as :math:`\delta_T = (V^\top r_T + dh_T) \odot f'(h_T)`.
      options: the cell and the backward's options
        (:class:`~bptt_jax.core.options.Options`): ``truncate`` cuts the gradient
        every τ steps; ``clip_delta`` clips δ per step (see :func:`bptt`);
        ``chunk`` is the steps per chunk of the backward pass (``None``:
        :func:`default_chunk`; the result does not depend on it beyond rounding);
        ``recompute`` keeps only the state entering each chunk in the forward pass
        (``T / chunk`` states) and recomputes the chunk's :math:`h_t` in the
        backward pass: memory :math:`O((T/\mathrm{chunk} + \mathrm{chunk})\,B H)`,
        :math:`O(\sqrt T\, B H)` at the default ``chunk`` = ⌈√T⌉, for one more
        forward recursion; ``unroll`` is ``lax.scan``'s for the two recursions;
        ``matmul_dtype`` ``bfloat16`` makes every matrix product take bf16 operands
        and accumulate in the parameters' dtype (element-wise work, the carry and
        the gradients stay in the parameters' dtype); ``precision`` is every
        product's ``jax.lax.Precision``, forward and backward.

    Returns:
      ``(E, grads, dh0, h_T)``: the loss, the gradients as :class:`Params`,
      :math:`\partial E/\partial h_0 = U^\top \delta_1` ``(B, H)``, and the
      final state :math:`h_T` ``(B, H)`` (to carry into the next chunk of a
      long stream).
    """
    U, V, W, b, c = params
    B, T = xs.shape[:2]
    H, K = W.shape
    dtype = U.dtype
    mm, cast = options.products(dtype)
    ids = jnp.issubdtype(xs.dtype, jnp.integer)
    chunk, recompute = options.chunk, options.recompute
    cs = default_chunk(T, B, recompute) if chunk is None else min(chunk, max(T, 1))
    n, rem = divmod(T, cs)  # n full chunks after a first chunk of rem < cs steps

    # The operands of every product, cast once (bf16 copies when asked).
    U_, VT, V_ = cast(U), cast(V.T), cast(V)

    def run(h, x_c):  # the h recursion over one chunk: (B, H), time-major (c, B[, K])
        return recursion(params, x_c, h, options)

    xs_tm, ys_tm = time_major(xs), time_major(ys)
    keep = truncation_mask(T, options.truncate)
    g_T = jnp.zeros_like(h0) if dh_T is None else dh_T

    def split(a):  # (T, ...) -> first chunk (rem, ...), full chunks (n, cs, ...)
        return a[:rem], a[rem:].reshape(n, cs, *a.shape[1:])

    (x_head, x_body), (y_head, y_body) = split(xs_tm), split(ys_tm)
    k_head, k_body = (None, None) if keep is None else split(keep)

    h_T, starts, hs_head, hs_body = _forward_chunks(run, split, h0, xs_tm, x_head, x_body,
                                                    rem, recompute)  # fmt: skip

    # Backward, last chunk first. The carry g is ∂E/∂h_t from the future.
    step = _scan_step(options, mm, U_)
    kernel = _kernel_recursion(U_, options) if options.pallas else None
    backward_chunk = _backward_chunk(run, step, mm, VT, V_, c, ids, options.unroll, kernel)

    def zeros(shape):  # like h0: under shard_map, varying over the same mesh axes
        return jnp.zeros_like(h0, dtype=dtype, shape=shape)

    carry = (
        g_T, zeros(()), zeros(U.shape), zeros(V.shape), zeros((K, H) if ids else (H, K)),
        zeros(b.shape), zeros(c.shape),
    )  # fmt: skip
    if n:
        body = (starts, hs_body, x_body, y_body, k_body)
        carry, _ = lax.scan(backward_chunk, carry, body, reverse=True)
    if rem:
        carry, _ = backward_chunk(carry, (h0, hs_head, x_head, y_head, k_head))
    dh0, E, dU, dV, dW, db, dc = carry  # dh0 = Uᵀ δ_1 (dh_T itself when T = 0)
    grads = Params(U=dU, V=dV, W=dW.T if ids else dW, b=db, c=dc)
    return E, grads, dh0, h_T
