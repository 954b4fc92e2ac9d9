r"""Text corpora, vocabularies and token-type labels.

Sits above the numerical core and below the training loop: it reads files,
turns characters into the ids :math:`x_t` of the seed's one-hot inputs, and
produces the labels :math:`y_t` -- the next character for the language model
(``task="lm"``, C = K) or the character's Python token type for sequence
labelling (``task="tag"``, C ≠ K).

The default corpus is the source of the running interpreter's standard
library (its ``.py`` files outside test folders and ``site-packages``): every
machine with Python has it, no download. The streams the training loop reads
from a :class:`Corpus` are in :mod:`bptt_jax.app.streams`.
"""

from __future__ import annotations

import io
import keyword
import pathlib
import sysconfig
import tokenize
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class DataError(Exception):
    """A problem with the user's text or corpus, reported as a message (no traceback)."""


# Token types of the tagging task, in class-id order, with a one-letter code each.
TOKEN_TYPES = ("whitespace", "name", "keyword", "operator", "number", "string", "comment", "other")
TOKEN_LETTERS = "_nkodsc?"
UNKNOWN_CHAR = "\ufffd"  # how the out-of-vocabulary id decodes

_TEST_DIRS = {"test", "tests", "idle_test"}
_VAL_BUCKETS = 20  # a file is held out when crc32(name) % 20 == 0: about 5 %


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class TextFile:
    name: str  # stable key: the path relative to the folder it was found in
    path: pathlib.Path


def stdlib_root() -> pathlib.Path:
    """The folder of the running interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[TextFile]:
    """The standard library's ``.py`` files (no tests, no site-packages), sorted by name."""
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or "dist-packages" in parts or _TEST_DIRS & set(parts[:-1]):
            continue
        files.append(TextFile(path.relative_to(root).as_posix(), path))
    return sorted(files, key=lambda f: f.name)


def collect_files(paths: list[str]) -> list[TextFile]:
    """The files named by ``--text``: each a file, or a folder read recursively.

    Hidden files and folders (names starting with ``.``) inside a folder are
    skipped. Raises :class:`DataError` for a path that does not exist.
    """
    files = []
    for text in paths:
        path = pathlib.Path(text)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                rel = p.relative_to(path)
                if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                    files.append(TextFile(f"{path.name}/{rel.as_posix()}", p))
        elif path.is_file():
            files.append(TextFile(path.name, path))
        else:
            raise DataError(f"--text {text}: no such file or folder")
    return files


def read_text(path: pathlib.Path) -> str:
    """The file as text; :class:`DataError` naming the file and place if not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"(line {line}, byte {column} of the line) cannot be decoded ({e.reason}); "
            "convert the file to UTF-8 or leave it out"
        ) from None


def split_files(files: list[TextFile]) -> tuple[list[TextFile], list[TextFile]]:
    """Deterministic train/validation split by file name (about 5 % held out).

    A file goes to validation when ``crc32(name) % 20 == 0`` -- the same on
    every machine and independent of the other files. With two or more files
    each side gets at least one; a single file goes to training (the corpus
    then holds out its last 10 %).
    """
    if len(files) < 2:
        return list(files), []
    val = [f for f in files if zlib.crc32(f.name.encode()) % _VAL_BUCKETS == 0]
    train = [f for f in files if zlib.crc32(f.name.encode()) % _VAL_BUCKETS != 0]
    if len(files) >= 2 and not val:
        val, train = train[-1:], train[:-1]
    elif len(files) >= 2 and not train:
        train, val = val[:-1], val[-1:]
    return train, val


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

    @property
    def num_classes(self) -> int:
        return self.vocab.size if self.task == "lm" else len(TOKEN_TYPES)


def load_corpus(
    text: list[str] | tuple[str, ...] = (),
    *,
    task: str = "lm",
    max_files: int | None = None,
) -> Corpus:
    """Reads, splits and encodes the corpus.

    Args:
      text: ``--text`` paths (files or folders); the standard library when empty.
      task: ``"lm"`` (y_t = the next character) or ``"tag"`` (y_t = the token
        type of character t; files ``tokenize`` cannot read are skipped).
      max_files: use only the first ``max_files`` files (sorted by name).

    Raises:
      DataError: a file is not UTF-8, a path does not exist, or nothing is left
        to train or validate on.
    """
    if task not in ("lm", "tag"):
        raise DataError(f"unknown task {task!r}: expected 'lm' or 'tag'")
    files = collect_files(list(text)) if text else stdlib_files()
    where = "the --text files" if text else f"the standard library at {stdlib_root()}"
    if max_files is not None:
        files = files[:max_files]
    train_files, val_files = split_files(files)
    skipped: list[str] = []
    train = _read_group(train_files, task, skipped)
    val = _read_group(val_files, task, skipped)
    if len(files) == 1 and train.texts:  # one file: hold out its last 10 %
        train, val = _hold_out_tail(train, val, task)
    train_text = "".join(train.texts)
    val_text = "".join(val.texts)
    if not train_text or not val_text:
        raise _empty_corpus(len(files), where, train_text, val_text, skipped)
    vocab = Vocab.from_text(train_text)
    return Corpus(
        task=task,
        vocab=vocab,
        train_ids=vocab.encode(train_text),
        val_ids=vocab.encode(val_text),
        train_labels=np.concatenate(train.labels) if task == "tag" else None,
        val_labels=np.concatenate(val.labels) if task == "tag" else None,
        train_files=tuple(train.names),
        val_files=tuple(val.names),
        skipped=tuple(skipped),
        train_starts=_starts(train.texts),
        val_starts=_starts(val.texts),
    )


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


def _read_group(group: list[TextFile], task: str, skipped: list[str]) -> _Group:
    """Reads ``group``; empty files are left out, and for ``tag`` the files ``tokenize``
    cannot read are left out and named in ``skipped``."""
    texts, labels, names = [], [], []
    for f in group:
        body = read_text(f.path)
        if not body:
            continue
        if task == "tag":
            try:
                labels.append(token_labels(body))
            except DataError:
                skipped.append(f.name)
                continue
        texts.append(body)
        names.append(f.name)
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
    files: int, where: str, train_text: str, val_text: str, skipped: list[str]
) -> DataError:
    return DataError(
        f"empty corpus: {files} file(s) in {where}, "
        f"{len(train_text)} training and {len(val_text)} validation characters"
        + (f" ({len(skipped)} file(s) skipped: tokenize could not read them)" if skipped else "")
    )
