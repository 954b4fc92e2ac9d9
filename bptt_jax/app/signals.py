"""Ctrl-C and SIGTERM during ``train``: a flag read between steps, never an exception in XLA.

The first SIGINT or SIGTERM sets :attr:`Interrupts.signum`; the loop finishes
the step under way, saves the checkpoint of the last completed step and
exits with ``128 + signum`` (130, 143). A second signal while that checkpoint
is being written is reported and otherwise ignored, so the save completes; a
third abandons it at once (``os._exit``), saying that nothing was saved: the
write is atomic, so the previous checkpoint is intact. Raising
``KeyboardInterrupt`` inside a running JAX computation is what used to lose
the run or crash at exit; the handler here never raises.
"""

from __future__ import annotations

import os
import signal
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
