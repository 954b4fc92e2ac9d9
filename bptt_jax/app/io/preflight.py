"""Checks made before any work: the output folder is writable, the job fits in memory.

A run that would fail at its end (an ``--out`` that is a file or read-only) or
run out of memory part-way fails here instead, before the corpus is read, with
one line for the user (:class:`UsageError`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import jax


class UsageError(Exception):
    """A request that cannot be carried out as given (reported without a traceback)."""


def check_writable_folder(folder: str | os.PathLike, flag: str = "--out") -> pathlib.Path:
    """Creates ``folder`` if needed and checks a file can be written in it.

    Raises:
      UsageError: naming the flag, the path and the system's reason.
    """
    path = pathlib.Path(folder)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {folder}: is a file, not a folder")
    probe = path / f".bptt-jax-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot write there: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return path


def available_bytes(*, host: bool = False) -> int:
    """Memory the default device can still use: the accelerator's limit, else (and with
    ``host``) the host's available memory (``MemAvailable``), else its physical memory."""
    device = jax.devices()[0]
    if device.platform != "cpu" and not host:
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def require_memory(what: str, nbytes: int, *, host: bool = False) -> None:
    """Refuses a job whose estimated memory exceeds what is available (on the default
    device, or with ``host`` in the host's memory).

    Raises:
      UsageError: ``what`` with the estimate and the memory available.
    """
    have = available_bytes(host=host)
    if nbytes > have:
        raise UsageError(
            f"{what} needs about {_gib(nbytes)} of memory, but {_gib(have)} is available; "
            "choose smaller sizes"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def rnn_bytes(
    *, K: int, H: int, C: int, B: int, T: int, itemsize: int, copies: int = 6,
    layers: int = 1, directions: int = 1, gates: int = 1,
) -> int:  # fmt: skip
    """A rough estimate of one BPTT step's memory: ``copies`` of the parameters (the
    model, its gradient, optimizer moments, a referee's copy) and a few ``(B, T, .)``
    activations (inputs, states, logits, deltas), for ``layers`` stacked layers of
    ``directions`` (1, or 2 when bidirectional) cells each, of ``gates`` gate blocks
    (1 for the vanilla cell, 4 for the LSTM, 3 for the GRU).

    Parameters: with ``G = gates``, the first layer's ``D G (H H + H K + H)``, each
    layer above ``D G (H H + D H H + H)``, the output ``C D H + C``; activations:
    ``(1 + 2 G) H`` per layer and direction (the state, the gates' values and their
    δ), and ``2 C + K``, per character.
    """
    L, D, G = layers, directions, gates
    params = (D * G * (H * H + H * K + H) + (L - 1) * D * G * (H * H + D * H * H + H)
              + C * D * H + C)  # fmt: skip
    activations = B * T * ((1 + 2 * G) * H * L * D + 2 * C + K)
    return itemsize * (copies * params + 4 * activations)
