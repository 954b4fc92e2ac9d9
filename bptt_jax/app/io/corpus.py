r"""Text corpora, vocabularies and token-type labels.

Sits above the numerical core and below the training loop: it reads files,
turns characters into the ids :math:`x_t` of the seed's one-hot inputs, and
produces the labels :math:`y_t` -- the next character for the language model
(``task="lm"``, C = K) or the character's Python token type for sequence
labelling (``task="tag"``, C ≠ K).

The default corpus is the source of the running interpreter's standard
library (its ``.py`` files outside test folders and ``site-packages``): every
machine with Python has it, no download. The streams the training loop reads
from a :class:`Corpus` are in :mod:`bptt_jax.app.io.streams`.
"""

from __future__ import annotations

import io
import keyword
import tokenize
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .files import (
    DataError,
    TextFile,
    check_disjoint,
    collect_files,
    held_out_by_name,
    read_text,
    shown,
    split_files,
    stdlib_files,
    stdlib_root,
    total_bytes,
)
from .preflight import require_memory

# Token types of the tagging task, in class-id order, with a one-letter code each.
TOKEN_TYPES = ("whitespace", "name", "keyword", "operator", "number", "string", "comment", "other")
TOKEN_LETTERS = "_nkodsc?"
UNKNOWN_CHAR = "\ufffd"  # how the out-of-vocabulary id decodes


# --------------------------------------------------------------------------- labels


def token_labels(text: str) -> np.ndarray:
    r"""The token type of every character of Python source, by ``tokenize``.

    Class ids index :data:`TOKEN_TYPES`: a ``NAME`` token is a *keyword* when
    :func:`keyword.iskeyword` says so (soft keywords such as ``match`` stay
    *name*), ``OP`` is *operator*, ``NUMBER`` *number*, ``STRING`` (and the
    f-string parts of Python 3.12+) *string*, ``COMMENT`` *comment*;
    newlines, indentation and the spaces between tokens are *whitespace*;
    any other character (a line-continuation backslash, an error token) is
    *other*.

    Args:
      text: Python source.

    Returns:
      ``(len(text),)`` int32 class ids.

    Raises:
      DataError: when ``tokenize`` cannot tokenize the text.
    """
    lines = io.StringIO(text).readlines()  # split exactly as tokenize's readline sees it
    starts = np.concatenate([[0], np.cumsum([len(line) for line in lines])]).astype(np.int64)
    whitespace, other = TOKEN_TYPES.index("whitespace"), TOKEN_TYPES.index("other")
    labels = np.array([whitespace if ch.isspace() else other for ch in text], np.int32)
    kinds = {
        tokenize.NAME: "name",
        tokenize.OP: "operator",
        tokenize.NUMBER: "number",
        tokenize.STRING: "string",
        tokenize.COMMENT: "comment",
    }
    for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):  # Python 3.12+
        if hasattr(tokenize, name):
            kinds[getattr(tokenize, name)] = "string"
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            kind = kinds.get(tok.type)
            if kind is None or not tok.string:
                continue
            if kind == "name" and keyword.iskeyword(tok.string):
                kind = "keyword"
            (r0, c0), (r1, c1) = tok.start, tok.end
            labels[starts[r0 - 1] + c0 : starts[r1 - 1] + c1] = TOKEN_TYPES.index(kind)
    except (tokenize.TokenError, SyntaxError, StopIteration) as e:
        raise DataError(f"tokenize cannot read this source: {e}") from None
    return labels


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocab:
    r"""Characters ↔ ids: ``chars[i]`` is id ``i``; id ``len(chars)`` is unknown.

    The vocabulary holds every character of the training text; characters
    seen only elsewhere (validation, a file given to ``bptt-jax tag``) map to
    the extra unknown id, so ``K = len(chars) + 1``.
    """

    chars: str

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    @property
    def unknown(self) -> int:
        return len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str, *, strict: bool = False) -> np.ndarray:
        """``(len(text),)`` int32 ids; with ``strict`` an unknown char is a DataError."""
        table = {ch: i for i, ch in enumerate(self.chars)}
        ids = np.fromiter((table.get(ch, self.unknown) for ch in text), np.int32, len(text))
        if strict and (ids == self.unknown).any():
            missing = sorted({ch for ch in text if ch not in table})
            raise DataError(
                f"{len(missing)} character(s) not in the model's vocabulary: "
                + ", ".join(repr(ch) for ch in missing[:10])
                + (" ..." if len(missing) > 10 else "")
            )
        return ids

    def decode(self, ids) -> str:
        chars = self.chars + UNKNOWN_CHAR
        return "".join(chars[int(i)] for i in np.asarray(ids).reshape(-1))


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """The training and validation text as ids (and token-type labels for ``tag``)."""

    task: str  # "lm" or "tag"
    vocab: Vocab
    train_ids: np.ndarray  # (N_train,) int32
    val_ids: np.ndarray  # (N_val,) int32
    train_labels: np.ndarray | None  # (N_train,) int32 token types (tag only)
    val_labels: np.ndarray | None  # (N_val,) int32
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    skipped: tuple[str, ...]  # files left out (tag: tokenize could not read them)
    train_starts: tuple[int, ...] = (0,)  # where each training file starts in train_ids
    val_starts: tuple[int, ...] = (0,)  # where each held-out file starts in val_ids
    rule: str = "name-hash"  # how the held-out text was chosen: SPLIT_RULES
    val_range: tuple[int, int] | None = None  # "tail": the characters of the one file held out
    not_text: tuple[str, ...] = ()  # files of a folder left out: not UTF-8 text

    @property
    def num_classes(self) -> int:
        return self.vocab.size if self.task == "lm" else len(TOKEN_TYPES)


