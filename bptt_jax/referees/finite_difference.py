r"""The second referee: central finite differences of the loss, sixth order."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..core.options import DEFAULT, Options

PyTree = object


def finite_difference_core(
    loss_of: Callable[[PyTree], jax.Array],
    params: PyTree,
    *,
    eps: float = 2e-4,
    options: Options = DEFAULT,
) -> tuple[jax.Array, PyTree]:
    """``(E, grads)`` of ``loss_of`` at ``params`` (any pytree of float arrays); no checks.

    :func:`bptt_jax.finite_difference_bptt` passes the loss of the model it was
    given (the seed's, or the deep / padded one) with the data bound in, its products at
    the same ``precision`` as the stencil's weighted sum here (a ``jax.lax.Precision``, or
    ``None``: JAX's default).
    """
    flat, unravel = ravel_pytree(params)

    def loss_at(theta):
        return loss_of(unravel(theta))

    steps = jnp.asarray([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], flat.dtype) * eps  # (6,)
    weights = jnp.asarray([-1 / 60, 3 / 20, -3 / 4, 3 / 4, -3 / 20, 1 / 60], flat.dtype) / eps

    @jax.jit
    def partials(flat):
        def one(i):  # the partial derivative along coordinate i
            Es = jax.vmap(lambda s: loss_at(flat.at[i].add(s)))(steps)  # (6,)
            return jnp.matmul(Es, weights, precision=options.precision)

        return jax.lax.map(one, jnp.arange(flat.size), batch_size=64)  # (P,)

    return loss_at(flat), unravel(partials(flat))
