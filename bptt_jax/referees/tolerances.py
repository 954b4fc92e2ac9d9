r"""How close a hand gradient must be to its referee: one table, one error measure.

Used by the tests, ``bptt-jax check``, ``bptt-jax bench``'s agreement column and
``bptt-jax train --verify-every``. Every comparison is a relative error in the
max norm, :func:`max_relative_error`, at JAX's ``"highest"`` matmul precision.
"""

from __future__ import annotations

import jax
import numpy as np

#: The matmul precision every comparison is made at, on both sides (the hand gradient
#: and its referee): full float32 products on every backend (a GPU's default, TF32,
#: rounds each product to about 1e-3 relative, which the float32 bound is not for).
VERIFY_PRECISION = "highest"

#: Hand vs ``jax.grad`` of the same loss, by the parameters' dtype. ``"bfloat16"``
#: is the ``matmul_dtype="bfloat16"`` mode: four bf16 ulps (2**-8 each).
AUTODIFF = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 4 * 2.0**-8}

#: Hand vs central finite differences (6th-order stencil, always in float64 for
#: ``check``): a few 1e-11 relative on the default models, so the bound is the
#: method's accuracy, not the hand gradient's.
FINITE_DIFF = {"float64": 1e-9, "float32": 1e-4}


def max_relative_error(actual, expected) -> float:
    r"""Over the leaves of two pytrees, the worst :math:`\max|a - e| / \max|e|`.

    Normalising by the reference's largest entry (rather than entry by entry)
    keeps entries that are zero in exact arithmetic from dividing by
    round-off. Where ``expected`` is all zeros this is the absolute error; an
    empty leaf contributes 0. An array may be compared with a nested list of
    numbers (``np.asarray`` of each side). Computed on the host in float64.
    """
    worst = 0.0
    a_leaves, e_leaves = jax.tree.leaves(actual), jax.tree.leaves(expected)
    if len(a_leaves) != len(e_leaves):  # an array against a nested list of numbers
        a_leaves, e_leaves = [np.asarray(actual)], [np.asarray(expected)]
    for a, e in zip(a_leaves, e_leaves, strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        if a.size == 0:
            continue
        err = float(np.max(np.abs(a - e)))
        scale = float(np.max(np.abs(e)))
        worst = max(worst, err / scale if scale > 0 else err)
    return worst
