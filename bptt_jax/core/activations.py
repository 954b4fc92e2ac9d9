r"""The hidden activations of the seed's appendix 2, each with its derivative
written from the OUTPUT :math:`h = f(s)`.

======== ===================================== ==================================
name     :math:`f(s)`                           :math:`f'` from :math:`h`
======== ===================================== ==================================
tanh     :math:`(e^s - e^{-s})/(e^s + e^{-s})`  :math:`1 - h^2`
sigmoid  :math:`1/(1 + e^{-s})`                 :math:`h(1 - h)`
relu     :math:`\max(0, s)`                     :math:`1[h > 0]` (0 at s = 0)
======== ===================================== ==================================

Writing :math:`f'` from :math:`h` is what lets the backward pass keep only the
hidden states: the BPTT code stores ``hs`` and never ``s``. Every recursion in
the package looks its activation up here by name (:func:`get_activation`);
there is one BPTT implementation, not one per activation.

ReLU at exactly :math:`s = 0` has derivative 0 here, the convention of
``jax.nn.relu`` and PyTorch, so the hand gradient and ``jax.grad`` agree there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Activation(NamedTuple):
    name: str
    f: Callable[[jax.Array], jax.Array]  # s -> h
    df_from_h: Callable[[jax.Array], jax.Array]  # h -> f'(s)
    max_slope: float  # max_s |f'(s)|: the factor of the seed's §6 bound


def _tanh_df(h):
    return 1 - h * h


def _sigmoid_df(h):
    return h * (1 - h)


def _relu_df(h):
    return (h > 0).astype(h.dtype)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", jnp.tanh, _tanh_df, 1.0),
    "sigmoid": Activation("sigmoid", jax.nn.sigmoid, _sigmoid_df, 0.25),
    "relu": Activation("relu", jax.nn.relu, _relu_df, 1.0),
}


def get_activation(name: str) -> Activation:
    """The :class:`Activation` called ``name``; ValueError naming the choices."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(map(repr, ACTIVATIONS))}"
        ) from None
