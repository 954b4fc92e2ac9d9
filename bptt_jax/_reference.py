"""The referees: gradients of the same loss NOT derived by hand.

These exist to check :func:`bptt_jax.bptt`, never to train with. The autodiff
reference differentiates :func:`bptt_jax.loss` with ``jax.value_and_grad``;
the finite-difference reference only evaluates the loss, so it shares no
derivative code with either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._params import Params
from ._rnn import loss_core
from ._validate import check_inputs

_autodiff_core = jax.jit(jax.value_and_grad(loss_core))


def autodiff_bptt(params: Params, xs, ys, h0=None) -> tuple[jax.Array, Params]:
    """Reference ``(E, grads)`` by ``jax.value_and_grad`` of :func:`bptt_jax.loss`.

    Same arguments, checks and return value as :func:`bptt_jax.bptt`.
    """
    params, inp = check_inputs(params, xs, ys, h0, need_ys=True)
    return _autodiff_core(params, inp.xs, inp.ys, inp.h0)


def finite_difference_bptt(
    params: Params, xs, ys, h0=None, *, eps: float = 2e-4
) -> tuple[jax.Array, Params]:
    r"""Reference ``(E, grads)`` by central finite differences of the loss.

    Every parameter entry :math:`\theta_i` is perturbed on its own, and the
    partial derivative taken with the sixth-order central stencil

    .. math::

        \frac{\partial E}{\partial \theta_i} \approx \frac{1}{\epsilon}
        \sum_{j=1}^{3} a_j \bigl(E(\theta + j\epsilon e_i) - E(\theta - j\epsilon e_i)\bigr),
        \quad a = (\tfrac34, -\tfrac{3}{20}, \tfrac{1}{60})

    whose truncation error is :math:`O(\epsilon^6)`: with the default
    :math:`\epsilon = 2 \cdot 10^{-4}` in float64 it agrees with the exact
    gradient to a few 1e-11 relative, even where tanh is strongly curved (a
    4th-order stencil at 1e-3 was off by up to 1e-6 on such models). Costs
    ``6 * P`` loss evaluations for ``P`` parameters (batched with ``vmap``),
    so it is meant for small models. Use float64 parameters; in float32
    round-off dominates.
    """
    params, inp = check_inputs(params, xs, ys, h0, need_ys=True)
    flat, unravel = ravel_pytree(params)

    def loss_at(theta):
        return loss_core(unravel(theta), inp.xs, inp.ys, inp.h0)

    steps = jnp.asarray([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], flat.dtype) * eps  # (6,)
    weights = jnp.asarray([-1 / 60, 3 / 20, -3 / 4, 3 / 4, -3 / 20, 1 / 60], flat.dtype) / eps

    @jax.jit
    def partials(flat):
        def one(i):  # the partial derivative along coordinate i
            Es = jax.vmap(lambda s: loss_at(flat.at[i].add(s)))(steps)  # (6,)
            return Es @ weights

        return jax.lax.map(one, jnp.arange(flat.size), batch_size=64)  # (P,)

    return loss_at(flat), unravel(partials(flat))
