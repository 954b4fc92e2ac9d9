"""The run folder ``--out`` of ``bptt-jax train``: one writer, nothing overwritten, and
every write that fails reported as one line naming its path.

Before the corpus is read, :func:`open_run_folder` takes the folder's lock (a second
``train`` on the same folder is refused, not interleaved), refuses a fresh run over
an earlier one's checkpoint unless ``--overwrite`` is given, and refuses an output
name taken by something that is not a regular file (a folder named ``metrics.csv``).
On ``--resume`` it repairs ``metrics.csv`` (:func:`repair_metrics`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import pathlib
import sys
from collections.abc import Iterator

from ..io.preflight import UsageError

CHECKPOINT_NAME = "checkpoint.bptt"
BEST_NAME = "best.bptt"  # the checkpoint with the best validation loss so far
METRICS_NAME = "metrics.csv"
PLOT_NAME = "loss.png"
#: Held (``fcntl.flock``) by the ``train`` writing the folder; holds its pid.
LOCK_NAME = ".bptt-jax.lock"
#: The files a run writes into ``--out``.
OUTPUT_NAMES = (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, PLOT_NAME)
METRICS_COLUMNS = ("step", "train_bits", "val_bits", "lr", "grad_norm", "steps_per_s",
                   "tokens_per_s")  # fmt: skip
METRICS_HEADER = ",".join(METRICS_COLUMNS)

# flock is not supported everywhere (some network file systems): run unlocked there.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputError(UsageError):
    """Writing one of the run's outputs failed (reported as one line naming the path)."""


def cannot_write(path: str | os.PathLike, e: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turns an ``OSError`` of the block into an :class:`OutputError` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise cannot_write(path, e) from None


def silence_stdout() -> None:
    """Points standard output at ``/dev/null`` after a write to it failed, so that
    Python's own flush at exit does not fail a second time, with a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def say(text: str) -> None:
    """Prints ``text`` on standard output; a closed or full one is an :class:`OutputError`."""
    try:
        print(text, flush=True)
    except OSError as e:
        silence_stdout()
        raise cannot_write("standard output", e) from None


class FolderLock:
    """An exclusive ``flock`` on ``OUT/.bptt-jax.lock``: released by :meth:`release` or when
    the process dies (the kernel drops it, so a dead holder's lock never blocks)."""

    def __init__(self, folder: str | os.PathLike):
        self.path = pathlib.Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        """Takes the lock.

        Raises:
          UsageError: another process holds it (naming its pid), or the file cannot be made.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise cannot_write(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            folder = self.path.parent
            raise UsageError(
                f"--out {folder}: another bptt-jax train (pid {holder}) is writing there; "
                "wait for it to finish or give another --out"
            ) from None
        except OSError as e:
            if e.errno not in _NO_LOCKING:
                os.close(fd)
                raise cannot_write(self.path, e) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock; the file stays (removing it would race)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _kind(path: pathlib.Path) -> str | None:
    """What ``path`` is when it is in the way of a regular file, else ``None``."""
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if not path.exists() or path.is_file():
        return None
    return "a folder" if path.is_dir() else "not a regular file"


def check_output_names(folder: str | os.PathLike) -> None:
    """Refuses an output name taken by a folder, a FIFO or another non-file, and an
    existing ``metrics.csv`` that cannot be appended to.

    Raises:
      UsageError: naming the path and what is in the way.
    """
    folder = pathlib.Path(folder)
    for name in OUTPUT_NAMES:
        path = folder / name
        kind = _kind(path)
        if kind is not None:
            raise UsageError(
                f"--out {folder}: {path} is {kind}, and train writes a file there; move it "
                "away or give another --out"
            )
    metrics = folder / METRICS_NAME
    if metrics.exists() and not os.access(metrics, os.W_OK):
        raise UsageError(f"--out {folder}: {metrics} cannot be written (permission denied)")


def check_not_overwriting(
    folder: str | os.PathLike, resume: str | os.PathLike | None, overwrite: bool
) -> None:
    """Refuses to start a fresh run over an earlier one's checkpoints; with
    ``overwrite`` removes the earlier run's outputs instead.

    A ``--resume`` of a checkpoint in ``folder`` continues that run; one from elsewhere
    may not write into a folder holding another run's checkpoints.

    Raises:
      UsageError: naming the folder, what it holds, and the ways on.
    """
    folder = pathlib.Path(folder)
    held = [name for name in (CHECKPOINT_NAME, BEST_NAME) if (folder / name).exists()]
    if resume is not None:
        if overwrite:
            raise UsageError("--overwrite starts a new run; it cannot go with --resume")
        same = pathlib.Path(resume).resolve().parent == folder.resolve()
        if held and not same:
            raise UsageError(
                f"--out {folder} holds another run ({', '.join(held)}); resume into its "
                "own folder or give a new --out"
            )
        return
    if not held:
        return
    if not overwrite:
        raise UsageError(
            f"--out {folder} already holds a run ({', '.join(held)}); continue it with "
            "--resume, give a new --out, or --overwrite to replace it"
        )
    for name in OUTPUT_NAMES:
        with writing(folder / name):
            (folder / name).unlink(missing_ok=True)


def repair_metrics(path: str | os.PathLike, step: int) -> None:
    """Makes ``metrics.csv`` fit a resume from ``step``: the header first, only whole rows
    of :data:`METRICS_COLUMNS` (a row cut short or glued to the next is dropped), at most
    one row per step, in order, none after ``step`` (those of a session stopped before it
    saved them: the resumed run writes them again). Rewritten (atomically) only when it
    changes; a missing or empty file gets the header.

    Raises:
      OutputError: the file cannot be read or written.
    """
    path = pathlib.Path(path)
    with writing(path):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        rows, last = [], -1
        for line in text.split("\n")[:-1]:  # the piece after the last newline was cut
            fields = line.split(",")
            if line == METRICS_HEADER or len(fields) != len(METRICS_COLUMNS):
                continue
            try:
                row_step = int(fields[0])
            except ValueError:
                continue
            if last < row_step <= step:
                rows.append(line)
                last = row_step
        repaired = "".join(f"{line}\n" for line in (METRICS_HEADER, *rows))
        if repaired != text:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(repaired, encoding="utf-8")
            os.replace(tmp, path)


def start_metrics(path: str | os.PathLike) -> None:
    """A fresh run's ``metrics.csv``: the header only (an older file's rows are gone).

    Raises:
      OutputError: it cannot be written.
    """
    with writing(path), open(path, "w", encoding="utf-8") as f:
        f.write(METRICS_HEADER + "\n")


def open_run_folder(
    folder: str | os.PathLike,
    *,
    resume: str | os.PathLike | None,
    overwrite: bool,
) -> FolderLock:
    """Locks ``folder`` and checks its outputs (see the module's docstring); a fresh run
    gets a new ``metrics.csv`` (a resume repairs it once it knows its step). Returns the
    lock, to be released when the run ends.

    Raises:
      UsageError: the folder is in use, holds another run, or an output name is taken.
    """
    lock = FolderLock(folder).acquire()
    try:
        check_output_names(folder)
        check_not_overwriting(folder, resume, overwrite)
        if resume is None:
            start_metrics(pathlib.Path(folder) / METRICS_NAME)
    except BaseException:
        lock.release()
        raise
    return lock
