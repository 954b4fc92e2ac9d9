r"""Initialisation schemes for the recurrent layer, selectable by name.

The seed's §6 bound :math:`\|\delta_k^{(t)}\| \le \|\delta_t^{(t)}\|\,\gamma^{t-k}`,
:math:`\gamma = \|U\|_2 \max|f'|`, makes the scale of :math:`U` at
initialisation the first thing to look at when gradients vanish or explode.

============== ================================================================
name           :math:`U` (``W`` and ``V`` as noted)
============== ================================================================
``normal``     :math:`U, W, V \sim \mathcal N(0, 0.01^2)`: the seed's "small
               random" weights (``randn * 0.01`` of the classic numpy
               character RNN). :math:`\|U\|_2 \approx 0.02\sqrt H`: vanishing.
``uniform``    :math:`U, W, V \sim \mathcal U(\pm 1/\sqrt H)`: PyTorch's
               ``nn.RNN`` (the package default). :math:`\|U\|_2 \approx 2/\sqrt 3`.
``orthogonal`` :math:`U = Q`, a random orthogonal matrix (QR of a Gaussian,
               signs fixed so that Q is Haar distributed): every singular value
               and every eigenvalue modulus is 1. ``W, V`` uniform.
``identity``   :math:`U = I` (IRNN: Le, Jaitly & Hinton 2015, meant for
               ``activation="relu"``, where :math:`h_t = h_{t-1}` until inputs
               arrive). ``W, V`` uniform, ``b = 0``.
``spectral``   :math:`U \sim \mathcal N(0, 1/H)` rescaled to the spectral
               radius given by ``spectral_radius`` (required). ``W, V`` uniform.
============== ================================================================

``spectral_radius=ρ`` with any other scheme rescales that scheme's :math:`U` so
that :math:`\max_i |\lambda_i(U)| = ρ` (for ``orthogonal`` and ``identity`` this
is also :math:`\|U\|_2 = ρ`, since all their singular values are equal).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checks import check_number

#: The names accepted by ``init_params(init=...)``.
INITS = ("normal", "uniform", "orthogonal", "identity", "spectral")

# The seed's "small random" standard deviation (``randn * 0.01``).
NORMAL_STD = 0.01


def check_init(init, spectral_radius) -> tuple[str, float | None]:
    """Validates an ``init`` name and a ``spectral_radius``; clear errors otherwise."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(map(repr, INITS))}")
    if spectral_radius is not None:
        spectral_radius = check_number(
            spectral_radius, "spectral_radius",
            expected="a finite number > 0 (the largest |eigenvalue| of U) or None",
        )  # fmt: skip
    elif init == "spectral":
        raise ValueError(
            "init='spectral' needs spectral_radius=ρ > 0, the largest |eigenvalue| of U"
        )
    return init, spectral_radius


def spectral_radius_of(U) -> float:
    r""":math:`\max_i |\lambda_i(U)|`, computed on the host in float64."""
    U = np.asarray(U, np.float64)
    return float(np.max(np.abs(np.linalg.eigvals(U)))) if U.size else 0.0


def orthogonal(key: jax.Array, n: int, dtype) -> jax.Array:
    r"""A Haar-random orthogonal ``(n, n)`` matrix: :math:`Q` of :math:`A = QR`,
    :math:`A_{ij} \sim \mathcal N(0, 1)`, with columns multiplied by
    :math:`\operatorname{sign}(R_{ii})`."""
    A = jax.random.normal(key, (n, n), dtype)
    Q, R = jnp.linalg.qr(A)
    d = jnp.sign(jnp.diagonal(R))
    return Q * jnp.where(d == 0, 1, d).astype(dtype)


def init_layer(
    kU: jax.Array,
    kW: jax.Array,
    input_size: int,
    hidden_size: int,
    *,
    init: str = "uniform",
    spectral_radius: float | None = None,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    r"""One recurrent layer's matrices :math:`U` ``(H, H)`` and :math:`W` ``(H, K)``.

    Args:
      kU, kW: ``jax.random`` keys for :math:`U` and :math:`W`.
      input_size: ``K``, the columns of ``W``.
      hidden_size: ``H``.
      init: one of :data:`INITS` (see the module docstring).
      spectral_radius: ``None``, or ρ > 0 to rescale :math:`U` to
        :math:`\max_i|\lambda_i(U)| = ρ` (required for ``init="spectral"``).
      dtype: a floating dtype.

    Returns:
      ``(U, W)``.
    """
    init, spectral_radius = check_init(init, spectral_radius)
    K, H = input_size, hidden_size
    W = init_matrix(kW, (H, K), H, init=init, dtype=dtype)
    if init == "normal":
        U = NORMAL_STD * jax.random.normal(kU, (H, H), dtype)
    elif init == "uniform":
        U = init_matrix(kU, (H, H), H, init=init, dtype=dtype)
    elif init == "orthogonal":
        U = orthogonal(kU, H, dtype)
    elif init == "identity":
        U = jnp.eye(H, dtype=dtype)
    else:  # spectral
        U = jax.random.normal(kU, (H, H), dtype) / math.sqrt(H)
    if spectral_radius is not None:
        rho = spectral_radius_of(U)
        if rho == 0:
            raise ValueError(f"U drawn by init={init!r} is nilpotent; cannot rescale it")
        U = (U * (spectral_radius / rho)).astype(dtype)
    return U, W


def init_matrix(key: jax.Array, shape: tuple[int, int], H: int, *, init: str, dtype) -> jax.Array:
    r"""A ``W`` ``(H, K)`` or ``V`` ``(C, H)`` matrix: :math:`\mathcal N(0, 0.01^2)` for
    ``init="normal"``, :math:`\mathcal U(\pm 1/\sqrt H)` for every other scheme."""
    if init == "normal":
        return NORMAL_STD * jax.random.normal(key, shape, dtype)
    bound = 1.0 / math.sqrt(H)
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


class Scheme(NamedTuple):
    """How a model is initialised and which cell it has (``bptt_jax.init_params``'s
    ``init``, ``spectral_radius``, ``cell`` and ``forget_bias``), as one value."""

    init: str = "uniform"
    spectral_radius: float | None = None
    cell: str = "rnn"
    forget_bias: float = 0.0


#: The default :class:`Scheme`: PyTorch's uniform draws, the vanilla cell.
DEFAULT_SCHEME = Scheme()
