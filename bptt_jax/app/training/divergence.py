r"""When a training run has diverged: the one rule, used by the training loop
(:func:`bptt_jax.app.training.loop.train`).

A run is stopped (exit status 1, a message suggesting a lower ``--lr``, the
last checkpoint written before kept as it is) as soon as any of these holds:

1. **Non-finite:** :data:`NONFINITE_IN_A_ROW` steps in a row had a non-finite
   loss or gradient (such steps are never applied).
2. **Worse than guessing:** a validation loss, or the mean training loss of
   the steps between two fetches from the device, is above
   :math:`\log_2 C` + :data:`MARGIN_BITS` bits per character -- worse than
   the uniform guess an untrained model starts from (``--lr 1e3`` is caught
   here within ten steps).
3. **Worse than the unigram after warm-up:** once :func:`warmup` steps are
   done (10% of ``--steps``, at least :data:`MIN_WARMUP_STEPS`, and at least the
   learning rate's ``--warmup``), a validation
   loss above the unigram baseline + :data:`MARGIN_BITS` bits per character
   (the baseline of a model without memory, ``baselines["unigram_bits"]``).
"""

from __future__ import annotations

import math

NONFINITE_IN_A_ROW = 5
MARGIN_BITS = 1.0
WARMUP_FRACTION = 0.1
MIN_WARMUP_STEPS = 100


def warmup(steps: int) -> int:
    """The steps after which rule 3 applies."""
    return max(math.ceil(WARMUP_FRACTION * steps), MIN_WARMUP_STEPS)


def divergence(
    bits: float,
    *,
    what: str,
    step: int,
    steps: int,
    num_classes: int,
    unigram_bits: float | None,
    lr_warmup: int = 0,
) -> str | None:
    """Why a loss of ``bits`` bits/char at ``step`` means divergence, or ``None``.

    Args:
      bits: the loss in bits per character.
      what: ``"validation"`` (rules 2 and 3) or ``"training"`` (rule 2 only:
        single chunks vary too much for rule 3).
      step, steps: the step reached and the run's total.
      num_classes: C.
      unigram_bits: the baseline of rule 3 (``None``: no rule 3).
      lr_warmup: the learning rate's warm-up steps; rule 3 waits for them too.
    """
    uniform = math.log2(num_classes) + MARGIN_BITS
    if not math.isfinite(bits) or bits > uniform:
        return (
            f"{what} loss {bits:.4g} bits/char is above {uniform:.2f} "
            f"(log2 C + {MARGIN_BITS:g}: worse than guessing uniformly among {num_classes})"
        )
    after = max(warmup(steps), lr_warmup)
    if what == "validation" and unigram_bits is not None and step >= after:
        limit = unigram_bits + MARGIN_BITS
        if bits > limit:
            return (
                f"validation loss {bits:.4g} bits/char is above {limit:.2f} (the unigram "
                f"baseline + {MARGIN_BITS:g}) after {step} steps"
            )
    return None
