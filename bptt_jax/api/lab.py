r"""The public lab: gradient-flow diagnostics (``docs/math.md`` §6) and the delay task.

Thin checking wrappers around :mod:`bptt_jax.lab`, whose functions take
well-formed arguments and check nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..core.checks import check_float_dtype, check_key, check_number
from ..core.clipping import make_clipper
from ..core.init import check_init
from ..lab import diagnostics, tasks
from ..lab.diagnostics import GradientFlow, SweepRow, deep_gradient_flow_core
from ..lab.flow import state_flow_core
from .arrays import check_quadratic_size
from .call import take
from .gradients import bptt_per_loss
from .options import check_activation, check_clip_delta, check_precision
from .signatures import shares
from .validate import Model, as_deep


@shares(bptt_per_loss, drop=("truncate",))
def gradient_flow(params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None,
                  **keywords) -> GradientFlow:  # fmt: skip
    r"""How the gradient signal of each loss :math:`E_t` fades with distance.

    Measures :math:`\|\delta_k^{(t)}\|_2 = \|\partial E_t/\partial s_k\|_2` for
    every :math:`k \le t`, exactly, with the seed's per-loss recursion
    (:func:`bptt_jax.per_loss_deltas`, no autodiff), and, along the same
    trajectory, the factors of the §6 bound:

    .. math::

        \|\delta_k^{(t)}\|_2 \;\le\; \|\delta_t^{(t)}\|_2
            \prod_{i=k}^{t-1} \|U\|_2\, \max_j |f'(s_{i,j})|
        \;\le\; \|\delta_t^{(t)}\|_2\, \gamma^{t-k},\qquad
        \gamma = \|U\|_2 \max_s |f'(s)|

    For a batch every norm is averaged over the sequences, and
    :math:`\max_j |f'(s_{i,j})|` is taken over units *and* sequences, so the
    two bounds still hold for the averages.

    The decay by distance d is a ratio of sums over the losses that reach
    that far, :math:`\mathrm{decay}[d] = \sum_{t>d} \|\delta_{t-d}^{(t)}\| /
    \sum_{t>d} \|\delta_t^{(t)}\|` (so ``decay <= bound_decay <= gamma_decay``
    holds exactly, not only on average); ``decay_rate`` ρ is the per-step
    factor fitted to it, :math:`\mathrm{decay}[d] \approx ρ^d` (least squares
    on :math:`\log`): ρ < 1 vanishing, ρ ≈ 1 flat, ρ > 1 exploding.

    Materialises all :math:`T^2` deltas: meant for diagnosis on sequences of
    up to a few hundred steps.

    For a :class:`DeepParams` the same is measured per layer and direction
    with the hand deep per-loss deltas (:func:`bptt_jax.per_loss_deltas`),
    along each cell's own recurrence: :math:`\gamma_\ell = \|U^\ell\|_2
    \max|f'|` and the product bound of that layer. These bound the measured
    norms for the top layer; a lower layer also receives the signal of the
    layer above at every step, so there they measure its own recurrence's
    attenuation only (:func:`bptt_jax.lab.diagnostics.deep_gradient_flow_core`).
    With ``lengths``/``mask`` padding steps have zero deltas (still counted in
    the mean over sequences) and ``max_slopes`` is taken over real steps.

    Args:
      params, xs, ys, h0: as for :func:`bptt_jax.bptt` (one sequence or a
        batch ``(B, T)``; ids or vectors; class ids or soft labels).
      lengths, mask, reduction: as for :func:`bptt_jax.bptt`.
      activation: ``"tanh"``, ``"sigmoid"`` or ``"relu"``.
      precision: of every matrix product, as for :func:`bptt_jax.bptt`.

    For a gated cell (``docs/math.md`` §13; one layer in one direction, unpadded,
    summed) the vanilla cell's bounds do not apply: what is measured is the
    gradient that reaches each state, :math:`\|\partial E_t/\partial h_k\|` and
    for the LSTM :math:`\|\partial E_t/\partial c_k\|` through :math:`c_{k+1}`,
    returned as a :class:`bptt_jax.lab.flow.StateFlow` (``norms``, ``decay``,
    ``decay_rate``, ``c_norms``, ``c_decay``), by the cell's hand recursion.

    Returns:
      A :class:`GradientFlow` (a ``StateFlow`` for a gated cell): ``delta_norms``
      ``(T, T)``, ``decay`` ``(T,)``,
      ``decay_rate`` ``()``, ``U_norm`` ``()``, ``max_slopes`` ``(T,)``,
      ``gamma`` ``()``, ``bound`` ``(T, T)``, ``gamma_bound`` ``(T, T)``,
      ``bound_decay`` ``(T,)``, ``gamma_decay`` ``(T,)``; for a
      :class:`DeepParams` each with a leading ``(L*D,)`` axis (cell ``l*D +
      d``; a backward-in-time cell's ``(T, T)`` fields are zero below the
      diagonal, and its distances run d = k − t).

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> flow = gradient_flow(params, jnp.array([0, 3, 1, 2]), jnp.array([3, 1, 4, 0]))
      >>> flow.delta_norms.shape, bool(jnp.all(flow.delta_norms <= flow.bound * (1 + 1e-6)))
      ((4, 4), True)
    """
    params, inp, options = take("gradient_flow", params, xs, ys, h0, keywords)
    check_quadratic_size("gradient_flow", inp.xs, inp.h0, inp.cell)
    deep, d = as_deep(params, inp)
    if inp.cell != "rnn":  # the §6 bounds are the vanilla cell's: measure the states'
        _gated_flow_refusals(deep, d)
        return state_flow_core(deep, d.xs, d.ys, d.h0, options=options)
    flow = deep_gradient_flow_core(
        deep, d.xs, d.ys, d.h0, d.mask, options=options, reduction=d.reduction
    )
    return GradientFlow(*(f[0] for f in flow)) if inp.seed else flow


def _gated_flow_refusals(deep, inp) -> None:
    """One-line errors for what :func:`gradient_flow` does not measure for a gated cell."""
    if deep.num_layers != 1 or deep.bidirectional:
        raise ValueError(
            f"gradient_flow of the {inp.cell} cell measures one layer in one direction; got "
            f"{deep.num_layers} layers, bidirectional={deep.bidirectional}"
        )
    if inp.mask is not None or inp.reduction != "sum":
        raise ValueError(
            f"gradient_flow of the {inp.cell} cell takes unpadded sequences and reduction='sum'"
        )


def _count(value: object, name: str, minimum: int = 1) -> int:
    return check_number(value, name, integer=True, minimum=minimum, strict=False)


@shares(diagnostics.spectral_sweep)
def spectral_sweep(key: jax.Array, **keywords) -> list[SweepRow]:
    r"""The seed's §6 claim tested on real runs: sweep the scale of :math:`U`.

    Checks its arguments, then runs
    :func:`bptt_jax.lab.diagnostics.spectral_sweep`, whose parameters it takes (see
    there for them and their defaults); ``precision`` of every matrix product as for
    :func:`bptt_jax.bptt`.

    Returns:
      One :class:`~bptt_jax.lab.diagnostics.SweepRow` per (activation, scale).
    """
    kw = keywords
    init = kw["init"]
    return diagnostics.spectral_sweep(
        check_key(key), scales=tuple(check_init(init, s)[1] for s in kw["scales"]),
        activations=tuple(check_activation(a) for a in kw["activations"]), init=init,
        vocab_size=_count(kw["vocab_size"], "vocab_size"),
        hidden_size=_count(kw["hidden_size"], "hidden_size"),
        batch=_count(kw["batch"], "batch"), steps=_count(kw["steps"], "steps"),
        tol=check_number(kw["tol"], "tol", strict=False),
        precision=check_precision(kw["precision"]),
    )  # fmt: skip


def delay_task(
    key: jax.Array,
    *,
    batch: int,
    steps: int,
    delay: int | jax.Array,
    vocab_size: int,
    dtype: jnp.dtype | str | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""One batch of the delay task, :math:`y_t = x_{t-d}` (uniform for t ≤ d).

    Checks its arguments, then runs :func:`bptt_jax.lab.tasks.delay_task`:
    ids ``(B, T)`` int32 and soft labels ``(B, T, K)``. A Python or NumPy
    ``delay`` must be in ``0..steps-1``; a ``delay`` held in a JAX array is
    not read back to the host: out of that range it makes every label NaN.
    """
    key = check_key(key)
    steps = _count(steps, "steps")
    if not isinstance(delay, jax.Array):
        delay = _count(delay, "delay", minimum=0)
        if delay >= steps:
            raise ValueError(f"delay must be in 0..steps-1 = 0..{steps - 1}, got {delay}")
    if dtype is not None:
        dtype = check_float_dtype(dtype)  # float64 without x64: an error, not float32
    return tasks.delay_task(
        key, batch=_count(batch, "batch"), steps=steps, delay=delay,
        vocab_size=_count(vocab_size, "vocab_size"), dtype=dtype,
    )  # fmt: skip


