"""Ctrl-C and SIGTERM during ``train``: a flag read between steps, never an exception in XLA.

The first SIGINT or SIGTERM sets :attr:`Interrupts.signum`; the loop finishes
the step under way, saves the checkpoint of the last completed step and
exits with ``128 + signum`` (130, 143). A second signal while that checkpoint
is being written is reported and otherwise ignored, so the save completes; a
third abandons it at once (``os._exit``), saying that nothing was saved: the
write is atomic, so the previous checkpoint is intact. Raising
``KeyboardInterrupt`` inside a running JAX computation is what used to lose
the run or crash at exit; the handler here never raises.

The command line holds the two signals from its very first import, before JAX
loads (:func:`hold_early_signals`, called by ``bptt_jax/_cli_signals.py``): a
``KeyboardInterrupt`` raised while JAX imports was swallowed by JAX's garbage
collection callback, and the run went on to exit 0. A signal held this way is
taken over by :class:`Interrupts` when ``train`` starts, or reported by
:func:`bptt_jax.app.cli.main.main` before or after the command runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: The signals that stop a run cleanly.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Set by the command line, which owns its process: once a signal has stopped a
# run, the process only exits, and further signals must not raise in the
# middle of its exit (JAX's atexit clean-up once printed a KeyboardInterrupt
# traceback there).
_owns_process = False


def owns_process(flag: bool = True) -> None:
    """Declares that the caller exits soon after a run a signal stopped (the CLI)."""
    global _owns_process
    _owns_process = flag


def _swallow(signum: int, frame) -> None:
    pass


# The signals held before a run's Interrupts took over (hold_early_signals).
_early: list[int] = []
_held: dict[int, object] = {}


def is_command_line(argv: list[str]) -> bool:
    """Whether ``argv`` (``sys.orig_argv``) starts ``bptt-jax`` or ``python -m bptt_jax``."""
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            return argv[i + 1 : i + 2] == ["bptt_jax"]
        if a.startswith("-m"):
            return a == "-mbptt_jax"
        if not a.startswith("-"):
            return os.path.basename(a) == "bptt-jax"
        if a == "-c":
            return False
        i += 2 if a in ("-X", "-W") else 1
    return False


def hold_early_signals(argv: list[str] | None = None) -> None:
    """In the ``bptt-jax`` command line (``argv``, default ``sys.orig_argv``), makes SIGINT
    and SIGTERM set a flag from now on, before JAX loads; a second one quits at once.
    Elsewhere (``import bptt_jax`` in a program) it does nothing."""
    argv = sys.orig_argv if argv is None else argv
    if not is_command_line(argv) or threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            _held[sig] = signal.signal(sig, _hold)


def _hold(signum: int, frame) -> None:
    _early.append(signum)
    if len(_early) > 1:
        os.write(2, f"bptt-jax: {signal_name(signum)} again: quit at once\n".encode())
        os._exit(128 + signum)


def take_early_signal() -> int | None:
    """The first signal held since the last call (``None``: none), forgotten once read."""
    signum = _early[0] if _early else None
    _early.clear()
    return signum


def release_early_signals() -> None:
    """Gives SIGINT and SIGTERM back their usual effect (``KeyboardInterrupt``, exit),
    for the commands that stop on ``KeyboardInterrupt`` (all but ``train``)."""
    for sig in _held:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    _held.clear()


class Interrupted(Exception):  # noqa: N818 (a stop, not an error)
    """A signal arrived before the first step: there is nothing to save."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.status = 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupts:
    """A context manager: SIGINT and SIGTERM set a flag instead of raising.

    Installed only in the main thread (elsewhere Python does not allow it),
    and not for a SIGINT the process inherited as ignored (a background job).
    """

    def __init__(self, command: str = "bptt-jax train"):
        self.command = command
        self.signum: int | None = None  # the first signal received
        self.count = 0
        self.saving: str | None = None  # the checkpoint being written, if any
        self._old: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        early = take_early_signal()  # held by the command line before this run began
        if early is not None:
            self.signum, self.count = early, 1
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, _swallow if self.stop and _owns_process else old)
        self._old.clear()

    @property
    def stop(self) -> bool:
        return self.signum is not None

    @property
    def status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def _say(self, text: str) -> None:
        os.write(2, f"{self.command}: {text}\n".encode())

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            return
        name = signal_name(signum)
        if self.count == 2:  # patience: the save (or the step under way) completes
            if self.saving is not None:
                self._say(f"{name}: still saving {self.saving}; send it again to abandon the save")
            else:
                self._say(f"{name}: stopping after the step under way; send it again to quit now")
            return
        where = self.saving or "the last checkpoint"
        self._say(f"{name} again: quit at once; nothing was saved ({where} is as it was before)")
        os._exit(128 + signum)
