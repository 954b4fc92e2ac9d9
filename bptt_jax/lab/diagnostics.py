r"""Vanishing and exploding gradients, measured (the seed's §6).

The per-loss deltas of the seed obey

.. math::

    \delta_k^{(t)} = \operatorname{diag}(f'(s_k))\, U^\top\,
        \delta_{k+1}^{(t)}, \qquad
    \|\delta_k^{(t)}\|_2 \le \|\delta_t^{(t)}\|_2
        \prod_{i=k}^{t-1} \|U\|_2 \max_j |f'(s_{i,j})|
        \le \|\delta_t^{(t)}\|_2\, \gamma^{t-k},\quad
    \gamma = \|U\|_2 \max_s |f'(s)|

(:math:`t - k` factors, one per application of
:math:`\operatorname{diag}(f'(s_i))\,U^\top`). :math:`\gamma < 1` is *sufficient* for the
gradient to vanish geometrically; :math:`\gamma > 1` is only *necessary* for
it to explode (Pascanu, Mikolov & Bengio 2013). :func:`gradient_flow`
measures every :math:`\|\delta_k^{(t)}\|` of a real trajectory with the hand
recursion and sets it next to both bounds; :func:`spectral_sweep` does so
across scales of :math:`U` and activations. No autodiff here, no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..core.activations import get_activation
from ..core.cell import RNNCell
from ..core.deep import cell_outputs
from ..core.deep_per_loss import deep_per_loss_deltas_core
from ..core.init import Scheme
from ..core.options import DEFAULT, Options
from ..core.params import DeepParams, Params, init_params
from ..core.per_loss import per_loss_deltas_core
from ..core.rnn import hidden_states


class GradientFlow(NamedTuple):
    r"""What :func:`gradient_flow` measured on one batch (``T`` steps).

    ``delta_norms``, ``bound`` and ``gamma_bound`` are ``(T, T)`` indexed
    ``[t-1, k-1]`` (loss index t, step k), zero above the diagonal; ``decay``,
    ``bound_decay``, ``gamma_decay`` are ``(T,)`` indexed by the distance
    d = t − k = 0..T−1.

    For a :class:`DeepParams` every field has a leading ``(L*D,)`` axis, one
    entry per layer and direction (index ``l*D + d``, as the states), each
    measured along that cell's own recurrence: for a backward-in-time
    direction the distance is d = k − t and the ``(T, T)`` fields are zero
    *below* the diagonal instead (see :func:`deep_gradient_flow_core`).
    """

    delta_norms: jax.Array  # (T, T): ‖δ_k^(t)‖₂, mean over the batch
    decay: jax.Array  # (T,): Σ_t ‖δ_{t−d}^(t)‖ / Σ_t ‖δ_t^(t)‖ over t = d+1..T
    decay_rate: jax.Array  # (): ρ, the fitted per-step factor, decay[d] ≈ ρ^d
    U_norm: jax.Array  # (): ‖U‖₂, the largest singular value of U
    max_slopes: jax.Array  # (T,): max|f′(s_k)| over units and sequences, k = 1..T
    gamma: jax.Array  # (): γ = ‖U‖₂ · max_s|f′(s)|, the seed's constant
    bound: jax.Array  # (T, T): mean_b ‖δ_t^(t)‖ · Π_{i=k}^{t−1} ‖U‖₂ max|f′(s_i)|
    gamma_bound: jax.Array  # (T, T): mean_b ‖δ_t^(t)‖ · γ^(t−k)
    bound_decay: jax.Array  # (T,): decay of ``bound``, ≥ decay
    gamma_decay: jax.Array  # (T,): γ^d, ≥ bound_decay


def _decay_by_distance(norms: jax.Array, head: jax.Array | None = None) -> jax.Array:
    r"""``(T, T) -> (T,)``: :math:`\sum_{t>d} n[t, t-d] / \sum_{t>d} m[t, t]`, ``m`` the
    ``head`` norms (``norms`` itself when ``None``; :mod:`.flow` measures the LSTM's
    c path, which E_t does not enter at step t, against its h path).

    Ratio of sums over the same losses t = d+1..T, so a bound that holds entry
    by entry, :math:`n[t, t-d] \le n[t, t]\, c_d`, holds for the ratio too. A
    distance with no signal at all (every :math:`m[t,t] = 0`) gives 0.
    """
    head = norms if head is None else head
    T = norms.shape[0]
    t = jnp.arange(T)
    d = jnp.arange(T)
    valid = t[None, :] >= d[:, None]  # (d, t): loss t reaches back d steps
    k = jnp.clip(t[None, :] - d[:, None], 0, T - 1)  # (d, t)
    num = jnp.sum(jnp.where(valid, norms[t[None, :], k], 0), axis=1)  # (T,)
    den = jnp.sum(jnp.where(valid, jnp.diagonal(head)[None, :], 0), axis=1)  # (T,)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def _fit_rate(decay: jax.Array) -> jax.Array:
    r"""ρ with :math:`\log \mathrm{decay}[d] \approx d \log ρ`, least squares through 0.

    Distances where the decay is exactly 0 (a dead ReLU network) are clamped to
    the smallest normal number of the dtype, so ρ is then tiny, not NaN.
    """
    T = decay.shape[0]
    if T < 2:
        return jnp.ones((), decay.dtype)
    d = jnp.arange(T, dtype=decay.dtype)
    tiny = jnp.finfo(decay.dtype).tiny
    log_decay = jnp.log(jnp.maximum(decay, tiny))
    return jnp.exp(jnp.sum(d * log_decay) / jnp.sum(d * d))


def _products(a: jax.Array) -> jax.Array:
    r"""``(T,) -> (T, T)``: ``P[t, k] = Π_{i=k}^{t−1} a_i`` for k ≤ t (1 on the
    diagonal, 0 above it). Direct products, not differences of log-sums, so a
    factor of 0 gives 0 and not NaN."""
    T = a.shape[0]
    i = jnp.arange(T)
    t, k = i[:, None, None], i[None, :, None]
    inside = (i[None, None, :] >= k) & (i[None, None, :] < t)  # (t, k, i)
    P = jnp.prod(jnp.where(inside, a[None, None, :], 1), axis=-1)  # (T, T)
    return jnp.where(k[..., 0] <= t[..., 0], P, 0)


def _flow(delta_norms, max_slopes, U_norm, max_slope) -> GradientFlow:
    r"""The §6 bounds beside measured norms ``(T, T)``, for slopes ``(T,)`` and ‖U‖₂."""
    T = delta_norms.shape[0]
    gamma = U_norm * max_slope
    # δ_k^(t) = diag(f'_k) Uᵀ δ_{k+1}^(t): t − k factors ‖U‖₂ max|f'(s_i)|, i = k..t−1.
    head = jnp.diagonal(delta_norms)  # (T,): mean_b ‖δ_t^(t)‖
    P = _products(U_norm * max_slopes)  # (T, T)
    bound = head[:, None] * P
    dist = (jnp.arange(T)[:, None] - jnp.arange(T)[None, :]).astype(U_norm.dtype)  # (T, T): t − k
    gamma_bound = jnp.where(dist >= 0, head[:, None] * gamma ** jnp.maximum(dist, 0), 0)
    decay = _decay_by_distance(delta_norms)
    return GradientFlow(
        delta_norms=delta_norms,
        decay=decay,
        decay_rate=_fit_rate(decay),
        U_norm=U_norm,
        max_slopes=max_slopes,
        gamma=gamma,
        bound=bound,
        gamma_bound=gamma_bound,
        bound_decay=_decay_by_distance(bound),
        gamma_decay=gamma ** jnp.arange(T, dtype=gamma.dtype),
    )


def _spectral_norm(U: jax.Array) -> jax.Array:
    """‖U‖₂, the largest singular value (0 for an empty U)."""
    return jnp.linalg.norm(U, 2) if U.size else jnp.zeros((), U.dtype)


@functools.partial(jax.jit, static_argnames=("options",))
def gradient_flow_core(params: Params, xs, ys, h0, *, options: Options = DEFAULT) -> GradientFlow:
    """:func:`bptt_jax.gradient_flow` on the batched layout; no checks. ``options``: the
    cell and every matrix product's ``precision`` (``None``: JAX's default)."""
    act = get_activation(options.cell.activation)
    T, (B, H) = xs.shape[1], h0.shape
    if T == 0:  # per_loss_deltas_core cannot index an empty sequence
        deltas = jnp.zeros((0, 0, B, H), h0.dtype)
    else:
        deltas = per_loss_deltas_core(params, xs, ys, h0, options=options)  # (T, T, B, H)
    delta_norms = jnp.mean(jnp.linalg.norm(deltas, axis=-1), axis=-1)  # (T, T)
    _, hs = hidden_states(params, xs, h0, options)  # (T, B, H)
    max_slopes = jnp.max(jnp.abs(act.df_from_h(hs)), axis=(1, 2), initial=0)  # (T,)
    return _flow(delta_norms, max_slopes, _spectral_norm(params.U), act.max_slope)


def _flip_time(flow: GradientFlow) -> GradientFlow:
    """A flow measured on time-reversed arrays, back in real time (fields by step)."""
    flip2 = lambda a: a[::-1, ::-1]  # noqa: E731
    return flow._replace(
        delta_norms=flip2(flow.delta_norms), max_slopes=flow.max_slopes[::-1],
        bound=flip2(flow.bound), gamma_bound=flip2(flow.gamma_bound),
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("options", "reduction"))
def deep_gradient_flow_core(
    params: DeepParams, xs, ys, h0, mask=None, *, options: Options = DEFAULT, reduction="sum"
) -> GradientFlow:
    r""":func:`bptt_jax.gradient_flow` for a :class:`DeepParams`; every field ``(L*D, ...)``.

    Per cell (layer l, direction d): the norms of the hand per-loss deltas
    :math:`\delta_k^{(t),\ell,d}` (:mod:`bptt_jax.core.deep_per_loss`), mean over
    the sequences; :math:`\gamma_\ell = \|U^\ell\|_2 \max|f'|`; and the
    product bound along the cell's own recurrence,
    :math:`\|\delta_t^{(t)}\| \prod_i \|U^\ell\|_2 \max_j|f'(s_{i,j}^\ell)|`
    over the steps between t and k in the cell's direction of time
    (``max_slopes`` over the real steps only). For the top layer (both
    directions) these are bounds, as in the seed's §6: its deltas only travel
    along its own recurrence. A lower layer also receives
    :math:`W^{\ell+1\top}\delta_k^{(t),\ell+1}` at every step from the layer
    above, so there the product is the attenuation along its recurrence alone,
    not a bound on the measured norms. Batched layout; no checks.
    """
    act = get_activation(options.cell.activation)
    T, (LD, B, H) = xs.shape[1], h0.shape
    if T == 0:
        deltas = jnp.zeros((0, 0, LD, B, H), h0.dtype)
    else:
        deltas = deep_per_loss_deltas_core(
            params,
            xs,
            ys,
            h0,
            mask,
            options=options,
            reduction=reduction,
        )  # (T, T, L*D, B, H)
    norms = jnp.mean(jnp.linalg.norm(deltas, axis=-1), axis=-1)  # (T, T, L*D)
    m, outs = cell_outputs(params, xs, h0, mask, options)  # (T, B), [l][d] (T, B, H)
    D = params.num_directions
    flows = []
    for l, cell in enumerate(params.cells()):
        for d, layer in enumerate(cell):
            slopes = jnp.where(m[..., None], jnp.abs(act.df_from_h(outs[l][d])), 0)
            slopes = jnp.max(slopes, axis=(1, 2), initial=0)  # (T,)
            n = norms[:, :, l * D + d]
            U_norm = _spectral_norm(layer.U)
            if d == 0:
                flows.append(_flow(n, slopes, U_norm, act.max_slope))
            else:  # backward in time: measure in reversed time, report in real time
                flows.append(_flip_time(_flow(n[::-1, ::-1], slopes[::-1], U_norm,
                                              act.max_slope)))  # fmt: skip
    return jax.tree.map(lambda *a: jnp.stack(a), *flows)


def classify_rate(rate: float, tol: float = 0.05) -> str:
    """``"vanishes"`` if ρ < 1 − tol, ``"explodes"`` if ρ > 1 + tol, else ``"flat"``."""
    if rate < 1 - tol:
        return "vanishes"
    if rate > 1 + tol:
        return "explodes"
    return "flat"


def gamma_verdict(gamma: float) -> str:
    r"""What the seed's bound alone says: γ < 1 guarantees vanishing, γ ≥ 1 says nothing."""
    return "vanishes" if gamma < 1 else "may explode"


