r"""Softmax with cross-entropy, and its gradient (the seed's appendix 1).

.. math::

    \hat y = \mathrm{softmax}(z),\qquad E = -\sum_i y_i \log \hat y_i,\qquad
    \frac{\partial E}{\partial z_i} = \hat y_i \sum_j y_j - y_i

which is :math:`\hat y - y` whenever :math:`\sum_j y_j = 1`: for one-hot
labels, and equally for any probability vector (label smoothing, soft
targets). The seed's appendix prints :math:`\hat y_i \sum_{j \ne i} y_j - y_i`,
dropping the :math:`j = i` term (``docs/math.md`` §9, §14).

Labels come as integer class ids ``(...)`` or probability vectors
``(..., C)``; the dtype tells which.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def is_soft(y: jax.Array) -> bool:
    """True for probability-vector labels ``(..., C)``, False for class ids."""
    return jnp.issubdtype(y.dtype, jnp.floating)


def log_softmax(z: jax.Array) -> jax.Array:
    r""":math:`\log \hat y = z - \operatorname{logsumexp}(z)` over the last axis.

    Never the log of a softmax: finite for logits of any size (±1000 included).
    """
    return z - jax.nn.logsumexp(z, axis=-1, keepdims=True)


def cross_entropy(log_yhat: jax.Array, y: jax.Array) -> jax.Array:
    r""":math:`E = -\sum y^\top \log \hat y`, summed over every leading axis.

    Args:
      log_yhat: ``(..., C)``.
      y: class ids ``(...)`` or probability vectors ``(..., C)``.
    """
    if is_soft(y):
        # where(): a zero probability times log ŷ = -inf must give 0, not nan.
        return -jnp.sum(jnp.where(y == 0, 0, y * log_yhat))
    # mode="fill": an id out of range (possible only when validation was
    # skipped under tracing) gives NaN rather than a silently clamped class.
    log_p = jnp.take_along_axis(log_yhat, y[..., None], axis=-1, mode="fill")
    return jnp.sum(-log_p)  # a sum of negatives: +0.0 (not -0.0) when empty


def residual(log_yhat: jax.Array, y: jax.Array) -> jax.Array:
    r""":math:`r = \partial E/\partial z = \hat y \sum_j y_j - y`, ``(..., C)``.

    For class ids this is :math:`\hat y - y` with :math:`y` one-hot. For
    probability vectors the factor :math:`\sum_j y_j` (1 for valid labels) is
    kept, so that the result is the exact derivative even for labels that
    were not checked (under tracing).
    """
    yhat = jnp.exp(log_yhat)
    if is_soft(y):
        return yhat * jnp.sum(y, axis=-1, keepdims=True) - y
    return yhat - jax.nn.one_hot(y, log_yhat.shape[-1], dtype=log_yhat.dtype)


def softmax_cross_entropy(
    z: jax.Array, y: jax.Array, where: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    r"""The loss :math:`E = -\sum y^\top \log \hat y` and :math:`r = \partial E/\partial z`.

    One pass of :math:`e = \exp(z - \max z)` serves both:
    :math:`\hat y = e / \sum e` and :math:`\log\hat y = z - \max z - \log\sum e`
    (stable for logits of any size). Equal to :func:`cross_entropy` and
    :func:`residual` of :func:`log_softmax`, which take the exponential twice.

    Args:
      z: logits ``(..., C)``.
      y: class ids ``(...)`` or probability vectors ``(..., C)``.
      where: ``None``, or bool ``(...)``: the rows whose loss counts (E sums only
        those; ``r`` is not masked).

    Returns:
      ``(E, r)``: the summed loss and ``(..., C)``.
    """
    m = jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = m + jnp.log(s)  # log Σ_j exp(z_j)
    yhat = e / s
    if is_soft(y):
        terms = jnp.where(y == 0, 0, y * (z - lse))
        E = -jnp.sum(terms if where is None else jnp.where(where[..., None], terms, 0))
        return E, yhat * jnp.sum(y, axis=-1, keepdims=True) - y
    z_y = jnp.take_along_axis(z, y[..., None], axis=-1, mode="fill")
    E = jnp.sum(lse - z_y if where is None else jnp.where(where[..., None], lse - z_y, 0))
    return E, yhat - jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)


def softmax_cross_entropy_grad(z: jax.Array, y: jax.Array) -> jax.Array:
    r"""The seed's appendix 1: :math:`\partial E/\partial z` of softmax + cross-entropy.

    .. math::

        \frac{\partial E}{\partial z_i} = \hat y_i \sum_j y_j - y_i = \hat y_i - y_i
        \quad\text{when } \textstyle\sum_j y_j = 1

    Args:
      z: logits ``(..., C)``.
      y: integer class ids ``(...)`` or probability vectors ``(..., C)``.

    Returns:
      ``(..., C)``, computed from a stable log-softmax (no overflow for large
      logits).

    Example:
      >>> softmax_cross_entropy_grad(jnp.array([2.0, 0.0, -1.0]), jnp.array(0))
      Array([-0.1562...,  0.1141...,  0.0420...], dtype=float32)
    """
    z = jnp.asarray(z)
    y = jnp.asarray(y)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"z must be floating point logits, got dtype {z.dtype}")
    expected = z.shape if is_soft(y) else z.shape[:-1]
    if y.shape != expected:
        raise ValueError(
            f"y has shape {y.shape}, expected {expected} "
            f"({'probability vectors' if is_soft(y) else 'class ids'} for logits {z.shape})"
        )
    return residual(log_softmax(z), y.astype(z.dtype) if is_soft(y) else y)
