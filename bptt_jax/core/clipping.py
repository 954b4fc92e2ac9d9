r"""Gradient clipping, the classic remedy for exploding gradients, three ways.

=============== ===============================================================
where           what
=============== ===============================================================
``elementwise`` every entry of every gradient clipped to :math:`[-v, v]`
                (``optax.clip``; :math:`v = 5` in the classic numpy character RNN)
``global_norm`` all gradients rescaled together when
                :math:`\|g\|_2 = (\sum_\theta \|\partial E/\partial\theta\|_F^2)^{1/2}
                > v`: :math:`g \leftarrow g\, v/\|g\|_2` (``optax.clip_by_global_norm``;
                Pascanu, Mikolov & Bengio 2013)
per-step δ      inside the hand backward recursion, each sequence's
                :math:`\delta_t` rescaled to norm :math:`\le θ` before it
                propagates: ``bptt(..., clip_delta=θ)``
=============== ===============================================================

The first two are ``optax`` transformations built by :func:`make_clipper` and
chained before the optimiser; the third changes the recursion itself. Every
one of them gives, by design, a vector that is no longer the exact gradient of
:math:`E` once it is active.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checks import check_number

if TYPE_CHECKING:  # optax is imported when a clipper is made (a lazy, optional import)
    import optax

#: The names accepted by :func:`make_clipper` (``"none"`` turns clipping off).
CLIPPERS = ("none", "elementwise", "global_norm")

#: The threshold each clipper uses when none is given.
DEFAULT_CLIP_VALUE = {"none": None, "elementwise": 5.0, "global_norm": 5.0}


def check_clip_delta(clip_delta) -> float | None:
    """``None`` (no per-step δ clipping) or a finite threshold θ > 0; else a clear error."""
    if clip_delta is None:
        return None
    return check_number(clip_delta, "clip_delta")


def make_clipper(name: str = "none", value: float | None = None) -> optax.GradientTransformation:
    r"""An ``optax`` gradient transformation that clips, selected by name.

    Args:
      name: ``"none"`` (``optax.identity()``), ``"elementwise"``
        (``optax.clip(v)``: :math:`g_i \leftarrow \min(\max(g_i, -v), v)`) or
        ``"global_norm"`` (``optax.clip_by_global_norm(v)``: :math:`g
        \leftarrow g \min(1, v/\|g\|_2)` over all parameters together).
      value: the threshold :math:`v > 0`; ``None`` for the default (5 for
        both, the classic character RNN's ±5).

    Returns:
      An ``optax.GradientTransformation``; chain it before the optimiser,
      ``optax.chain(make_clipper("global_norm", 1.0), optax.adam(1e-2))``.
      Per-step clipping of :math:`\delta_t` is not here: it lives inside the
      hand recursion, ``bptt(..., clip_delta=θ)``.
    """
    import optax

    if not isinstance(name, str) or name not in CLIPPERS:
        raise ValueError(
            f"unknown clipping {name!r}; expected one of {', '.join(map(repr, CLIPPERS))} "
            "(per-step clipping of delta is bptt(..., clip_delta=θ))"
        )
    if name == "none":
        if value is not None:
            raise ValueError(f"clipping 'none' takes no value, got {value!r}")
        return optax.identity()
    v = DEFAULT_CLIP_VALUE[name] if value is None else check_number(value, "clip value")
    return optax.clip(v) if name == "elementwise" else optax.clip_by_global_norm(v)
