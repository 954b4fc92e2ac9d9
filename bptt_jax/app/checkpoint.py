"""Checkpoint files: one file, written atomically, trusted in nothing before it is checked.

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
the schema of a training checkpoint (:func:`check_training_header`), which
bounds the bytes its arrays may take *before* they are read, and every array's
dtype, shape and byte range against what the configuration implies. The array
section is a plain safetensors file (``tail -c +N`` of a checkpoint opens with
the ``safetensors`` package or any tool that reads the format).

Writing goes to ``.NAME.tmp-PID`` in the same folder, which is flushed, fsynced
and then renamed over the target (``os.replace`` is atomic), so a crash or a
full disk mid-write leaves the previous checkpoint intact; temporary files left
by killed writers are removed by the next save.

**The training checkpoint** (the one kind of file bptt-jax writes): a header with
``kind = "bptt-jax train"``, the :class:`~bptt_jax.app.config.TrainConfig`, the
model's sizes ``dims = {K, H, C}``, the vocabulary, the labels (``tag``), the
step, chunk and epoch, the :class:`~bptt_jax.app.state.History` and the
fingerprint (sha256) of the training data; arrays ``params/U`` ...
``params/c``, the optimizer state's leaves ``opt/0``, ``opt/1``, ..., the
carried state ``h (B, H)`` in stream order, and the RNG ``key``.
:func:`read_training_checkpoint` is the one reader of it: ``train --resume``,
``sample``, ``tag`` and :func:`load_model` all go through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import pathlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from ..core.params import Params
from .config import RESUMABLE, TrainConfig, TrainingError
from .data import TOKEN_TYPES, Corpus, Vocab
from .parallel import local_rows
from .state import History, TrainState
from .streams import streams_in_order

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
      CheckpointError: the file is missing, not a bptt-jax checkpoint of this
        format, cut short, fails its checksum, is refused by ``limit``, or
        holds a malformed array table.
    """
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            return _load(path, f, limit)
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


# --------------------------------------------------------------------------- the schema

KIND = "bptt-jax train"


class TrainingCheckpoint(NamedTuple):
    """A training checkpoint whose header and model arrays have been checked."""

    path: pathlib.Path
    header: dict
    arrays: dict[str, np.ndarray]
    config: TrainConfig
    params: Params  # on the default device
    vocab: Vocab
    step: int


