r"""The public referees: autodiff and finite differences of the same loss.

These are what the hand gradients of :mod:`bptt_jax.api.gradients` are checked
against; the computations live in :mod:`bptt_jax.referees`. Each takes every
model :func:`bptt_jax.bptt` takes: the seed's :class:`Params`, a stacked or
bidirectional :class:`DeepParams`, ``lengths``/``mask`` and ``reduction``.
"""

from __future__ import annotations

import functools

import jax

from ..core.checks import check_number
from ..core.deep import deep_loss_core
from ..core.options import Options
from ..referees.autodiff import (
    _chunked_grad,
    _h0_grad,
    _windowed_grad,
    deep_h0_grad,
    deep_value_and_grad,
)
from ..referees.finite_difference import finite_difference_core
from .call import take
from .gradients import bptt_per_loss
from .signatures import shares
from .validate import (
    Inputs,
    Model,
    as_deep,
    grads_like,
    refuse,
    state_like,
    unbatch,
)

_TRUNCATE_WHY = "leave truncate=None (the exact gradient) for deep, padded or mean losses"


def _deep_grad(params: Model, inp: Inputs, options: Options) -> tuple[jax.Array, Model]:
    """``jax.value_and_grad`` of the deep loss, for any model of :func:`as_deep`."""
    deep, d = as_deep(params, inp)
    E, grads = deep_value_and_grad(
        deep, d.xs, d.ys, d.h0, d.mask, options=options, reduction=d.reduction
    )
    return E, grads_like(inp, grads)


@shares(bptt_per_loss)
def autodiff_bptt(
    params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None, **keywords
) -> tuple[jax.Array, Model]:
    """Reference ``(E, grads)`` by ``jax.value_and_grad`` of :func:`bptt_jax.loss`.

    The arguments of :func:`bptt_per_loss` (documented there), the checks and return
    value of :func:`bptt_jax.bptt`; with
    ``truncate=τ`` (the seed's Params on unpadded sequences with
    ``reduction="sum"`` only) the state is detached after every τ-th step, so
    autodiff cuts the gradient where :func:`bptt_jax.bptt` does. ``precision``, of
    every product of the loss and so of its autodiff transpose, as for
    :func:`bptt_jax.bptt`: compare at ``"highest"`` for backend-independent
    tolerances.
    """
    params, inp, options = take("autodiff_bptt", params, xs, ys, h0, keywords)
    refuse("autodiff_bptt", ["truncate"] * (options.truncate is not None), params, inp,
           _TRUNCATE_WHY)  # fmt: skip
    if options.truncate is not None:  # the seed's loss with the state detached every τ steps
        return _chunked_grad(params, inp.xs, inp.ys, inp.h0, options=options)
    return _deep_grad(params, inp, options)


@shares(bptt_per_loss)
def autodiff_dh0(
    params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None, **keywords
) -> jax.Array:
    r"""Reference :math:`\partial E/\partial h_0` by ``jax.grad``, shaped like ``h0``.

    ``(H,)`` / ``(B, H)`` for :class:`Params`, ``(L*D, [B,] H)`` for a
    :class:`DeepParams`. Arguments (``precision`` too) as :func:`autodiff_bptt`.
    """
    params, inp, options = take("autodiff_dh0", params, xs, ys, h0, keywords)
    refuse("autodiff_dh0", ["truncate"] * (options.truncate is not None), params, inp,
           _TRUNCATE_WHY)  # fmt: skip
    if options.truncate is not None:  # the seed's loss with the state detached every τ steps
        return unbatch(inp, _h0_grad(params, inp.xs, inp.ys, inp.h0, options=options))
    deep, d = as_deep(params, inp)
    dh0 = deep_h0_grad(deep, d.xs, d.ys, d.h0, d.mask, options=options, reduction=d.reduction)
    return state_like(inp, dh0)


@shares(bptt_per_loss)
def autodiff_bptt_per_loss(
    params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None, **keywords
) -> tuple[jax.Array, Model]:
    """Reference for :func:`bptt_jax.bptt_per_loss` by ``jax.value_and_grad``.

    With ``truncate=τ`` (the seed's setting only) each E_t is recomputed from
    the state τ steps back, detached, so autodiff sees exactly the sliding
    window; without it this is :func:`autodiff_bptt`'s exact gradient. ``precision`` as
    :func:`autodiff_bptt`.
    """
    params, inp, options = take("autodiff_bptt_per_loss", params, xs, ys, h0, keywords)
    refuse(
        "autodiff_bptt_per_loss", ["truncate"] * (options.truncate is not None), params, inp,
        _TRUNCATE_WHY,
    )  # fmt: skip
    if options.truncate is not None:  # each E_t from the state τ steps back, detached
        return _windowed_grad(params, inp.xs, inp.ys, inp.h0, options=options)
    return _deep_grad(params, inp, options)


@shares(bptt_per_loss, drop=("truncate",), extra={"eps": ("float", 2e-4)})
def finite_difference_bptt(
    params: Model, xs: jax.Array, ys: jax.Array, h0: jax.Array | None = None, **keywords
) -> tuple[jax.Array, Model]:
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
    round-off dominates. Takes every model of :func:`bptt_jax.bptt` (any
    pytree of parameters is raveled into one vector).

    Args:
      params, xs, ys, h0, lengths, mask, reduction, activation, precision: as for
        :func:`bptt_per_loss` (``precision``: of every matrix product of the loss
        evaluations, and of the stencil's weighted sum).
      eps: the step :math:`\epsilon > 0`.

    Returns:
      ``(E, grads)``, ``grads`` a pytree like ``params``.
    """
    eps = check_number(keywords.pop("eps"), "eps")
    params, inp, options = take("finite_difference_bptt", params, xs, ys, h0, keywords)
    deep, d = as_deep(params, inp)
    loss_of = functools.partial(
        deep_loss_core, xs=d.xs, ys=d.ys, h0=d.h0, mask=d.mask, options=options,
        reduction=d.reduction,
    )  # fmt: skip
    E, grads = finite_difference_core(loss_of, deep, eps=eps, options=options)
    return E, grads_like(inp, grads)
