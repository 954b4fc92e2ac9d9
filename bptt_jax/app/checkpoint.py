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

**The training checkpoint** (the one kind of file bptt-jax writes): a header with
``kind = "bptt-jax train"``, the :class:`~bptt_jax.app.config.TrainConfig`, the
model's sizes ``dims = {K, H, C}``, the vocabulary, the labels (``tag``), the
step, chunk and epoch, and the :class:`~bptt_jax.app.state.History`; arrays
``params/U`` ... ``params/c``, the optimizer state's leaves ``opt/0``, ``opt/1``,
..., the carried state ``h (B, H)`` in stream order, and the RNG ``key``.
:func:`read_training_checkpoint` is the one reader of it: ``train --resume``,
``sample``, ``tag`` and :func:`load_model` all go through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from ..core.params import Params
from .config import RESUMABLE, TrainConfig
from .data import TOKEN_TYPES, Corpus, Vocab, streams_in_order
from .parallel import local_rows
from .state import History, TrainState

PathLike = str | os.PathLike

MAGIC = b"BPTTJAX\x01"
_PREFIX = len(MAGIC) + 32 + 8


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with the reason (reported without a traceback)."""


def save_checkpoint(path: PathLike, header: dict, arrays: dict[str, np.ndarray]) -> None:
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


def load_checkpoint(path: PathLike) -> tuple[dict, dict[str, np.ndarray]]:
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
    """Reads ``path`` and checks that it is a training checkpoint with a consistent model.

    Raises:
      CheckpointError: the file is unreadable or corrupted (:func:`load_checkpoint`),
        is not a training checkpoint, misses a header entry, or holds
        parameters or a vocabulary of other sizes than its header says.
    """
    path = pathlib.Path(path)
    header, arrays = load_checkpoint(path)
    if not isinstance(header, dict) or header.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a bptt-jax training checkpoint")
    try:
        K, H, C = (int(header["dims"][k]) for k in "KHC")
        params = Params(**{n: arrays[f"params/{n}"] for n in Params._fields})
        config = TrainConfig.from_json(header["config"])
        vocab, step = Vocab(header["vocab"]), int(header["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a bptt-jax model checkpoint (missing {e})") from None
    expected = {"U": (H, H), "V": (C, H), "W": (H, K), "b": (H,), "c": (C,)}
    for n, shape in expected.items():
        if getattr(params, n).shape != shape:
            raise CheckpointError(
                f"{path}: {n} has shape {getattr(params, n).shape}, but the checkpoint's "
                f"model is K={K} H={H} C={C} (expected {shape})"
            )
    if vocab.size != K:
        raise CheckpointError(f"{path}: vocabulary does not match the model's K")
    params = Params(*(jnp.asarray(p) for p in params))
    return TrainingCheckpoint(path, header, arrays, config, params, vocab, step)


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
    ckpt: TrainingCheckpoint, config: TrainConfig, corpus: Corpus, tx: optax.GradientTransformation
) -> tuple[TrainState, History]:
    """The :class:`TrainState` and :class:`History` to resume ``config`` on ``corpus`` from.

    ``h`` comes back as the host array ``(B, H)`` in stream order; the caller
    places its rows on its devices.

    Raises:
      CheckpointError: the corpus, the model's sizes, the optimizer or the
        batch differ from the checkpoint's.
    """
    where = ckpt.path
    if ckpt.vocab.chars != corpus.vocab.chars:
        raise CheckpointError(
            f"{where}: the corpus has changed since the checkpoint was written "
            f"(vocabulary of {len(corpus.vocab.chars)} characters, checkpoint has "
            f"{len(ckpt.vocab.chars)}); cannot resume on different data"
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
    config: TrainConfig, corpus: Corpus, state: TrainState, history: History
) -> dict:
    """The header of the checkpoint of ``state`` (JSON-able)."""
    return {
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
