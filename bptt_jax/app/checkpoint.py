"""Checkpoint files: one file, written atomically, checked before it is read.

Layout (no pickle anywhere, so a checkpoint from elsewhere cannot run code)::

    b"BPTTJAX\\x01"          8 bytes, magic and format version
    sha256(rest)              32 bytes
    len(header)               8 bytes, little-endian
    header                    JSON (UTF-8): configuration, vocabulary, step, ...
    arrays                    an ``np.savez`` archive, read with allow_pickle=False

The digest covers every byte after it, so a file cut short or with any byte
changed is refused before anything in it is used. Writing goes to a temporary
file in the same folder, which is flushed, fsynced and then renamed over the
target (``os.replace`` is atomic), so a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import struct
import zipfile

import numpy as np

MAGIC = b"BPTTJAX\x01"
_PREFIX = len(MAGIC) + 32 + 8


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with the reason (reported without a traceback)."""


def save_checkpoint(path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``header`` and ``arrays`` to ``path`` atomically.

    Raises:
      CheckpointError: if a floating array holds NaN or infinity (a checkpoint
        never stores a broken model).
    """
    path = pathlib.Path(path)
    for name, a in arrays.items():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CheckpointError(f"refusing to save a checkpoint: {name} is not finite")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    head = json.dumps(header, sort_keys=True).encode()
    body = struct.pack("<Q", len(head)) + head + buf.getvalue()
    data = MAGIC + hashlib.sha256(body).digest() + body

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads a checkpoint written by :func:`save_checkpoint`; returns ``(header, arrays)``.

    Raises:
      CheckpointError: the file is missing, not a bptt-jax checkpoint, cut
        short, or fails its checksum.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    if not data.startswith(MAGIC[:7]):
        raise CheckpointError(f"{path}: not a bptt-jax checkpoint")
    if data[:8] != MAGIC:
        raise CheckpointError(f"{path}: checkpoint format {data[7]} is not supported")
    if len(data) < _PREFIX:
        raise CheckpointError(f"{path}: checkpoint is truncated ({len(data)} bytes); not loaded")
    digest, body = data[8:40], data[40:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path}: checkpoint is corrupted or truncated (sha256 checksum mismatch); not loaded"
        )
    (n,) = struct.unpack("<Q", body[:8])
    try:
        header = json.loads(body[8 : 8 + n].decode())
        with np.load(io.BytesIO(body[8 + n :]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
        # Only reachable if the writer was broken: the checksum matched.
        raise CheckpointError(f"{path}: checkpoint cannot be parsed: {e}") from None
    return header, arrays
