r"""The second referee: central finite differences of the loss, sixth order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..core.params import Params
from ..core.rnn import loss_core


def finite_difference_core(
    params: Params, xs, ys, h0, *, activation: str = "tanh", eps: float = 2e-4
) -> tuple[jax.Array, Params]:
    """:func:`bptt_jax.finite_difference_bptt` on the batched layout; no checks."""
    flat, unravel = ravel_pytree(params)

    def loss_at(theta):
        return loss_core(unravel(theta), xs, ys, h0, activation=activation)

    steps = jnp.asarray([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], flat.dtype) * eps  # (6,)
    weights = jnp.asarray([-1 / 60, 3 / 20, -3 / 4, 3 / 4, -3 / 20, 1 / 60], flat.dtype) / eps

    @jax.jit
    def partials(flat):
        def one(i):  # the partial derivative along coordinate i
            Es = jax.vmap(lambda s: loss_at(flat.at[i].add(s)))(steps)  # (6,)
            return Es @ weights

        return jax.lax.map(one, jnp.arange(flat.size), batch_size=64)  # (P,)

    return loss_at(flat), unravel(partials(flat))
