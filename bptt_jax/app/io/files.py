r"""The files of a corpus: finding them, opening them safely, reading them as text, and
the rule that holds some of them out for validation.

A path given by the user is opened without blocking and refused unless it is a
regular file (:func:`open_regular`): a FIFO would wait for a writer forever and a
device such as ``/dev/zero`` never ends. A file name that is not valid UTF-8 is
kept as Python keeps it (``os.fsdecode``'s surrogate escapes) and shown with the
bad bytes as ``\xNN`` (:func:`shown`).

The held-out rule (:func:`split_files`): with two or more files, a file is held out
when ``crc32(name) % 20 == 0``, ``name`` its path relative to the folder it was found
in (about 5 %, the same on every machine and independent of the other files); a
single file holds out its last 10 % (:mod:`bptt_jax.app.io.corpus`); ``--val-text`` names
the held-out files instead.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import sysconfig
import zlib
from dataclasses import dataclass
from typing import BinaryIO


class DataError(Exception):
    """A problem with the user's text or corpus, reported as a message (no traceback)."""


_TEST_DIRS = {"test", "tests", "idle_test"}
VAL_BUCKETS = 20  # a file is held out when crc32(name) % 20 == 0: about 5 %

_KINDS = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


class NotRegularFileError(OSError):
    """A path that exists but is not a regular file (a folder, a FIFO, a device)."""


def kind_of(mode: int) -> str:
    """What ``st_mode`` is, in words: ``"a regular file"``, ``"a FIFO (named pipe)"``, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((word for test, word in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary, refusing anything but a regular file.

    The file is opened with ``O_NONBLOCK`` (so a FIFO without a writer does not
    wait) and checked with ``fstat`` on the open descriptor (no race with a
    rename between a check and the open).

    Raises:
      NotRegularFileError: ``path`` is a folder, a FIFO, a device or a socket; its
        ``strerror`` says which (``"is a FIFO (named pipe), not a regular file"``).
      OSError: it cannot be opened (missing, no permission).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(0, f"is {kind_of(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def check_regular(path: str | os.PathLike, what: str = "") -> None:
    """Refuses, before any work, a path that exists and is not a regular file.

    Raises:
      DataError: ``"[WHAT ]PATH: is a FIFO (named pipe), not a regular file"``.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so
    if not stat.S_ISREG(mode):
        where = f"{what} {shown(str(path))}" if what else shown(str(path))
        raise DataError(f"{where}: is {kind_of(mode)}, not a regular file")


def shown(name: str) -> str:
    r"""``name`` printable: bytes that were not UTF-8 in the file name appear as ``\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class TextFile:
    name: str  # stable key: the path relative to the folder it was found in
    path: pathlib.Path
    in_folder: bool = True  # found in a folder (skipped when not text), not named directly


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


def collect_files(paths: list[str], flag: str = "--text") -> list[TextFile]:
    """The files named by ``--text`` (or ``--val-text``): each a file, or a folder read
    recursively.

    Hidden files and folders (names starting with ``.``) inside a folder are
    skipped, and so are the entries that are not regular files (FIFOs, sockets).

    Raises:
      DataError: a path that does not exist, or one that is neither a folder nor a
        regular file (a FIFO, a device).
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
            files.append(TextFile(path.name, path, in_folder=False))
        elif path.exists():
            check_regular(path, flag)
        else:
            raise DataError(f"{flag} {shown(text)}: no such file or folder")
    return files


def read_text(path: pathlib.Path) -> str:
    """The file as text; :class:`DataError` naming the file and place if not UTF-8, or
    if it is not a regular file (read without blocking on a FIFO or a device)."""
    try:
        with open_regular(path) as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{shown(str(path))}: cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{shown(str(path))}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} (line {line}, byte {column} of the line) cannot be decoded "
            f"({e.reason}); convert the file to UTF-8 or leave it out"
        ) from None


def held_out_by_name(name: str) -> bool:
    """The rule of :func:`split_files`: ``crc32`` of the name's bytes ``% 20 == 0``."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % VAL_BUCKETS == 0


def split_files(files: list[TextFile]) -> tuple[list[TextFile], list[TextFile]]:
    """Deterministic train/validation split by file name (about 5 % held out).

    A file goes to validation when ``crc32(name) % 20 == 0`` -- the same on
    every machine and independent of the other files. With two or more files
    each side gets at least one (the last file by name moves across when the
    hash gives one side none); a single file goes to training (the corpus then
    holds out its last 10 %).
    """
    if len(files) < 2:
        return list(files), []
    val = [f for f in files if held_out_by_name(f.name)]
    train = [f for f in files if not held_out_by_name(f.name)]
    if not val:
        val, train = train[-1:], train[:-1]
    elif not train:
        train, val = val[:-1], val[-1:]
    return train, val


def check_disjoint(train: list[TextFile], val: list[TextFile]) -> None:
    """Refuses a ``--val-text`` file that is also a training file (the same file on disk).

    Raises:
      DataError: naming the file.
    """
    seen = {_identity(f.path): f for f in train}
    for f in val:
        if _identity(f.path) in seen:
            raise DataError(
                f"--val-text {shown(str(f.path))} is also a training file "
                f"({shown(seen[_identity(f.path)].name)}); a file is either trained on or "
                "held out: remove it from --text or from --val-text"
            )


def _identity(path: pathlib.Path) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return (str(path.resolve()),)


def total_bytes(files: list[TextFile]) -> int:
    """The size on disk of ``files`` (an upper bound on their characters)."""
    total = 0
    for f in files:
        with contextlib.suppress(OSError):  # the reader reports it
            total += os.stat(f.path).st_size
    return total
