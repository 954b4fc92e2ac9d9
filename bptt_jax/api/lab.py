r"""The public gradient-flow diagnostics (``docs/math.md`` §6)."""

from __future__ import annotations

from ..core.params import Params
from ..lab.diagnostics import GradientFlow, gradient_flow_core
from .validate import check_activation, check_inputs


def gradient_flow(params: Params, xs, ys, h0=None, *, activation="tanh") -> GradientFlow:
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

    Args:
      params, xs, ys, h0: as for :func:`bptt_jax.bptt` (one sequence or a
        batch ``(B, T)``; ids or vectors; class ids or soft labels).
      activation: ``"tanh"``, ``"sigmoid"`` or ``"relu"``.

    Returns:
      A :class:`GradientFlow`: ``delta_norms`` ``(T, T)``, ``decay`` ``(T,)``,
      ``decay_rate`` ``()``, ``U_norm`` ``()``, ``max_slopes`` ``(T,)``,
      ``gamma`` ``()``, ``bound`` ``(T, T)``, ``gamma_bound`` ``(T, T)``,
      ``bound_decay`` ``(T,)``, ``gamma_decay`` ``(T,)``.

    Example:
      >>> params = init_params(jax.random.key(0), vocab_size=5, hidden_size=8)
      >>> flow = gradient_flow(params, jnp.array([0, 3, 1, 2]), jnp.array([3, 1, 4, 0]))
      >>> flow.delta_norms.shape, bool(jnp.all(flow.delta_norms <= flow.bound * (1 + 1e-6)))
      ((4, 4), True)
    """
    activation = check_activation(activation)
    params, inp = check_inputs(params, xs, ys, h0, need_ys=True)
    return gradient_flow_core(params, inp.xs, inp.ys, inp.h0, activation=activation)
