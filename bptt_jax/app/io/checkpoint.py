"""Checkpoint files: one file, written atomically, trusted in nothing before it is checked.

This module is the FILE FORMAT; what a training checkpoint holds (its header
schema, its arrays, the one reader
:func:`~bptt_jax.app.training.checkpoint_schema.read_training_checkpoint`) is the
other half, :mod:`bptt_jax.app.training.checkpoint_schema`.

Layout (format 2; no pickle and no compression anywhere, so a checkpoint from
elsewhere can neither run code nor expand in memory)::

    b"BPTTJAX\\x02"          8 bytes, magic and format version
    sha256(rest)              32 bytes
    len(header)               8 bytes, little-endian
    header                    JSON (UTF-8): configuration, vocabulary, step, ...
    arrays                    a safetensors file: 8-byte little-endian length, a JSON
                              table {name: {dtype, shape, data_offsets}}, raw bytes

The digest covers every byte after it, so a file cut short or with any byte
changed is refused before anything in it is used. The digest is no signature
(anyone can recompute it), so everything is also checked: the header against
the schema of a training checkpoint
(:func:`bptt_jax.app.training.checkpoint_schema.check_training_header`), which
bounds the bytes its arrays may take *before* they are read, and every array's
dtype, shape and byte range against what the configuration implies. The array
section is a plain safetensors file (``tail -c +N`` of a checkpoint opens with
the ``safetensors`` package or any tool that reads the format).

Writing goes to ``.NAME.tmp-PID`` in the same folder, which is flushed, fsynced
and then renamed over the target (``os.replace`` is atomic), so a crash or a
full disk mid-write leaves the previous checkpoint intact; temporary files left
by killed writers are removed by the next save.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pathlib
import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from .files import NotRegularFileError, open_regular

PathLike = str | os.PathLike

FORMAT = 2
MAGIC = b"BPTTJAX" + bytes([FORMAT])
_PREFIX = len(MAGIC) + 32 + 8
_MAX_HEADER = 1 << 28  # 256 MiB of JSON: far above any run's history
_MAX_TABLE = 1 << 20  # the safetensors table: a few dozen entries
_CHUNK = 1 << 20

#: safetensors dtype names <-> numpy dtypes (the ones a checkpoint can hold).
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}  # fmt: skip
_NAMES = {v: k for k, v in _DTYPES.items()}


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with the reason (reported without a traceback)."""