#: How the held-out text is chosen: a hash of each file's name (two or more files), the
#: last 10 % of a single file, or the files ``--val-text`` names.
SPLIT_RULES = {
    "name-hash": "the files whose name hashes to 0 (crc32 of the name mod 20, about 5 %)",
    "last-file": "no file's name hashes to 0 (crc32 mod 20): the last file by name",
    "tail": "the last 10 % of the one file",
    "val-text": "the files --val-text names",
}

#: Peak host memory per byte of the corpus's files (an upper bound on its characters)
#: while it is read, encoded, fingerprinted and cut into streams. For "lm", 1 + 1 + 4 +
#: 4 + 1 + 1 + 4 = 16: the texts, their concatenation, the int32 ids, the streams' copy
#: of them, the document starts twice (bool), the fingerprint's bytes; one file adds
#: its two halves. "tag" adds int32 labels, their streams' copy and fingerprint and
#: tokenize's per-character list. Measured peaks (docs/training.md): lm 15.7 (8
#: files) and 17.2 (1 file), tag 29.8 and 30.7.
BYTES_PER_CHAR = {"lm": 18, "tag": 32}


def load_corpus(
    text: list[str] | tuple[str, ...] = (),
    *,
    task: str = "lm",
    max_files: int | None = None,
    val_text: list[str] | tuple[str, ...] = (),
    strict_text: bool = False,
) -> Corpus:
    """Reads, splits and encodes the corpus.

    Args:
      text: ``--text`` paths (files or folders); the standard library when empty.
      task: ``"lm"`` (y_t = the next character) or ``"tag"`` (y_t = the token
        type of character t; files ``tokenize`` cannot read are skipped).
      max_files: use only the first ``max_files`` files (sorted by name).
      val_text: ``--val-text`` paths: the held-out files (none of them a training
        file); empty: the held-out rule of :func:`split_files`.
      strict_text: stop at a file of a folder that is not UTF-8 text (default: skip
        it, naming it in ``not_text``; a file named directly always stops).

    Raises:
      DataError: a file is not UTF-8 (see ``strict_text``), a path does not exist or
        is not a regular file, a ``--val-text`` file is also a training file, or
        nothing is left to train or validate on.
      UsageError: the corpus would not fit in the host's memory.
    """
    if task not in ("lm", "tag"):
        raise DataError(f"unknown task {task!r}: expected 'lm' or 'tag'")
    files = collect_files(list(text)) if text else stdlib_files()
    where = "the --text files" if text else f"the standard library at {stdlib_root()}"
    if max_files is not None:
        files = files[:max_files]
    held = collect_files(list(val_text), "--val-text") if val_text else []
    check_disjoint(files, held)
    nbytes = total_bytes(files + held)
    require_memory(f"the corpus ({nbytes:,} bytes in {len(files) + len(held)} files)",
                   BYTES_PER_CHAR[task] * nbytes, host=True)  # fmt: skip
    bodies, not_text = _read_all(files + held, strict_text)
    files = [f for f in files if f.path in bodies]
    held = [f for f in held if f.path in bodies]
    train_files, val_files = (files, held) if val_text else split_files(files)
    skipped: list[str] = []
    train = _read_group(train_files, task, skipped, bodies)
    val = _read_group(val_files, task, skipped, bodies)
    rule, val_range = "val-text" if val_text else "name-hash", None
    if not val_text and not all(held_out_by_name(f.name) for f in val_files):
        rule = "last-file"
    if not val_text and len(files) == 1 and train.texts:  # one file: hold out its last 10 %
        train, val = _hold_out_tail(train, val, task)
        rule, val_range = "tail", (len(train.texts[0]), len(bodies[files[0].path]))
    train_text = "".join(train.texts)
    val_text_ = "".join(val.texts)
    if not train_text or not val_text_:
        raise _empty_corpus(len(files), where, train_text, val_text_, skipped, not_text)
    vocab = Vocab.from_text(train_text)
    return Corpus(
        task=task,
        vocab=vocab,
        train_ids=vocab.encode(train_text),
        val_ids=vocab.encode(val_text_),
        train_labels=np.concatenate(train.labels) if task == "tag" else None,
        val_labels=np.concatenate(val.labels) if task == "tag" else None,
        train_files=tuple(train.names),
        val_files=tuple(val.names),
        skipped=tuple(skipped),
        train_starts=_starts(train.texts),
        val_starts=_starts(val.texts),
        rule=rule,
        val_range=val_range,
        not_text=tuple(not_text),
    )


