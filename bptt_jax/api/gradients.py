r"""The public hand gradients: :func:`bptt`, :func:`bptt_chunk` and the per-loss form.

Each checks its arguments once and runs a jitted core of :mod:`bptt_jax.core`
(``docs/math.md`` §4, §5). None of them calls autodiff.
"""

from __future__ import annotations

import functools

import jax

from ..core.deep import deep_bptt_core
from ..core.deep_per_loss import deep_bptt_per_loss_core, deep_per_loss_deltas_core
from .arrays import check_quadratic_size
from .call import take
from .device import Pending, device_checks, vary_alike
from .options import build_options
from .signatures import shares
from .validate import (
    Layout,
    Model,
    as_deep,
    grads_like,
    prepare,
    refuse,
    restore,
    unbatch,
)


@functools.partial(jax.jit, static_argnames=("folds", "options", "reduction", "layout"))
def _checked_bptt_core(deep, inputs, flags, folds, options, reduction, layout):
    """The call's device checks (:func:`.device.device_checks`) and the hand BPTT
    (:func:`~bptt_jax.core.deep.deep_bptt_core`) in one executable: separate, the small
    checks' dispatch and the core waiting on it cost about 0.2 ms a call on the CPU
    (``docs/performance.md``). ``inputs``: ``(xs, ys, h0, dh_T, mask, resets)``; the
    results come out in the caller's ``layout`` (:func:`.validate.restore`)."""
    xs, ys, h0, dh_T, mask, resets = inputs
    deep, xs, ys, h0 = device_checks(deep, xs, ys, h0, mask, flags, *folds, hand=True)
    deep, xs, ys, h0, dh_T, _ = vary_alike((deep, xs, ys, h0, dh_T, mask))  # shard_map
    E, grads, dh0, h_T = deep_bptt_core(deep, xs, ys, h0, mask, dh_T, resets, options=options,
                                        reduction=reduction)  # fmt: skip
    return E, *restore(layout, grads, dh0, h_T)