def save_checkpoint(path: PathLike, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``header`` and ``arrays`` to ``path`` atomically.

    Raises:
      CheckpointError: if a floating array holds NaN or infinity (a checkpoint
        never stores a broken model), or the file cannot be written (naming
        the path and the system's reason; the previous checkpoint is intact).
    """
    path = pathlib.Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}  # tobytes() writes C order
    for name, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CheckpointError(f"refusing to save a checkpoint: {name} is not finite")
    head = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    body = struct.pack("<Q", len(head)) + head + _safetensors(arrays)
    data = MAGIC + hashlib.sha256(body).digest() + body

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        where = e.filename or path
        raise CheckpointError(
            f"cannot write the checkpoint {path}: {where}: {e.strerror or e}"
            + ("; the previous checkpoint is unchanged" if path.is_file() else "")
        ) from None
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


def _remove_stale(path: pathlib.Path) -> None:
    """Removes ``.NAME.tmp-PID`` files of writers that are no longer running."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _safetensors(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of a safetensors file (little-endian, C order)."""
    table, blobs, offset = {}, [], 0
    for name in sorted(arrays):
        a = arrays[name]
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype not in _NAMES:
            raise CheckpointError(f"refusing to save a checkpoint: {name} has dtype {a.dtype}")
        raw = a.astype(dtype, copy=False).tobytes()
        table[name] = {
            "dtype": _NAMES[dtype], "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }  # fmt: skip
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(table, sort_keys=True).encode()
    head += b" " * (-len(head) % 8)  # the format pads the table to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def load_checkpoint(
    path: PathLike, *, limit: Callable[[Any], int] | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads a checkpoint written by :func:`save_checkpoint`; returns ``(header, arrays)``.

    Args:
      path: the file.
      limit: called with the parsed header before any array byte is read:
        returns the most bytes the arrays may take, or raises
        :class:`CheckpointError` (a schema check). A file holding more is
        refused without being read.

    Raises:
      CheckpointError: the file is missing, not a regular file (a folder, a FIFO, a
        device), not a bptt-jax checkpoint of this
        format, cut short, fails its checksum, is refused by ``limit``, or
        holds a malformed array table.
    """
    path = pathlib.Path(path)
    try:
        with open_regular(path) as f:  # a FIFO or a device is refused, never waited on
            return _load(path, f, limit)
    except NotRegularFileError as e:
        raise CheckpointError(f"{path}: {e.strerror}; give a checkpoint file") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None


def _load(path: pathlib.Path, f, limit) -> tuple[dict, dict[str, np.ndarray]]:
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(_PREFIX)
    if not prefix.startswith(MAGIC[:7]):
        raise CheckpointError(f"{path}: not a bptt-jax checkpoint")
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: checkpoint is truncated ({size} bytes); not loaded")
    if prefix[:8] != MAGIC:
        raise CheckpointError(
            f"{path}: checkpoint format {prefix[7]} is not supported (this bptt-jax reads "
            f"format {FORMAT}); retrain, or read it with the bptt-jax that wrote it"
        )
    if len(prefix) < _PREFIX:
        raise CheckpointError(f"{path}: checkpoint is truncated ({size} bytes); not loaded")
    digest = prefix[8:40]
    (n,) = struct.unpack("<Q", prefix[40:48])

    def refuse(message: str):  # a damaged file says so, whatever else looks wrong
        f.seek(40)
        sha = hashlib.sha256()
        while block := f.read(_CHUNK):
            sha.update(block)
        if sha.digest() != digest:
            message = "checkpoint is corrupted or truncated (sha256 checksum mismatch)"
        raise CheckpointError(f"{path}: {message}; not loaded")

    if n > min(size - _PREFIX, _MAX_HEADER):
        refuse(f"header length {n} is beyond the file's {size} bytes")
    head = f.read(n)
    try:
        header = json.loads(head.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        refuse(f"header is not JSON ({e})")
    rest = size - _PREFIX - n
    if limit is not None:
        try:
            allowed = limit(header)
        except CheckpointError as e:
            refuse(str(e))
        if rest > allowed + _MAX_TABLE + 8:  # refused unread (no checksum of it either)
            raise CheckpointError(
                f"{path}: the arrays take {rest} bytes, but the header's configuration allows "
                f"at most {allowed} (a damaged or forged file); not loaded"
            )
    tail = f.read(rest)
    if hashlib.sha256(prefix[40:48] + head + tail).digest() != digest or len(tail) != rest:
        raise CheckpointError(
            f"{path}: checkpoint is corrupted or truncated (sha256 checksum mismatch); not loaded"
        )
    try:
        arrays = _read_safetensors(tail)
    except ValueError as e:  # the checksum matched: written so (a broken or forged file)
        raise CheckpointError(f"{path}: checkpoint arrays cannot be read: {e}") from None
    return header, arrays


def _read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file, every entry checked before it is used."""
    if len(data) < 8:
        raise ValueError("no array table")
    (m,) = struct.unpack("<Q", data[:8])
    if m > min(len(data) - 8, _MAX_TABLE):
        raise ValueError(f"array table of {m} bytes")
    table = json.loads(data[8 : 8 + m].decode())
    if not isinstance(table, dict):
        raise ValueError("the array table is not a JSON object")
    buf, arrays, ranges = memoryview(data)[8 + m :], {}, []
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise ValueError(f"{name}: malformed entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_count(d) for d in shape)):
            raise ValueError(f"{name}: shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
            raise ValueError(f"{name}: byte range {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if not begin <= end <= len(buf) or end - begin != nbytes:
            raise ValueError(f"{name}: byte range {offsets} does not hold {dtype} {shape}")
        ranges.append((begin, end))
        a = np.frombuffer(buf[begin:end], dtype=_DTYPES[dtype]).reshape(tuple(shape))
        arrays[name] = a.astype(a.dtype.newbyteorder("="))  # a native, writable copy
    ranges.sort()
    if any(b0 < e1 for (_, e1), (b0, _) in itertools.pairwise(ranges)):
        raise ValueError("overlapping arrays")
    return arrays


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62
