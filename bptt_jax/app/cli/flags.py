"""The command line's argument types, shared by every command's flags.

Every numeric flag is checked by :func:`bptt_jax.core.checks.check_number`, the
rule the library's keywords follow (so ``--lr inf`` and ``--lr nan`` are refused
as ``lr=inf`` is); every ``choices=`` is one of the library's lists.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ...core.checks import check_number
from ..training.config import SEED_RANGE

#: The smallest normal float64; a positive real flag below it is refused as it is parsed
#: (the run's own dtype is checked later: float32's is 1.2e-38, ``config.check_underflow``).
FLOAT64_TINY = float(np.finfo(np.float64).tiny)


def number(*, integer: bool, minimum: float, strict: bool) -> Callable[[str], int | float]:
    """An argparse ``type=``: the text as a number that :func:`check_number` accepts."""
    relation = ">" if strict else ">="

    def parse(text: str) -> int | float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(
                f"must be {kind} {relation} {minimum:g}, got {text!r}"
            ) from None
        try:
            value = check_number(value, "value", integer=integer, minimum=minimum, strict=strict)
        except (TypeError, ValueError) as e:
            # "must be >= 1, got 0" for counts; check_number's own words for reals.
            message = f"must be {relation} {minimum:g}, got {text}"
            raise argparse.ArgumentTypeError(
                message if integer else str(e).removeprefix("value ")
            ) from None
        if not integer and 0 < abs(value) < FLOAT64_TINY:  # a subnormal even in float64
            raise argparse.ArgumentTypeError(
                f"must be 0 or at least {FLOAT64_TINY:.3g} (the smallest normal float64), "
                f"got {text}: it underflows"
            )
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in errors
    return parse


positive = number(integer=True, minimum=1, strict=False)  # 1, 2, ...
nonnegative = number(integer=True, minimum=0, strict=False)  # 0, 1, ...
positive_float = number(integer=False, minimum=0, strict=True)  # finite, > 0
nonnegative_float = number(integer=False, minimum=0, strict=False)  # finite, >= 0


def real(text: str) -> float:
    """An argparse ``type=``: any finite number (``--forget-bias -2`` as well as ``3``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def integer_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``low..high`` (no overflow further on)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


seed = integer_range(*SEED_RANGE)  # what jax.random.key takes


def _list_of(item: Callable[[str], int | float]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [item(v) for v in text.split(",")]
        if not values:
            raise argparse.ArgumentTypeError("must not be empty")
        return values

    parse.__name__ = "list"
    return parse


number_list = _list_of(positive_float)  # "0.5,1,2": finite, > 0
integer_list = _list_of(nonnegative)  # "0,2,5,10": >= 0


def defaults_of(function: Callable) -> dict[str, Any]:
    """The keyword defaults of ``function``: a command's flags default to those of the
    work it runs, stated once there."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def add_sizes(add: Callable, defaults: dict, *, steps_type: Callable = positive) -> None:
    """The model's and the batch's sizes, ``-K -H -B -T``, as ``check``, ``bench`` and
    ``diagnose`` take them (``add``: the parser's ``add_argument``; ``defaults``: the
    work's)."""
    d = defaults
    add("--vocab-size", "-K", type=positive, default=d["vocab_size"],
        help=f"K (default {d['vocab_size']})")  # fmt: skip
    add("--hidden-size", "-H", type=positive, default=d["hidden_size"],
        help=f"H (default {d['hidden_size']})")  # fmt: skip
    add("--batch", "-B", type=positive, default=d["batch"],
        help=f"B sequences (default {d['batch']})")  # fmt: skip
    add("--steps", "-T", type=steps_type, default=d["steps"],
        help=f"T steps per sequence (default {d['steps']})")  # fmt: skip