def bptt_chunk(
    params: Model,
    xs: jax.Array,
    ys: jax.Array,
    h0: jax.Array | None = None,
    *,
    dh_T: jax.Array | None = None,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    reduction: str = "sum",
    activation: str = "tanh",
    truncate: int | None = None,
    clip_delta: float | None = None,
    chunk: int | None = None,
    recompute: bool = False,
    unroll: int | None = None,
    matmul_dtype: str | None = None,
    resets: jax.Array | None = None,
    kernel: str = "auto",
    precision: str | jax.lax.Precision | None = None,
) -> tuple[jax.Array, Model, jax.Array, jax.Array]:
    r"""Hand BPTT for one chunk of a longer stream: also ∂E/∂h_0 and h_T.

    A long sequence split into chunks is processed forward chunk by chunk,
    each starting from the previous chunk's final state ``h_T``. To
    back-propagate ACROSS chunks, process them backwards in time and pass
    each chunk the ``dh0`` of the chunk after it as ``dh_T``; the gradients
    then add up to those of the whole sequence. With ``dh_T=None`` every
    chunk is cut off from the future (truncated BPTT at chunk boundaries).

    .. math::

        \delta_T = (V^\top r_T + dh_T) \odot f'(h_T),\qquad
        \frac{\partial E}{\partial h_0} = U^\top \delta_1

    Args:
      params: :class:`Params` ``U (H, H), V (C, H), W (H, K), b (H,), c (C,)``,
        or a :class:`DeepParams`.
      xs: token ids ``(T,)`` / ``(B, T)`` or input vectors ``(T, K)`` /
        ``(B, T, K)``.
      ys: class ids ``(T,)`` / ``(B, T)`` in ``0..C-1``, or soft labels
        ``(T, C)`` / ``(B, T, C)`` (probability rows summing to 1).
      h0: ``(H,)`` / ``(B, H)`` (DeepParams: ``(L*D, [B,] H)``); zeros when ``None``.
      dh_T: shaped like ``h0``: the gradient of the later chunks' loss with
        respect to this chunk's final state(s), or ``None`` (zero).
      lengths: ``(B,)`` real lengths, or ``mask`` ``(B, T)`` bool prefix mask:
        padding steps contribute no loss, freeze the state and get zero
        gradient.
      reduction: ``"sum"`` (the seed's E) or ``"mean"`` over the real steps.
      activation: :math:`f`: ``"tanh"`` (the seed's), ``"sigmoid"``, ``"relu"``.
      truncate: ``None`` for full BPTT, or τ ≥ 1 to cut the gradient every τ
        steps (chunks 1..τ, τ+1..2τ, ... each back-propagate within
        themselves). The loss is unchanged.
      clip_delta: ``None`` (exact BPTT), or θ > 0 for per-step clipping of
        δ inside the recursion: whenever a sequence's :math:`\|\delta_t\|_2 >
        θ` it is replaced by :math:`\delta_t\, θ/\|\delta_t\|_2` before it
        enters :math:`\partial E/\partial U, W, b` and propagates to step
        t − 1 as :math:`U^\top\delta_t`. Steps with :math:`\|\delta_t\|_2
        \le θ` are untouched, so the result is exact when θ is never
        reached; once it is, the returned "gradient" is by design NOT the
        gradient of :math:`E` (a remedy for exploding gradients, not a
        derivative). ``dV``, ``dc`` and the loss are never affected.
        For a :class:`DeepParams` both act on every layer and direction: the
        windows 1..τ, τ+1..2τ, ... are the same for both directions of a
        bidirectional layer (no gradient crosses a window boundary either way
        in time), and δ is clipped per cell.
      chunk: the backward pass walks the steps in chunks of this many,
        computing each chunk's logits, softmax and :math:`V^\top r_t` only
        when it gets there, so no ``(T, B, C)`` array is ever held. ``None``
        picks the backend's default (``jax.default_backend()`` when traced,
        ``docs/performance.md``): about 512 rows (``chunk * B``) on the CPU,
        4096 on a GPU, at most ⌈T/4⌉ steps. The result does not depend on it
        beyond rounding.
      recompute: ``True`` keeps only the state entering each chunk in the
        forward pass and recomputes the chunk's :math:`h_t` on the way back:
        memory :math:`O(\sqrt T\, B H)` instead of :math:`O(T B H)` for one
        more forward recursion (``chunk`` then defaults to ⌈√T⌉). In a
        bidirectional :class:`DeepParams` the layer below needs both
        directions' δ at every step, so one ``(T, B, 2H)`` gradient and the top
        layer's input and output stay whole; each middle layer's input is run
        again from ``xs`` when its backward pass begins.
      unroll: ``lax.scan``'s ``unroll`` for both recursions; ``None``: the
        backend's default, 1 (a loop) on the CPU, 8 on a GPU.
      matmul_dtype: ``None``, or ``"bfloat16"`` for mixed precision: every
        matrix product takes bf16 operands and accumulates in the
        parameters' dtype (the master weights), which the element-wise work
        and the gradients keep.
        ``chunk``, ``recompute``, ``unroll`` and ``matmul_dtype`` apply to
        the same seed path as ``truncate``.
      kernel: how the two sequential recursions (h forward, δ backward) run:
        ``"scan"`` (``lax.scan`` steps), ``"pallas"`` (one fused kernel per
        recursion and chunk, :mod:`bptt_jax.core.kernels`: U on chip for all
        steps; every cell of a deep or bidirectional model; compiled on a GPU,
        interpret mode elsewhere) or ``"auto"``, which today is the scan
        everywhere (``docs/performance.md``: no GPU measurement yet). A forced
        ``"pallas"`` beyond the kernels' sizes (float32 H ≤ 128, bfloat16
        H ≤ 256) is a ValueError.
      precision: the precision of every matrix product, forward and backward:
        ``"default"``, ``"high"``, ``"highest"`` (JAX's names) or a
        ``jax.lax.Precision``. ``None``, the default, is JAX's default matmul
        precision (the ``jax_default_matmul_precision`` config when the call
        is traced; ``"default"`` unless set): full float32 on the CPU, TF32
        for float32 products on NVIDIA GPUs since Ampere (about 1e-3
        relative per product), one bfloat16 pass on a TPU. float64 products
        are float64 on every backend. The verification (the tests,
        ``bptt-jax check``, ``bench``'s agreement column, ``train
        --verify-every``) compares at ``"highest"`` (``docs/performance.md``).
      resets: ``None`` or bool ``(B, T)`` / ``(T,)`` (``(T,)`` with a batch: the same
        steps of every sequence): restarts from ``h0``, as :func:`bptt_jax.forward`.

    Returns:
      ``(E, grads, dh0, h_T)``: the loss (as :func:`loss`) and its gradients, a
      pytree like ``params`` (an empty sequence, T = 0, gives ``E = 0`` and zero
      gradients), plus :math:`\partial E/\partial h_0` and the final hidden
      state(s) :math:`h_T` (each sequence's own end when padded), each shaped like
      ``h0``.
    """

    params, inp = prepare(params, xs, ys, h0, dh_T=dh_T, lengths=lengths, mask=mask,
                          activation=activation, reduction=reduction, resets=resets,
                          defer=True)  # fmt: skip
    options = build_options(
        inp.activation, params, inp.xs, "bptt", truncate=truncate, clip_delta=clip_delta,
        chunk=chunk, recompute=recompute, unroll=unroll, matmul_dtype=matmul_dtype,
        kernel=kernel, precision=precision, schedule=True,
    )  # fmt: skip
    deep, d = as_deep(params, inp)
    pending = d.pending if d.pending is not None else Pending((), None, None, None)
    return _checked_bptt_core(
        deep, (d.xs, d.ys, d.h0, d.dh_T, d.mask, d.resets), pending.flags, tuple(pending[1:]),
        options, d.reduction, Layout(inp.seed, inp.batched),
    )  # fmt: skip


