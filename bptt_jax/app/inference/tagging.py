r"""Tagging Python source with a trained ``--task tag`` model, for people and programs.

The model reads the whole file in one pass from the zero state: a left-to-right
model labels character t from characters ``1..t`` only (causal: it labels the ``d``
of ``def`` before reading ``ef``); a ``--bidirectional`` one also reads from the
end of the file back to t. The label of character t is :math:`\arg\max_c z_{t,c}`.

Output: the text coloured by token type, or with a line of one-letter codes
(:data:`~bptt_jax.app.io.corpus.TOKEN_LETTERS`) under each line; ``diff`` marks the
characters where the model and Python's own ``tokenize`` disagree; :func:`tag_json`
is the same as one JSON object.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ...core.params import DeepParams, Params
from ..io.corpus import TOKEN_LETTERS, TOKEN_TYPES, DataError
from ..training.checkpoint_schema import Model
from ..training.config import model_cell
from ..training.models import logits_core

#: Files are padded to a multiple of this many characters (or the next power of
#: two above it), so that files of similar length share one compilation.
_PAD = 256


@functools.partial(jax.jit, static_argnames=("cell",))
def _predict_core(params: Params | DeepParams, xs: jax.Array, mask: jax.Array, cell):
    return jnp.argmax(logits_core(params, xs, cell, mask), axis=-1)  # (1, N)


def _padded_length(n: int) -> int:
    return max(_PAD, 1 << (n - 1).bit_length())


def predict_tags(model: Model, text: str) -> np.ndarray:
    """The predicted token type (index into TOKEN_TYPES) of every character of ``text``.

    Characters outside the vocabulary are read as the unknown id. The text is padded
    to :func:`_padded_length` with a mask, which changes nothing (padding is never
    read, in either direction).
    """
    if model.task != "tag":
        raise DataError(
            f"this checkpoint is a '{model.task}' model; tagging needs one trained with --task tag"
        )
    if not text:
        return np.zeros((0,), np.int32)
    n = len(text)
    ids = np.zeros((1, _padded_length(n)), np.int32)
    ids[0, :n] = model.vocab.encode(text)  # unknown characters -> the unknown id, in range
    mask = np.arange(ids.shape[1])[None] < n
    pred = _predict_core(model.params, ids, mask, model_cell(model.config))
    return np.asarray(pred[0, :n], np.int32)


_COLORS = ("", "\033[36m", "\033[1;35m", "\033[33m", "\033[34m", "\033[32m", "\033[90m",
           "\033[41m")  # fmt: skip
_RESET = "\033[0m"
_MARK = "\033[4;7m"  # underlined, reverse video: the model disagrees with tokenize here


#: How :func:`format_tags` shows the class *whitespace* under the text: as a blank,
#: not as its letter ``_`` (which ``--json``'s ``tags`` use).
WHITESPACE_SHOWN_AS = "blank"


def legend(color: bool, diff: bool = False) -> str:
    """The line above :func:`format_tags`' output: the colour of each type, or the
    letter shown under its characters (the whitespace class as a blank)."""
    items = []
    for i, name in enumerate(TOKEN_TYPES):
        if color:
            items.append(f"{_COLORS[i]}{name}{_RESET if _COLORS[i] else ''}")
        else:
            items.append(f"{WHITESPACE_SHOWN_AS if i == 0 else TOKEN_LETTERS[i]}={name}")
    if diff:
        items.append(f"{_MARK}disagrees with tokenize{_RESET}" if color else "^=disagrees")
    return "legend: " + "  ".join(items)


def format_tags(
    text: str, tags: np.ndarray, *, color: bool, truth: np.ndarray | None = None
) -> str:
    """The text with its tags: ANSI colours, or under each line a line of letters.

    Without colour each source line is followed by a line with one letter per
    character (:data:`TOKEN_LETTERS`, the class *whitespace* shown as a space);
    a line with no letter to show (a blank line) gets none, so blank lines are
    not doubled. With ``truth`` (tokenize's labels) the characters tagged
    otherwise are marked: underlined in reverse video, or by a line of ``^``
    under them.
    """
    wrong = np.zeros(len(text), bool) if truth is None else np.asarray(tags) != np.asarray(truth)
    if color:
        return _coloured(text, tags, wrong)
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        span = slice(pos, pos + len(body))
        letters = "".join(" " if t == 0 else TOKEN_LETTERS[int(t)] for t in tags[span])
        out.append(body)
        if letters.strip():
            out.append(letters.rstrip())
        if wrong[span].any():
            out.append("".join("^" if w else " " for w in wrong[span]).rstrip())
        pos += len(line)
    return "\n".join(out) + "\n"


def _coloured(text: str, tags: np.ndarray, wrong: np.ndarray) -> str:
    out, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or tags[i] != tags[start] or wrong[i] != wrong[start]:
            code = _COLORS[int(tags[start])] + (_MARK if wrong[start] else "")
            piece = text[start:i]
            out.append(f"{code}{piece}{_RESET}" if code else piece)
            start = i
    return "".join(out)


def spans(tags: np.ndarray) -> list[list]:
    """``[[start, end, type], ...]``: the runs of one predicted type (end exclusive)."""
    runs, start = [], 0
    for i in range(1, len(tags) + 1):
        if i == len(tags) or tags[i] != tags[start]:
            runs.append([start, i, TOKEN_TYPES[int(tags[start])]])
            start = i
    return runs


def tag_json(path: str, text: str, tags: np.ndarray, truth: np.ndarray | None) -> dict:
    """The tags of ``text`` as one JSON-able object, for programs.

    Keys: ``file``, ``chars``, ``labels`` (the type names, by class id), ``tags``
    (one letter per character, :data:`TOKEN_LETTERS`), ``spans`` (:func:`spans`),
    and, when tokenize reads the file, ``accuracy`` and ``disagreements`` (the
    offsets where the model and tokenize differ); otherwise those two are null.
    """
    result = {
        "file": path, "chars": len(text), "labels": list(TOKEN_TYPES),
        "tags": "".join(TOKEN_LETTERS[int(t)] for t in tags), "spans": spans(tags),
        "accuracy": None, "disagreements": None,
    }  # fmt: skip
    if truth is not None:
        wrong = np.flatnonzero(np.asarray(tags) != truth)
        result["accuracy"] = float(1 - len(wrong) / len(text)) if len(text) else None
        result["disagreements"] = [int(i) for i in wrong]
    return result