@shares(tasks.train_delay)
def train_delay(key: jax.Array, **keywords) -> tasks.DelayCurves:
    r"""Train one fresh RNN per delay d on the delay task; return the curves.

    Checks the configuration (delays in ``0..steps-1``, the remedy's
    activation, init, clipping), then runs :func:`bptt_jax.lab.tasks.train_delay`
    (whose parameters it takes: see there for them, their defaults and the returned
    ``DelayCurves``); ``precision`` of
    every matrix product as for :func:`bptt_jax.bptt`. ``remedy`` is a
    :class:`bptt_jax.lab.tasks.Remedy` (one of ``tasks.REMEDIES``, or your own), not
    a name: anything else is a TypeError listing the prepared ones.
    """
    kw = keywords
    key, remedy = check_key(key), kw["remedy"]
    if not isinstance(remedy, tasks.Remedy):
        names = "; ".join(f"REMEDIES[{i}] = {r.label!r}" for i, r in enumerate(tasks.REMEDIES))
        raise TypeError(
            f"remedy must be a bptt_jax.lab.tasks.Remedy, got {remedy!r}; "
            f"the prepared ones are {names}"
        )
    check_activation(remedy.activation)
    check_init(remedy.init, remedy.spectral_radius)
    remedy = remedy._replace(clip_delta=check_clip_delta(remedy.clip_delta))
    make_clipper(remedy.clip, remedy.clip_value)  # raises the clear error, if any
    steps = _count(kw["steps"], "steps")
    delays = tuple(_count(d, "delays[i]", minimum=0) for d in kw["delays"])
    if not delays or max(delays) >= steps:
        raise ValueError(f"delays must be in 0..steps-1 = 0..{steps - 1}, got {delays}")
    return tasks.train_delay(
        key, delays, remedy, steps=steps, vocab_size=_count(kw["vocab_size"], "vocab_size"),
        hidden_size=_count(kw["hidden_size"], "hidden_size"),
        batch=_count(kw["batch"], "batch"), iterations=_count(kw["iterations"], "iterations"),
        learning_rate=check_number(kw["learning_rate"], "learning_rate"),
        precision=check_precision(kw["precision"]),
    )  # fmt: skip