@shares(bptt_chunk, drop=("dh_T",))
def bptt(params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None,
         **options) -> tuple[jax.Array, Model]:  # fmt: skip
    r"""The loss and its gradients by hand-derived backpropagation through time.

    .. math::

        \delta_t = (V^\top (\hat y_t - y_t) + U^\top \delta_{t+1})
                   \odot f'(h_t),\quad \delta_{T+1} = 0

        \frac{\partial E}{\partial U} = \sum_t \delta_t \otimes h_{t-1},\
        \frac{\partial E}{\partial W} = \sum_t \delta_t \otimes x_t,\
        \frac{\partial E}{\partial b} = \sum_t \delta_t,\
        \frac{\partial E}{\partial V} = \sum_t (\hat y_t - y_t) \otimes h_t,\
        \frac{\partial E}{\partial c} = \sum_t (\hat y_t - y_t)

    with :math:`f'(h_t) = 1 - h_t \odot h_t` for the seed's tanh. One forward
    ``lax.scan`` over :math:`h` and one reverse ``lax.scan`` over
    :math:`\delta` (per layer and direction for a :class:`DeepParams`, see
    :mod:`bptt_jax.core.deep`, :mod:`bptt_jax.core.backward`); everything else is
    batched over chunks of steps, and no ``(T, B, C)`` array is ever built. No
    ``jax.grad``: the tests referee this against ``jax.grad(loss)`` and
    finite differences.

    Args:
      params, xs, ys, h0, and every keyword of :func:`bptt_chunk` but ``dh_T``
        (``lengths``, ``mask``, ``reduction``, ``activation``, ``truncate``,
        ``clip_delta``, ``chunk``, ``recompute``, ``unroll``, ``matmul_dtype``,
        ``resets``, ``kernel``, ``precision``): documented there, with their defaults.

    Returns:
      ``(E, grads)``: the loss (as :func:`loss`) and its gradients, a pytree
      like ``params``. An empty sequence (T = 0) gives ``E = 0`` and zero
      gradients.

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> E, grads = bptt(params, jnp.array([0, 3, 1]), jnp.array([3, 1, 4]))
      >>> params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    """
    E, grads, _, _ = bptt_chunk(params, xs, ys, h0, **options)
    return E, grads


_WINDOW_WHY = (
    "the sliding window runs back along one recurrence in time; a stacked or "
    "bidirectional net (whose backward direction runs forward in time), padding or a "
    "mean would need a window per layer and direction, so leave truncate=None there"
)


def _per_loss_call(fn: str, params, xs, ys, h0, keywords: dict):
    """``(params, inputs, options)`` of :func:`bptt_per_loss` or :func:`per_loss_deltas`:
    their checks, and ``truncate`` refused outside the seed's setting."""
    params, inp, options = take(fn, params, xs, ys, h0, keywords)
    refuse(fn, ["truncate"] * (options.truncate is not None), params, inp, _WINDOW_WHY)
    return params, inp, options


#: ``bptt_chunk``'s keywords that the per-loss form does not take.
_NOT_PER_LOSS = ("dh_T", "clip_delta", "chunk", "recompute", "unroll", "matmul_dtype", "resets",
                 "kernel")  # fmt: skip