def read_training_checkpoint(path: PathLike) -> TrainingCheckpoint:
    """Reads ``path`` and checks everything in it against the schema of a training checkpoint.

    The header is checked first (:func:`check_training_header`), which bounds
    the bytes the arrays may take before any is read; then every array the
    configuration implies must be there with its dtype and shape, and the
    model's arrays must be finite.

    Raises:
      CheckpointError: the file is unreadable or corrupted (:func:`load_checkpoint`),
        is not a training checkpoint, or anything in it disagrees with the schema
        (one line naming the entry or the array).
    """
    path = pathlib.Path(path)
    header, arrays = load_checkpoint(path, limit=check_training_header)
    config = _config(header)
    dtype = np.dtype(config.dtype)
    K, H, C = (header["dims"][k] for k in "KHC")
    B = config.batch_size
    expected = {
        "params/U": ((H, H), dtype), "params/V": ((C, H), dtype), "params/W": ((H, K), dtype),
        "params/b": ((H,), dtype), "params/c": ((C,), dtype), "h": ((B, H), dtype),
        "key": ((2,), np.dtype(np.uint32)),
    }  # fmt: skip
    for name, (shape, dt) in expected.items():
        a = arrays.get(name)
        if a is None:
            raise CheckpointError(f"{path}: the array {name} is missing")
        if a.shape != shape or a.dtype != dt:
            raise CheckpointError(
                f"{path}: {name} is {a.dtype} {a.shape}, but the checkpoint's model "
                f"(K={K} H={H} C={C} B={B} {config.dtype}) needs {dt} {shape}"
            )
    for name, a in arrays.items():
        if name in expected:
            pass
        elif not re.fullmatch(r"opt/\d+", name):
            raise CheckpointError(f"{path}: unexpected array {name!r}")
        elif a.dtype not in (dtype, np.dtype(np.int32)) or a.size > H * max(H, K, C):
            raise CheckpointError(f"{path}: optimizer state {name} is {a.dtype} {a.shape}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise CheckpointError(f"{path}: {name} holds NaN or infinity; not loaded")
    params = Params(*(jnp.asarray(arrays[f"params/{n}"]) for n in Params._fields))
    vocab = Vocab(header["vocab"])
    return TrainingCheckpoint(path, header, arrays, config, params, vocab, header["step"])


def _config(header: dict) -> TrainConfig:
    try:
        return TrainConfig.from_json(header["config"])
    except TrainingError as e:
        raise CheckpointError(f"config: {e}") from None


def _integer(value, name: str, minimum: int = 0, maximum: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise CheckpointError(
            f"{name} must be an integer in {minimum}..{maximum}, got {json.dumps(value)[:40]}"
        )
    return value


def check_training_header(header: Any) -> int:
    """Checks a training checkpoint's header; returns the most bytes its arrays may take.

    Every entry's type and range, the configuration (by
    :func:`bptt_jax.app.config.check_config`), the sizes ``K = len(vocab) + 1``,
    ``H = hidden_size``, ``C`` (K, or the number of token types), and the
    position (``step <= steps``). The bound is the parameters, up to three
    optimizer copies of them, and the state ``h (B, H)``.

    Raises:
      CheckpointError: one line naming the first entry that is wrong.
    """
    if not isinstance(header, dict):
        raise CheckpointError(f"the header must be a JSON object, not {_json_kind(header)}")
    if header.get("kind") != KIND:
        raise CheckpointError("not a bptt-jax training checkpoint")
    need = ("config", "dims", "vocab", "labels", "step", "chunk", "epoch", "history", "data")
    missing = [k for k in need if k not in header]
    if missing:
        raise CheckpointError(f"the header lacks {', '.join(missing)}")
    try:
        config = TrainConfig.from_json(header["config"])
    except TrainingError as e:
        raise CheckpointError(f"config: {e}") from None
    vocab = header["vocab"]
    if not isinstance(vocab, str) or len(set(vocab)) != len(vocab):
        raise CheckpointError(
            f"vocab must be a string of distinct characters, not {_json_kind(vocab)}"
        )
    dims = header["dims"]
    if not (isinstance(dims, dict) and set(dims) == {"K", "H", "C"}):
        raise CheckpointError("dims must be an object {K, H, C}")
    K, H, C = (_integer(dims[k], f"dims.{k}", 1) for k in "KHC")
    expected_C = K if config.task == "lm" else len(TOKEN_TYPES)
    if (len(vocab) + 1, config.hidden_size, expected_C) != (K, H, C):
        raise CheckpointError(
            f"dims K={K} H={H} C={C} disagree with the vocabulary ({len(vocab)} characters + "
            f"1 unknown) and the configuration (H={config.hidden_size}, task {config.task})"
        )
    labels = header["labels"]
    if labels != (list(TOKEN_TYPES) if config.task == "tag" else None):
        raise CheckpointError(f"labels {json.dumps(labels)[:60]} do not match task {config.task}")
    step = _integer(header["step"], "step", 0, config.steps)
    _integer(header["chunk"], "chunk")
    _integer(header["epoch"], "epoch")
    _check_history(header["history"], step)
    data = header["data"]
    if not (isinstance(data, dict) and isinstance(data.get("sha256"), str)):
        raise CheckpointError("data must be an object holding the sha256 of the training data")
    item = np.dtype(config.dtype).itemsize
    params = H * H + C * H + H * K + H + C
    return item * (4 * params + config.batch_size * H) + 64 * 16


def _check_history(history: Any, step: int) -> None:
    fields = {f.name for f in dataclasses.fields(History)}
    if not isinstance(history, dict) or not set(history) <= fields:
        raise CheckpointError(f"history must be an object with the keys {', '.join(fields)}")
    for name in ("train", "val"):
        rows = history.get(name, [])
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and _is_number(r[0]) and _is_number(r[1])
            for r in rows
        ):
            raise CheckpointError(f"history.{name} must be a list of [step, loss, ...] rows")
    for name in ("nonfinite", "nonfinite_run", "verified"):
        _integer(history.get(name, 0), f"history.{name}")
    for name in ("seconds", "verify_error"):
        if not _is_number(history.get(name, 0.0)):
            raise CheckpointError(f"history.{name} must be a number")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _json_kind(value) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def data_fingerprint(corpus: Corpus) -> dict:
    """The sha256 of the training data (ids and labels) and its length: what ``--resume``
    compares to refuse continuing on other data."""
    sha = hashlib.sha256(np.ascontiguousarray(corpus.train_ids, np.int32).tobytes())
    if corpus.train_labels is not None:
        sha.update(np.ascontiguousarray(corpus.train_labels, np.int32).tobytes())
    sha.update(corpus.vocab.chars.encode())
    return {"sha256": sha.hexdigest(), "chars": len(corpus.train_ids)}


def config_for_resume(saved: dict, given: dict[str, Any]) -> TrainConfig:
    """The saved configuration with the options a resumed run may change.

    Raises:
      CheckpointError: an option that shapes the model or the data (say
        ``--hidden-size``) was given with a value other than the checkpoint's.
    """
    config = TrainConfig.from_json(saved)
    for name, value in given.items():
        if name in RESUMABLE:
            config = dataclasses.replace(config, **{name: value})
            continue
        old = getattr(config, name)
        if (tuple(value) if name == "text" else value) != old:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(
                f"the checkpoint was trained with {flag} {_show(old)}, not {_show(value)}; "
                f"drop {flag} to resume it, or start a new run in another --out folder"
            )
    return config


def _show(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "(standard library)"
    return str(value)


def restore(
    ckpt: TrainingCheckpoint,
    config: TrainConfig,
    corpus: Corpus,
    tx: optax.GradientTransformation,
    *,
    fingerprint: dict | None = None,
    allow_data_change: bool = False,
) -> tuple[TrainState, History]:
    """The :class:`TrainState` and :class:`History` to resume ``config`` on ``corpus`` from.

    ``h`` comes back as the host array ``(B, H)`` in stream order; the caller
    places its rows on its devices.

    Raises:
      CheckpointError: the corpus, the model's sizes, the optimizer or the
        batch differ from the checkpoint's; or the training data's
        ``fingerprint`` differs (unless ``allow_data_change``).
    """
    where = ckpt.path
    if ckpt.vocab.chars != corpus.vocab.chars:
        raise CheckpointError(
            f"{where}: the corpus has changed since the checkpoint was written "
            f"(vocabulary of {len(corpus.vocab.chars)} characters, checkpoint has "
            f"{len(ckpt.vocab.chars)}); cannot resume on different data"
        )
    fingerprint = fingerprint or data_fingerprint(corpus)
    if ckpt.header["data"].get("sha256") != fingerprint["sha256"] and not allow_data_change:
        raise CheckpointError(
            f"{where}: the training data has changed since the checkpoint was written "
            f"({ckpt.header['data'].get('chars')} characters then, {fingerprint['chars']} now, "
            "different content); give --allow-data-change to resume on the new data anyway"
        )
    dims = ckpt.header["dims"]
    if (dims["K"], dims["H"], dims["C"]) != (
        corpus.vocab.size,
        config.hidden_size,
        corpus.num_classes,
    ):
        raise CheckpointError(f"{where}: model size {dims} does not match the configuration")
    h = ckpt.arrays.get("h")
    if h is None or h.shape != (config.batch_size, config.hidden_size) or (
        h.dtype != ckpt.params.U.dtype
    ):  # fmt: skip
        shape, dtype = (None, None) if h is None else (h.shape, h.dtype)
        raise CheckpointError(f"{where}: hidden state has shape {shape} and dtype {dtype}")
    try:
        key = jax.random.wrap_key_data(jnp.asarray(ckpt.arrays["key"]))
        position = [int(ckpt.header[k]) for k in ("step", "chunk", "epoch")]
        history = History.from_json(ckpt.header["history"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: not a bptt-jax training checkpoint ({e})") from None
    opt_state = _restore_opt_state(ckpt, config, tx)
    return TrainState(ckpt.params, opt_state, h, key, *position), history


def _restore_opt_state(ckpt: TrainingCheckpoint, config: TrainConfig, tx) -> Any:
    leaves, treedef = jax.tree.flatten(tx.init(ckpt.params))
    restored = []
    for i, leaf in enumerate(leaves):
        a = ckpt.arrays.get(f"opt/{i}")
        if a is None or a.shape != leaf.shape or a.dtype != leaf.dtype:
            raise CheckpointError(
                f"{ckpt.path}: optimizer state does not match --optimizer {config.optimizer}"
            )
        restored.append(jnp.asarray(a))
    return jax.tree.unflatten(treedef, restored)


def training_header(
    config: TrainConfig,
    corpus: Corpus,
    state: TrainState,
    history: History,
    fingerprint: dict | None = None,
) -> dict:
    """The header of the checkpoint of ``state`` (JSON-able)."""
    return {
        "data": fingerprint or data_fingerprint(corpus),
        "kind": KIND,
        "config": config.to_json(),
        "dims": {"K": corpus.vocab.size, "H": config.hidden_size, "C": corpus.num_classes},
        "vocab": corpus.vocab.chars,
        "labels": list(TOKEN_TYPES) if config.task == "tag" else None,
        "step": state.step,
        "chunk": state.chunk,
        "epoch": state.epoch,
        "history": history.to_json(),
    }


def training_arrays(state: TrainState) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint of ``state`` (collective on several processes).

    Host arrays only: parameters and optimizer state are replicated (any
    device's copy), ``h`` is gathered in stream order, so the file does not
    depend on the device count that wrote it.
    """
    arrays = {f"params/{n}": np.asarray(getattr(state.params, n)) for n in Params._fields}
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    arrays["h"] = _host_h(state.h)
    arrays["key"] = np.asarray(jax.random.key_data(state.key))
    return arrays


def _host_h(h: jax.Array) -> np.ndarray:
    """The carried state ``(B, H)`` as one host array, row b = stream b."""
    local = local_rows(h)  # this process's streams p, p + P, ...
    if jax.process_count() == 1:
        return local
    return streams_in_order(multihost_utils.process_allgather(local))  # (P, B/P, H) -> (B, H)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A trained model read from a checkpoint, for ``sample`` and ``tag``."""

    params: Params
    vocab: Vocab
    task: str
    config: TrainConfig
    step: int


def load_model(path: PathLike) -> Model:
    """Reads the model of a training checkpoint (refusing corrupted files).

    Raises:
      CheckpointError: see :func:`read_training_checkpoint`.
    """
    ckpt = read_training_checkpoint(path)
    return Model(ckpt.params, ckpt.vocab, ckpt.config.task, ckpt.config, ckpt.step)