class SweepRow(NamedTuple):
    activation: str
    scale: float  # the spectral radius U was scaled to
    U_norm: float  # ‖U‖₂
    gamma: float  # ‖U‖₂ · max|f′|
    decay_rate: float  # measured ρ per step
    decay_far: float  # decay at the largest distance T − 1
    measured: str  # classify_rate(decay_rate)
    predicted: str  # gamma_verdict(gamma)


def spectral_sweep(
    key: jax.Array,
    *,
    scales: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0),
    activations: Sequence[str] = ("tanh", "sigmoid", "relu"),
    init: str = "orthogonal",
    vocab_size: int = 8,
    hidden_size: int = 32,
    batch: int = 8,
    steps: int = 40,
    tol: float = 0.05,
    precision: str | jax.lax.Precision | None = None,
) -> list[SweepRow]:
    r"""The seed's claim tested on real runs: sweep the scale of :math:`U`.

    For each activation and each scale σ, a model from ``init_params(key, K,
    H, init=init, spectral_radius=σ)`` (with the default ``"orthogonal"``,
    :math:`U = σQ` so :math:`\|U\|_2 = ρ(U) = σ` and :math:`\gamma = σ
    \max|f'|` exactly) runs on one fixed batch of random ids and labels;
    :func:`gradient_flow` measures the per-step decay ρ. Each row sets what was
    measured (``classify_rate(ρ)``) beside what γ predicts (``gamma_verdict``).
    The same key draws every model, so rows differ only in σ and :math:`f`.
    Runs in the current default float dtype, every matrix product at ``precision``
    (a ``jax.lax.Precision``, or ``None``: JAX's default).

    Unchecked; :func:`bptt_jax.spectral_sweep` checks the arguments first.

    Returns:
      One :class:`SweepRow` per (activation, scale), activations outer.
    """
    kp, kx, ky = jax.random.split(key, 3)
    xs = jax.random.randint(kx, (batch, steps), 0, vocab_size)
    ys = jax.random.randint(ky, (batch, steps), 0, vocab_size)
    rows = []
    for a in activations:
        for s in scales:
            dtype = jnp.zeros(()).dtype  # float64 under enable_x64, else float32
            params = init_params(
                kp, vocab_size, hidden_size, dtype=dtype, scheme=Scheme(init, spectral_radius=s)
            )
            h0 = jnp.zeros((batch, hidden_size), dtype)
            options = Options(cell=RNNCell(a), precision=precision)
            flow = gradient_flow_core(params, xs, ys, h0, options=options)
            rate, gamma = float(flow.decay_rate), float(flow.gamma)
            rows.append(
                SweepRow(
                    activation=a,
                    scale=float(s),
                    U_norm=float(flow.U_norm),
                    gamma=gamma,
                    decay_rate=rate,
                    decay_far=float(flow.decay[-1]),
                    measured=classify_rate(rate, tol),
                    predicted=gamma_verdict(gamma),
                )
            )
    return rows


def format_sweep(rows: list[SweepRow]) -> str:
    """The sweep as a plain-text table, one row per (activation, scale)."""
    lines = [
        f"{'f':8} {'ρ(U)':>6} {'‖U‖₂':>7} {'γ':>7} {'measured ρ/step':>16} "
        f"{'decay at T-1':>13}  {'measured':9} {'γ predicts':11}",
    ]
    for r in rows:
        lines.append(
            f"{r.activation:8} {r.scale:6.2f} {r.U_norm:7.3f} {r.gamma:7.3f} "
            f"{r.decay_rate:16.4g} {r.decay_far:13.3g}  {r.measured:9} {r.predicted:11}"
        )
    return "\n".join(lines)
