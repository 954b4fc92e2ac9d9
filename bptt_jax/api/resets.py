"""The check of ``resets=``, shared by every public function that takes it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .arrays import is_concrete


def check_resets(resets, steps_shape, mask):
    """``resets`` ``(B, T)`` / ``(T,)`` bool -> ``(B, T)`` bool, or None.

    Args:
      resets: True where a sequence starts afresh (the state entering that step is h0).
        ``(T,)`` for a batch ``(B, T)``: the same steps of every sequence (broadcast).
      steps_shape: the shape of ``xs``' steps: ``(B, T)`` or ``(T,)``.
      mask: the batched ``(B, T)`` mask of real steps, or None. A reset on a padded
        step is a ValueError (checked on concrete arrays; ignored under tracing).
    """
    if resets is None:
        return None
    if not hasattr(resets, "dtype"):
        resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(f"resets must be boolean (True where a sequence restarts), got dtype "
                        f"{resets.dtype}")  # fmt: skip
    steps_shape = tuple(steps_shape)
    if len(steps_shape) == 2 and resets.shape == steps_shape[1:]:  # (T,): every sequence
        resets = jnp.broadcast_to(resets, steps_shape)
    if resets.shape != steps_shape:
        expected = f"{steps_shape} (as xs' steps)"
        if len(steps_shape) == 2:
            expected += f" or {steps_shape[1:]} (the same steps of every sequence)"
        raise ValueError(f"resets has shape {resets.shape}, expected {expected}")
    resets = resets.reshape((steps_shape[0] if len(steps_shape) == 2 else 1, steps_shape[-1]))
    if mask is not None and is_concrete(resets) and is_concrete(mask):
        bad = np.asarray(resets) & ~np.asarray(mask)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(
                f"resets[{b}, {t}] is True on a padded step (past that sequence's length); "
                f"a reset must fall on a real step"
            )
    return resets
