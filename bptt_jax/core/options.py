r"""How a model is computed and differentiated: one frozen, hashable value.

Every core function takes one :class:`Options` (a static argument of its ``jax.jit``)
instead of a keyword per option: the cell (which recursion, with its activation) and
how the hand backward runs it. The api layer checks the user's keywords once and
builds it (:func:`bptt_jax.api.options.build_options`); below the api it travels
whole. Pure: no I/O, no globals.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax.numpy as jnp

from .cell import RNNCell


class Options(NamedTuple):
    r"""The cell and the backward pass's options (``docs/math.md`` §4, §6;
    ``docs/performance.md``).

    Attributes:
      cell: the recurrent cell, whose equations live in one module
        (:class:`~bptt_jax.core.cell.RNNCell`: :math:`h_t = f(U h_{t-1} + W x_t + b)`).
      truncate: ``None``, or τ ≥ 1: the state recursion's gradient is cut every τ steps.
      clip_delta: ``None``, or θ > 0: each sequence's δ_t rescaled to norm ≤ θ.
      chunk: steps per chunk of the backward pass (``None``: the backend's default).
      recompute: keep only the states entering each chunk; recompute the rest.
      unroll: ``lax.scan``'s ``unroll`` for both recursions.
      matmul_dtype: ``None`` (products in the parameters' dtype) or ``bfloat16``
        operands accumulated in the parameters' dtype.
      kernel: ``"scan"`` (``lax.scan`` steps) or ``"pallas"`` (the fused kernels).
      precision: every matrix product's ``jax.lax.Precision``, or ``None`` (JAX's
        default matmul precision when traced).
    """

    cell: RNNCell = RNNCell()
    truncate: int | None = None
    clip_delta: float | None = None
    chunk: int | None = None
    recompute: bool = False
    unroll: int = 1
    matmul_dtype: Any = None
    kernel: str = "scan"
    precision: Any = None

    @property
    def pallas(self) -> bool:
        """Whether the two recursions run as the Pallas kernels."""
        return self.kernel == "pallas"

    def products(self, dtype) -> tuple[Any, Any]:
        """``(mm, cast)``: the matrix product of every step and chunk, and the cast of its
        operands (to ``matmul_dtype``, once per call); accumulation in ``dtype``."""
        matmul_dtype, precision = self.matmul_dtype, self.precision
        if matmul_dtype is None:
            return functools.partial(jnp.matmul, precision=precision), casting(None)

        def mm(a, b):  # bf16 operands, accumulated in dtype (mixed precision)
            return jnp.matmul(
                a.astype(matmul_dtype), b.astype(matmul_dtype), precision=precision,
                preferred_element_type=dtype,
            )  # fmt: skip

        return mm, casting(matmul_dtype)


def casting(matmul_dtype):
    """The cast of a product's operands: identity, or to ``matmul_dtype``."""
    if matmul_dtype is None:
        return lambda a: a
    return lambda a: a.astype(matmul_dtype)


#: The seed's model with every option at its default.
DEFAULT = Options()
