r"""Text corpora, vocabularies, token-type labels and the training streams.

Sits above the numerical core and below the training loop: it reads files,
turns characters into the ids :math:`x_t` of the seed's one-hot inputs, and
produces the labels :math:`y_t` -- the next character for the language model
(``task="lm"``, C = K) or the character's Python token type for sequence
labelling (``task="tag"``, C ≠ K).

The default corpus is the source of the running interpreter's standard
library (its ``.py`` files outside test folders and ``site-packages``): every
machine with Python has it, no download.
"""

from __future__ import annotations

import io
import keyword
import pathlib
import sysconfig
import tokenize
import zlib
from dataclasses import dataclass

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

    skipped = []

    def read(group):
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
        return texts, labels, names

    train_texts, train_labels, train_names = read(train_files)
    val_texts, val_labels, val_names = read(val_files)
    if len(files) == 1 and train_texts:  # one file: hold out its last 10 %
        body = train_texts[0]
        cut = len(body) - len(body) // 10
        val_texts, train_texts = [body[cut:]], [body[:cut]]
        if task == "tag":
            val_labels, train_labels = [train_labels[0][cut:]], [train_labels[0][:cut]]
        val_names = train_names
    train_text = "".join(train_texts)
    val_text = "".join(val_texts)
    if not train_text or not val_text:
        raise DataError(
            f"empty corpus: {len(files)} file(s) in {where}, "
            f"{len(train_text)} training and {len(val_text)} validation characters"
            + (
                f" ({len(skipped)} file(s) skipped: tokenize could not read them)"
                if skipped
                else ""
            )
        )
    vocab = Vocab.from_text(train_text)
    return Corpus(
        task=task,
        vocab=vocab,
        train_ids=vocab.encode(train_text),
        val_ids=vocab.encode(val_text),
        train_labels=np.concatenate(train_labels) if task == "tag" else None,
        val_labels=np.concatenate(val_labels) if task == "tag" else None,
        train_files=tuple(train_names),
        val_files=tuple(val_names),
        skipped=tuple(skipped),
    )


# --------------------------------------------------------------------------- streams


class Streams:
    r"""B parallel streams over one long text, read in consecutive chunks of T.

    The text is cut into ``B`` contiguous segments of equal length ``L``;
    stream ``b`` reads segment ``b`` from start to end, ``T`` characters per
    training step, so that the hidden state :math:`h_T` of one chunk is the
    right :math:`h_0` of the next (truncated BPTT). After ``num_chunks``
    chunks the streams wrap round to their starts (a new epoch).

    For ``lm`` the label of character t is character t + 1; for ``tag`` it
    is the token type of character t.

    In a run of ``P`` processes (multi-host), process ``p`` holds only the
    streams :func:`process_streams` gives it, ``p, p + P, p + 2P, ...``:
    ``B / P`` rows, the same segments a single process would read at those
    rows.
    """

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        seq_len: int,
        *,
        num_processes: int = 1,
        process_id: int = 0,
    ) -> None:
        B, T = batch_size, seq_len
        rows = process_streams(B, num_processes, process_id)
        shift = 1 if labels is None else 0  # lm needs one character past the chunk
        L = len(ids) // B
        self.num_chunks = (L - shift) // T
        if self.num_chunks < 1:
            raise DataError(
                f"the training text has {len(ids)} characters, too few for --batch-size {B} "
                f"streams of --seq-len {T}: needs at least {B * (T + shift)}"
            )
        self.xs = np.ascontiguousarray(ids[: B * L].reshape(B, L)[rows])  # (B / P, L)
        if labels is None:
            self.ys = self.xs[:, 1:]  # (B / P, L - 1): the next character
        else:
            self.ys = np.ascontiguousarray(labels[: B * L].reshape(B, L)[rows])  # (B / P, L)
        self.seq_len = T

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``k`` (``0 <= k < num_chunks``): ``xs, ys`` each ``(B / P, T)`` int32."""
        T = self.seq_len
        return self.xs[:, k * T : (k + 1) * T], self.ys[:, k * T : (k + 1) * T]


def process_streams(num_streams: int, num_processes: int, process_id: int) -> np.ndarray:
    """The streams process ``process_id`` of ``num_processes`` reads: ``p, p + P, ...``.

    Over all processes these are disjoint and cover ``0 .. B - 1``; each process
    gets ``B / P`` of them (``B`` must be a multiple of ``P``).

    Raises:
      DataError: ``P < 1``, ``p`` outside ``0 .. P - 1``, or ``B`` not a multiple of ``P``.
    """
    B, P_, p = num_streams, num_processes, process_id
    if P_ < 1:
        raise DataError(f"the number of processes must be >= 1, got {P_}")
    if not 0 <= p < P_:
        raise DataError(f"process id {p} is outside 0..{P_ - 1} for {P_} processes")
    if B % P_:
        raise DataError(
            f"--batch-size {B} is not divisible by the {P_} processes; use a multiple of {P_}"
        )
    return np.arange(p, B, P_)


def streams_in_order(blocks) -> np.ndarray:
    """Undoes :func:`process_streams`: ``blocks[p]`` holds process p's rows; stream order out.

    Args:
      blocks: ``(P, B / P, ...)``, process ``p``'s rows in the order it holds them.

    Returns:
      ``(B, ...)`` with row ``p + P j`` = ``blocks[p][j]``.
    """
    blocks = np.asarray(blocks)
    P_, n = blocks.shape[:2]
    return np.swapaxes(blocks, 0, 1).reshape(P_ * n, *blocks.shape[2:])


def eval_arrays(
    ids: np.ndarray, labels: np.ndarray | None, streams: int, max_chars: int
) -> tuple[np.ndarray, np.ndarray]:
    """The validation text as ``streams`` rows: ``xs, ys`` each ``(S, L)`` int32.

    Uses at most ``max_chars`` characters from the start of the validation
    text, fewer streams if it is short; each row is run from a zero state in
    one pass.
    """
    shift = 1 if labels is None else 0
    n = min(len(ids), max_chars + shift)
    S = max(1, min(streams, (n - shift) // 16))
    L = (n - shift) // S
    if L < 1:
        raise DataError(f"the validation text has {len(ids)} characters: too few to evaluate")
    xs = np.stack([ids[s * L : (s + 1) * L] for s in range(S)]).astype(np.int32)
    if labels is None:
        ys = np.stack([ids[s * L + 1 : (s + 1) * L + 1] for s in range(S)]).astype(np.int32)
    else:
        ys = np.stack([labels[s * L : (s + 1) * L] for s in range(S)]).astype(np.int32)
    return xs, ys
