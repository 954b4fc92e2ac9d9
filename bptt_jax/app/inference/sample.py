r"""Generating text with a trained language model, streamed as it is generated.

Generation runs the model's forward equations one character at a time; for the
seed's model

.. math::

    x_{t+1} \sim \mathrm{softmax}(z_t / \tau),\quad
    h_{t+1} = f(U h_t + W x_{t+1} + b),\quad z_{t+1} = V h_{t+1} + c

and for ``L`` stacked layers each layer reads the one below,
:math:`h_{t+1}^\ell = f(U^\ell h_t^\ell + W^\ell h_{t+1}^{\ell-1} + b^\ell)` (a gated
cell's own step in place of :math:`f`, its state ``(h, c)`` for the LSTM),
:math:`z_{t+1} = V h_{t+1}^L + c`. :math:`\tau = 0` picks :math:`\arg\max z_t`
(greedy); ``top_k`` keeps the k largest logits, ``top_p`` the smallest set of most
likely characters whose probabilities add up to at least p (nucleus sampling).

Every sample starts from the zero state :math:`h_0 = 0` and reads the prime (one
jitted forward pass); the characters are then drawn in chunks of :data:`CHUNK`,
each chunk one jitted ``lax.scan`` (compiled once), so :func:`generate` yields text
while it is being generated, at O(length) cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ...core.deep import deep_forward_core
from ...core.options import Options
from ...core.params import DeepParams, to_deep
from ...core.steps import pick, stack
from ..io.corpus import DataError
from ..training.checkpoint_schema import Model
from ..training.config import model_cell
from ..training.models import zeros_like_state

#: The longest sample: its keys and ids take 12 bytes a character (a larger scan
#: once aborted inside XLA).
MAX_LENGTH = 1_000_000

#: Characters drawn per jitted call: what :func:`generate` yields at a time.
CHUNK = 32

#: The most samples ``--num-samples`` asks for.
MAX_SAMPLES = 10_000

#: The defaults of ``bptt-jax sample`` and of :meth:`bptt_jax.TrainedModel.sample`.
PRIME, LENGTH, TEMPERATURE = "def ", 500, 0.8


@functools.partial(jax.jit, static_argnames=("cell",))
def prime_core(params: DeepParams, prime: jax.Array, *, cell):
    r"""``(h (L, H), z (C,))``: the state (each part, for the LSTM's ``(h, c)``) and logits
    after reading ``prime (P,)`` ids from :math:`h_0 = 0` with ``cell``; for ``P = 0`` the
    zero state and :math:`z_0 = V h_0 + c = c`."""
    h0 = zeros_like_state(cell, params, 1)  # (L, 1, H) each part
    first = lambda s: jax.tree.map(lambda a: a[:, 0], s)  # noqa: E731  (L, 1, H) -> (L, H)
    if prime.shape[0] == 0:
        return first(h0), params.c
    _, z, h = deep_forward_core(params, prime[None], h0, options=Options(cell=cell))
    return first(h), z[0, -1]


def _filter(z, temperature, top_p, top_k: int | None, banned: int | None):
    """The logits to draw from: :math:`z/\tau`, top-k, then top-p (nucleus) applied."""
    if banned is not None:
        z = z.at[banned].set(-jnp.inf)
    logits = (z - jnp.max(z)) / temperature  # <= 0: a small temperature never overflows
    if top_k is not None:
        kth = lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    p = jax.nn.softmax(logits)
    p_sorted = jnp.sort(p)[::-1]
    before = jnp.cumsum(p_sorted) - p_sorted  # the mass of the more likely ones
    # keep the most likely characters until their mass reaches top_p (the first always)
    threshold = jnp.min(jnp.where(before < top_p, p_sorted, jnp.inf))
    return jnp.where(p < threshold, -jnp.inf, logits)


class Draw(NamedTuple):
    """How :func:`sample_core` draws (static: one compilation per setting)."""

    length: int  # how many ids to generate
    greedy: bool  # take arg max z_t instead of sampling
    top_k: int | None  # sample among the top_k largest logits only (None: all)
    banned: int | None = None  # an id never to emit (the vocabulary's unknown id)


@functools.partial(jax.jit, static_argnames=("draw", "cell"))
def sample_core(
    params: DeepParams, h: jax.Array, z: jax.Array, key: jax.Array, temperature: jax.Array,
    top_p: jax.Array, *, draw: Draw, cell,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
    r"""``draw.length`` ids drawn after the state ``h (L, H)`` with logits ``z (C,)``; no
    checks. Each id is read by the cell's own step (:mod:`bptt_jax.core.cell`), layer by
    layer: :math:`h^\ell_t = f(U^\ell h^\ell_{t-1} + W^\ell h^{\ell-1}_t + b^\ell)`.

    Args:
      params: a left-to-right language model (``C == K``) as a :class:`DeepParams`.
      h, z: from :func:`prime_core` or the previous call.
      key: a ``jax.random`` key; one split per generated character.
      temperature: :math:`\tau > 0` (ignored when ``draw.greedy``).
      top_p: in ``(0, 1]``; 1 keeps every character.
      draw: the length, greedy, top-k and banned id (:class:`Draw`).
      cell: the model's cell (:func:`~bptt_jax.app.training.config.model_cell`).

    Returns:
      ``(h, z, ids (length,) int32)``: the state and logits after the last id, and the ids.
    """
    mm = jnp.matmul

    def step(carry, key_t):
        h, z = carry  # (L, H), (C,)
        if draw.greedy:
            x = jnp.argmax(z if draw.banned is None else z.at[draw.banned].set(-jnp.inf))
        else:
            logits = _filter(z, temperature, top_p, draw.top_k, draw.banned)
            x = jax.random.categorical(key_t, logits)
        new, below = [], x
        for l, layer in enumerate(params.layers):  # the cell's step, layer above layer
            a = cell.project(layer, below, mm, lambda m: m)  # W x_t + b (a column for ids)
            trace = cell.forward(mm, cell.weights(layer, lambda m: m), pick(h, l), a)
            new.append(cell.state(trace))
            below = cell.output(trace)
        return (stack(new), params.V @ below + params.c), x.astype(jnp.int32)

    (h, z), ids = lax.scan(step, (h, z), jax.random.split(key, draw.length))
    return h, z, ids


def check_request(
    model: Model, prime: str, length: int, temperature: float, top_k: int | None,
    top_p: float, num_samples: int = 1, *, flags: bool = True,
) -> None:  # fmt: skip
    """Refuses what cannot be sampled, one :class:`DataError` naming the option: as the
    command's flag (``--top-k``), or with ``flags=False`` as the keyword (``top_k``)."""

    def name(option: str) -> str:
        return "--" + option.replace("_", "-") if flags else option

    if model.task != "lm":
        raise DataError(
            f"this checkpoint is a '{model.task}' model, not a language model; "
            + ("use bptt-jax tag CHECKPOINT FILE.py" if flags else "use its tag(text)")
        )
    K = model.vocab.size
    if not 1 <= length <= MAX_LENGTH:
        raise DataError(
            f"{name('length')} must be a positive number of characters, at most "
            f"{MAX_LENGTH:,}, got {length}"
        )
    if not 0 <= temperature < math.inf:
        raise DataError(f"{name('temperature')} must be >= 0 and finite, got {temperature}")
    dtype = model.params.V.dtype
    tiny = float(jnp.finfo(dtype).tiny)
    for flag, value, zero in ((name("temperature"), temperature, "0 for greedy sampling or "),
                              (name("top_p"), top_p, "")):  # fmt: skip
        if 0 < value < tiny:
            raise DataError(
                f"{flag} {value:g} underflows the model's {dtype}: it is below the smallest "
                f"normal {dtype} number {tiny:.3g}; give {zero}at least {tiny:.3g}"
            )
    if top_k is not None and not 1 <= top_k < K:
        raise DataError(
            f"{name('top_k')} must be between 1 and the vocabulary size {K - 1}, got {top_k}"
        )
    if not 0 < top_p <= 1:
        raise DataError(f"{name('top_p')} must be in (0, 1], got {top_p}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise DataError(f"{name('num_samples')} must be in 1..{MAX_SAMPLES}, got {num_samples}")
    try:
        model.vocab.encode(prime, strict=True)
    except DataError as e:
        raise DataError(f"{name('prime')} {prime!r}: {e}") from None


def generate(
    model: Model, prime: str, length: int, *, temperature: float = TEMPERATURE,
    top_k: int | None = None, top_p: float = 1.0, seed: int = 0, index: int = 0,
) -> Iterator[str]:  # fmt: skip
    """Yields the ``length`` characters after ``prime``, :data:`CHUNK` at a time.

    The sample starts from the zero state (then reads ``prime``, which may be
    empty); ``index`` numbers the samples of one ``seed``: each has its own keys.

    Raises:
      DataError: see :func:`check_request` (before anything is yielded).
    """
    check_request(model, prime, length, temperature, top_k, top_p)
    params = to_deep(model.params)
    cell = model_cell(model.config)
    dtype = params.V.dtype
    h, z = prime_core(params, jnp.asarray(model.vocab.encode(prime), jnp.int32), cell=cell)
    key = jax.random.fold_in(jax.random.key(seed), index)
    tau = jnp.asarray(temperature if temperature > 0 else 1.0, dtype)
    for j, start in enumerate(range(0, length, CHUNK)):
        draw = Draw(CHUNK, temperature == 0, top_k, model.vocab.unknown)
        h, z, ids = sample_core(
            params, h, z, jax.random.fold_in(key, j), tau, jnp.asarray(top_p, dtype),
            draw=draw, cell=cell,
        )  # fmt: skip
        yield model.vocab.decode(ids[: min(CHUNK, length - start)])


def sample(
    model: Model, prime: str, length: int, *, temperature: float = TEMPERATURE,
    top_k: int | None = None, top_p: float = 1.0, seed: int = 0, index: int = 0,
) -> str:  # fmt: skip
    """The ``length`` characters after ``prime``, as one string (see :func:`generate`).

    Raises:
      DataError: for a tagging model, ``length <= 0``, a prime with characters
        outside the vocabulary, a negative temperature, a ``top_k`` outside
        ``1..K-1`` or a ``top_p`` outside ``(0, 1]``.
    """
    pieces = generate(model, prime, length, temperature=temperature, top_k=top_k,
                      top_p=top_p, seed=seed, index=index)  # fmt: skip
    return "".join(pieces)