def _read_all(files: list[TextFile], strict: bool) -> tuple[dict, list[str]]:
    """Every file's text by path, and the names of a folder's files that are not UTF-8
    text (left out unless ``strict``; a file named directly is always an error)."""
    bodies, not_text = {}, []
    for f in files:
        try:
            bodies[f.path] = read_text(f.path)
        except DataError:
            if strict or not f.in_folder:
                raise
            not_text.append(shown(f.name))
    return bodies, not_text


def _starts(texts: list[str]) -> tuple[int, ...]:
    """The offset of each text in their concatenation (empty texts are never read)."""
    return tuple(int(x) for x in np.cumsum([0] + [len(t) for t in texts[:-1]]))


def file_spans(starts: tuple[int, ...], total: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of each file in a concatenation of ``total`` characters."""
    ends = (*starts[1:], total)
    return [(a, b) for a, b in zip(starts, ends, strict=True) if b > a]


class _Group(NamedTuple):
    """The texts of one side of the split, their labels (``tag``) and file names."""

    texts: list[str]
    labels: list[np.ndarray]
    names: list[str]


def _read_group(group: list[TextFile], task: str, skipped: list[str], bodies: dict) -> _Group:
    """The texts of ``group`` (read by :func:`_read_all`); empty files are left out, and
    for ``tag`` the files ``tokenize`` cannot read are left out and named in ``skipped``."""
    texts, labels, names = [], [], []
    for f in group:
        body = bodies[f.path]
        if not body:
            continue
        if task == "tag":
            try:
                labels.append(token_labels(body))
            except DataError:
                skipped.append(shown(f.name))
                continue
        texts.append(body)
        names.append(shown(f.name))
    return _Group(texts, labels, names)


def _hold_out_tail(train: _Group, val: _Group, task: str) -> tuple[_Group, _Group]:
    """A corpus of one file: its last 10 % is the validation text."""
    body = train.texts[0]
    cut = len(body) - len(body) // 10
    train_labels, val_labels = train.labels, val.labels
    if task == "tag":
        val_labels, train_labels = [train.labels[0][cut:]], [train.labels[0][:cut]]
    return _Group([body[:cut]], train_labels, train.names), _Group(
        [body[cut:]], val_labels, train.names
    )


def _empty_corpus(
    files: int, where: str, train_text: str, val_text: str, skipped: list[str],
    not_text: list[str],
) -> DataError:  # fmt: skip
    return DataError(
        f"empty corpus: {files} file(s) in {where}, "
        f"{len(train_text)} training and {len(val_text)} validation characters"
        + (f" ({len(skipped)} file(s) skipped: tokenize could not read them)" if skipped else "")
        + (f" ({len(not_text)} file(s) skipped: not UTF-8 text)" if not_text else "")
    )