@shares(bptt_chunk, drop=_NOT_PER_LOSS)
def bptt_per_loss(params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None,
                  **keywords) -> tuple[jax.Array, Model]:  # fmt: skip
    r"""The seed's double sum: BPTT one loss :math:`E_t` at a time, :math:`O(T^2)`.

    .. math::

        \frac{\partial E}{\partial U} = \sum_{t=1}^{T} \sum_{k=\max(1, t-τ+1)}^{t}
            \delta_k^{(t)} \otimes h_{k-1},\qquad
        \delta_k^{(t)} = (U^\top \delta_{k+1}^{(t)}) \odot f'(h_k),\quad
        \delta_t^{(t)} = (V^\top r_t) \odot f'(h_t)

    and likewise :math:`W` (with :math:`x_k`) and :math:`b`; :math:`V` and
    :math:`c` as in :func:`bptt` (``docs/math.md`` §5).

    For a :class:`DeepParams`, padding (``lengths``/``mask``) or
    ``reduction="mean"``, each :math:`E_t` runs the hand deep backward pass
    with the output residual restricted to step t (:mod:`bptt_jax.core.deep_per_loss`,
    ``docs/math.md`` §7): :math:`T` backward passes whose sum is the gradient.

    Args:
      params, xs, ys, h0, lengths, mask, reduction, activation, precision: as for
        :func:`bptt_chunk` (their defaults too).
      truncate: ``None`` for the exact gradient (equal to :func:`bptt` to
        round-off), or τ ≥ 1: each :math:`E_t` back-propagates through the
        last τ steps only, :math:`t - τ < k \le t` (a sliding window,
        Williams & Peng's BPTT(h); not the chunked cut of ``bptt(truncate=)``).
        The seed's Params on unpadded sequences with ``reduction="sum"`` only:
        elsewhere a ValueError names the combination (a bidirectional
        layer's window would have to run both ways in time).

    Returns:
      ``(E, grads)`` as :func:`bptt`.
    """
    params, inp, options = _per_loss_call("bptt_per_loss", params, xs, ys, h0, keywords)
    deep, d = as_deep(params, inp)
    E, grads = deep_bptt_per_loss_core(
        deep, d.xs, d.ys, d.h0, d.mask, options=options, reduction=d.reduction
    )
    return E, grads_like(inp, grads)


@shares(bptt_per_loss)
def per_loss_deltas(params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None,
                    **keywords) -> jax.Array:  # fmt: skip
    r"""All the seed's per-loss deltas :math:`\delta_k^{(t)} = \partial E_t/\partial s_k`.

    Materialises a ``(T, T, ..., H)`` array, so it is meant for inspection and
    diagnostics on short sequences.

    Args:
      params, xs, ys, h0, and every keyword of :func:`bptt_per_loss` (``lengths``,
        ``mask``, ``reduction``, ``activation``, ``truncate``, ``precision``):
        documented there, with their defaults.

    Returns:
      ``deltas[t-1, k-1]`` = :math:`\delta_k^{(t)}`, shape ``(T, T, H)`` for one
      sequence or ``(T, T, B, H)`` for a batch; zero for :math:`k > t`, at
      padding and outside the truncation window. For a :class:`DeepParams`,
      ``deltas[t-1, k-1, l*D + d]`` is :math:`\partial E_t/\partial s_k` of
      layer ``l + 1``, direction ``d`` (0 forward, 1 backward in time): shape
      ``(T, T, L*D, H)`` / ``(T, T, L*D, B, H)``. In a bidirectional net it is
      not zero for :math:`k > t`: the backward direction, and every cell above
      it, carry :math:`E_t`'s signal to later steps.
    """
    params, inp, options = _per_loss_call("per_loss_deltas", params, xs, ys, h0, keywords)
    check_quadratic_size("per_loss_deltas", inp.xs, inp.h0, inp.cell)
    deep, d = as_deep(params, inp)
    deltas = deep_per_loss_deltas_core(
        deep, d.xs, d.ys, d.h0, d.mask, options=options, reduction=d.reduction
    )
    if inp.seed:  # the seed's Params: no layer axis
        return unbatch(inp, deltas[:, :, 0], axis=2)
    return unbatch(inp, deltas, axis=3)
