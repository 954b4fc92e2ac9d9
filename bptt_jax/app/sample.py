r"""Using a trained model: generating text and tagging Python source.

Generation runs the seed's forward equations one character at a time,

.. math::

    x_{t+1} \sim \mathrm{softmax}(z_t / \tau),\quad
    h_{t+1} = \tanh(U h_t + W x_{t+1} + b),\quad z_{t+1} = V h_{t+1} + c

as a single jitted ``lax.scan`` over the ``length`` new characters (the
prime is read by one more scan first), so it costs O(length) and compiles
once per length. :math:`\tau = 0` picks :math:`\arg\max z_t` (greedy).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core.params import Params
from ..core.rnn import forward_core, hidden_states
from .checkpoint_schema import Model
from .data import TOKEN_LETTERS, TOKEN_TYPES, DataError

#: The longest sample: its keys and ids take 12 bytes a character (a larger scan
#: once aborted inside XLA).
MAX_LENGTH = 1_000_000


@functools.partial(jax.jit, static_argnames=("length", "greedy", "top_k", "banned"))
def sample_core(
    params: Params,
    prime: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    *,
    length: int,
    greedy: bool,
    top_k: int | None,
    banned: int | None = None,
) -> jax.Array:
    r"""``length`` ids drawn after the ``prime`` ids; no checks.

    Args:
      params: a language model (``C == K``).
      prime: ``(P,)`` ids, ``P >= 1``, all in ``0..K-1``.
      key: a ``jax.random`` key; one split per generated character.
      temperature: :math:`\tau > 0` (ignored when ``greedy``).
      length: how many ids to generate.
      greedy: take :math:`\arg\max z_t` instead of sampling.
      top_k: sample among the ``top_k`` largest logits only (``None``: all).
      banned: an id never to emit (the vocabulary's unknown id).

    Returns:
      ``(length,)`` int32 ids.
    """
    U, V, W, b, c = params
    h0 = jnp.zeros((1, U.shape[0]), U.dtype)  # (1, H)
    h_P, hs = hidden_states(params, prime[None], h0)  # (1, H), (P, 1, H)
    z = V @ hs[-1, 0] + c  # (C,): the logits after the last prime character

    def step(carry, key_t):
        h, z = carry  # (H,), (C,)
        if banned is not None:
            z = z.at[banned].set(-jnp.inf)
        if greedy:
            x = jnp.argmax(z)
        else:
            logits = z / temperature
            if top_k is not None:
                kth = lax.top_k(logits, top_k)[0][-1]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            x = jax.random.categorical(key_t, logits)
        h = jnp.tanh(U @ h + W[:, x] + b)  # s_t = U h_{t-1} + W x_t + b
        z = V @ h + c
        return (h, z), x.astype(jnp.int32)

    _, ids = lax.scan(step, (h_P[0], z), jax.random.split(key, length))  # (length,)
    return ids


def sample(
    model: Model, prime: str, length: int, *, temperature: float = 0.8, top_k: int | None = None,
    seed: int = 0,
) -> str:  # fmt: skip
    """Generates ``length`` characters after ``prime`` with a trained language model.

    Raises:
      DataError: for a tagging model, ``length <= 0``, an empty prime, a prime
        with characters outside the vocabulary, a negative temperature or a
        ``top_k`` outside ``1..K``.
    """
    if model.task != "lm":
        raise DataError(
            f"this checkpoint is a '{model.task}' model, not a language model; "
            "use bptt-jax tag CHECKPOINT FILE.py"
        )
    K = model.vocab.size
    if not 1 <= length <= MAX_LENGTH:
        raise DataError(
            f"--length must be a positive number of characters, at most {MAX_LENGTH:,}, "
            f"got {length}"
        )
    if not prime:
        raise DataError("--prime must hold at least one character")
    if not 0 <= temperature < math.inf:
        raise DataError(f"--temperature must be >= 0 and finite, got {temperature}")
    if top_k is not None and not 1 <= top_k < K:
        raise DataError(f"--top-k must be between 1 and the vocabulary size {K - 1}, got {top_k}")
    try:
        ids = model.vocab.encode(prime, strict=True)
    except DataError as e:
        raise DataError(f"--prime {prime!r}: {e}") from None
    dtype = model.params.U.dtype
    out = sample_core(
        model.params,
        jnp.asarray(ids),
        jax.random.key(seed),
        jnp.asarray(temperature if temperature > 0 else 1.0, dtype),
        length=length,
        greedy=temperature == 0,
        top_k=top_k,
        banned=model.vocab.unknown,
    )
    return model.vocab.decode(out)


@jax.jit
def _predict_core(params: Params, xs: jax.Array) -> jax.Array:
    h0 = jnp.zeros((1, params.U.shape[0]), params.U.dtype)
    _, z = forward_core(params, xs, h0)  # (1, N, C)
    return jnp.argmax(z[0], axis=-1)  # (N,)


def predict_tags(model: Model, text: str) -> np.ndarray:
    """The predicted token type (index into TOKEN_TYPES) of every character of ``text``.

    Characters outside the vocabulary are read as the unknown id.
    """
    if model.task != "tag":
        raise DataError(
            f"this checkpoint is a '{model.task}' model; tagging needs one trained with --task tag"
        )
    if not text:
        return np.zeros((0,), np.int32)
    ids = model.vocab.encode(text)  # unknown characters -> the unknown id, in range
    return np.asarray(_predict_core(model.params, jnp.asarray(ids)[None]))


_COLORS = ("", "\033[36m", "\033[1;35m", "\033[33m", "\033[34m", "\033[32m", "\033[90m",
           "\033[41m")  # fmt: skip
_RESET = "\033[0m"


def legend(color: bool) -> str:
    items = []
    for i, name in enumerate(TOKEN_TYPES):
        if color:
            items.append(f"{_COLORS[i]}{name}{_RESET if _COLORS[i] else ''}")
        else:
            items.append(f"{TOKEN_LETTERS[i]}={name}")
    return "legend: " + "  ".join(items)


def format_tags(text: str, tags: np.ndarray, *, color: bool) -> str:
    """The text with its tags: ANSI colours, or under each line a line of letters.

    Without colour each source line is followed by a line with one letter per
    character (:data:`TOKEN_LETTERS`, the class *whitespace* shown as a space).
    """
    out = []
    if color:
        start = 0
        for i in range(1, len(text) + 1):
            if i == len(text) or tags[i] != tags[start]:
                code = _COLORS[int(tags[start])]
                piece = text[start:i]
                out.append(f"{code}{piece}{_RESET}" if code else piece)
                start = i
        return "".join(out)
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        letters = "".join(
            " " if t == 0 else TOKEN_LETTERS[int(t)] for t in tags[pos : pos + len(body)]
        )
        out.append(body)
        out.append(letters.rstrip())
        pos += len(line)
    return "\n".join(out) + "\n"
