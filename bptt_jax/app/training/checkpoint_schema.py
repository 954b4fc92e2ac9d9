"""The training checkpoint: the schema of the one kind of file bptt-jax writes.

The file format (layout, checksum, atomic writes, the safetensors reader and
writer, :class:`~bptt_jax.app.io.checkpoint.CheckpointError`) is the other half,
:mod:`bptt_jax.app.io.checkpoint`; this module says what a training checkpoint's
header and arrays must be.

A header with ``kind = "bptt-jax train"``, the
:class:`~bptt_jax.app.training.config.TrainConfig`, the model's sizes
``dims = {K, H, C}``, the vocabulary, the labels (``tag``), the step, chunk and
epoch, the :class:`~bptt_jax.app.training.state.History`, the fingerprint (sha256) of
the training data and (optional: older files lack it) the held-out ``split``
(:func:`bptt_jax.app.io.split.split_record` without the training files' names);
arrays ``params/U`` ... ``params/c``, the optimizer state's leaves ``opt/0``,
``opt/1``, ..., the carried state ``h (B, H)`` in stream order (and the LSTM's ``c``:
one array per part, :func:`~bptt_jax.app.training.models.state_names`), and the RNG
``key``. A configuration without ``cell`` (written before the gated cells) is the
vanilla cell's. :func:`read_training_checkpoint` is the one reader of it: ``train
--resume``, ``sample``, ``tag`` and :func:`load_model` all go through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from ...core.params import DeepParams, Params
from ..io.checkpoint import CheckpointError, PathLike, load_checkpoint
from ..io.corpus import TOKEN_TYPES, Corpus, Vocab
from ..io.split import split_record
from ..io.streams import streams_in_order
from .config import PATH_LISTS, RESUMABLE, TrainConfig, TrainingError
from .models import (
    param_arrays,
    param_shapes,
    params_from_arrays,
    state_arrays,
    state_from_arrays,
    state_names,
    state_shape,
)
from .parallel import local_rows
from .state import History, TrainState

KIND = "bptt-jax train"


class TrainingCheckpoint(NamedTuple):
    """A training checkpoint whose header and model arrays have been checked."""

    path: pathlib.Path
    header: dict
    arrays: dict[str, np.ndarray]
    config: TrainConfig
    params: Params | DeepParams  # on the default device
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
    expected = {name: (shape, dtype) for name, shape in param_shapes(config, K, H, C).items()}
    for name in state_names(config):  # "h", and the LSTM's "c"
        expected[name] = (state_shape(config), dtype)
    expected["key"] = ((2,), np.dtype(np.uint32))
    biggest = max(math.prod(shape) for shape, _ in expected.values())
    for name, (shape, dt) in expected.items():
        a = arrays.get(name)
        if a is None:
            raise CheckpointError(f"{path}: the array {name} is missing")
        if a.shape != shape or a.dtype != dt:
            raise CheckpointError(
                f"{path}: {name} is {a.dtype} {a.shape}, but the checkpoint's model "
                f"(K={K} H={H} C={C} B={B} L={config.num_layers} {config.cell}"
                f"{' bidirectional' if config.bidirectional else ''} {config.dtype}) "
                f"needs {dt} {shape}"
            )
    for name, a in arrays.items():
        if name in expected:
            pass
        elif not re.fullmatch(r"opt/\d+", name):
            raise CheckpointError(f"{path}: unexpected array {name!r}")
        elif a.dtype not in (dtype, np.dtype(np.int32)) or a.size > biggest:
            raise CheckpointError(f"{path}: optimizer state {name} is {a.dtype} {a.shape}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise CheckpointError(f"{path}: {name} holds NaN or infinity; not loaded")
    params = params_from_arrays(config, arrays)
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
    :func:`bptt_jax.app.training.config.check_config`), the sizes ``K = len(vocab) + 1``,
    ``H = hidden_size``, ``C`` (K, or the number of token types), and the
    position (``step <= steps``). The bound is the parameters, up to three
    optimizer copies of them, and the state ``h (B, H)`` (and the LSTM's ``c``).

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
    split = header.get("split")  # since the held-out split is recorded; older files lack it
    if split is not None and not (isinstance(split, dict) and isinstance(split.get("rule"), str)):
        raise CheckpointError("split must be an object naming the held-out rule and files")
    item = np.dtype(config.dtype).itemsize
    params = sum(math.prod(s) for s in param_shapes(config, K, H, C).values())
    state = len(state_names(config)) * math.prod(state_shape(config))
    return item * (4 * params + state) + 64 * 16


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
    for name in ("nonfinite", "nonfinite_run", "verified", "best_step"):
        _integer(history.get(name, 0), f"history.{name}")
    for name in ("seconds", "verify_error", "best_loss"):
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
        if (tuple(value) if name in PATH_LISTS else value) != old:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(
                f"the checkpoint was trained with {flag} {_show(old, name)}, not "
                f"{_show(value, name)}; "
                f"drop {flag} to resume it, or start a new run in another --out folder"
            )
    return config


def _show(value, name: str = "text") -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or ("(standard library)" if name == "text" else "()")
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

    ``h`` comes back as the host array ``(B, H)`` (``(L*D, B, H)`` for a deep
    model; the LSTM's pair ``(h, c)`` of them) in stream order; the caller places its
    rows on its devices.

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
    for name in state_names(config):
        h = ckpt.arrays.get(name)
        if h is None or h.shape != state_shape(config) or h.dtype != ckpt.params.V.dtype:
            shape, dtype = (None, None) if h is None else (h.shape, h.dtype)
            raise CheckpointError(f"{where}: state {name} has shape {shape} and dtype {dtype}")
    h = state_from_arrays(config, ckpt.arrays)
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
        "split": split_record(corpus, train_names=False),
    }


def training_arrays(config: TrainConfig, state: TrainState) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint of ``state`` (collective on several processes).

    Host arrays only: parameters and optimizer state are replicated (any
    device's copy), ``h`` (every part of the state) is gathered in stream order, so
    the file does not depend on the device count that wrote it.
    """
    arrays = param_arrays(jax.device_get(state.params))
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    arrays |= state_arrays(config, jax.tree.map(_host_h, state.h))
    arrays["key"] = np.asarray(jax.random.key_data(state.key))
    return arrays


def _host_h(h: jax.Array) -> np.ndarray:
    """A part of the carried state ``(B, H)`` as one host array, row b = stream b."""
    local = local_rows(h)  # this process's streams p, p + P, ...
    if jax.process_count() == 1:
        return local
    return streams_in_order(multihost_utils.process_allgather(local))  # (P, B/P, H) -> (B, H)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A trained model read from a checkpoint, for ``sample`` and ``tag``."""

    params: Params | DeepParams
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
