"""Issue 15's forged and damaged checkpoints: the loader trusts nothing in the file.

A valid checksum proves nothing (anyone can recompute it), so each forged
header below is re-signed; every one must give a one-line CheckpointError, no
allocation beyond what the header's configuration declares, and the file
must be left as it was.
"""

import hashlib
import json
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bptt_jax.app.cli.main import main
from bptt_jax.app.io.checkpoint import (
    MAGIC,
    CheckpointError,
)
from bptt_jax.app.io.corpus import Vocab
from bptt_jax.app.training.checkpoint_schema import read_training_checkpoint
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real training checkpoint of a tiny model (a second or two)."""
    folder = tmp_path_factory.mktemp("good")
    text = folder / "a.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(100)))
    config = TrainConfig(text=(str(text),), steps=2, batch_size=2, seq_len=8, hidden_size=4,
                         eval_every=0, val_chars=64, out=str(folder / "run"))  # fmt: skip
    return train(config, progress=False, echo=lambda s: None).checkpoint.read_bytes()


def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[40:48])
    return json.loads(data[48 : 48 + n]), data[48 + n :]


def _sign(header, tail: bytes) -> bytes:
    head = json.dumps(header).encode()
    body = struct.pack("<Q", len(head)) + head + tail
    return MAGIC + hashlib.sha256(body).digest() + body


def _table(tail: bytes):
    (m,) = struct.unpack("<Q", tail[:8])
    return json.loads(tail[8 : 8 + m]), tail[8 + m :]


def _tail(table, raw: bytes) -> bytes:
    head = json.dumps(table).encode()
    return struct.pack("<Q", len(head)) + head + raw


def _state(path):
    with open(path, "rb") as f:
        return path.stat().st_size, f.read(1 << 20)


def _refused(path, match: str | None = None):
    before = _state(path)
    with pytest.raises(CheckpointError, match=match) as e:
        read_training_checkpoint(path)
    assert "\n" not in str(e.value)
    assert _state(path) == before  # the file is left as it was
    return str(e.value)


HEADERS = {
    "list": (lambda h: [], "must be a JSON object, not a list"),
    "null": (lambda h: None, "not null"),
    "no_config": (lambda h: {k: v for k, v in h.items() if k != "config"}, "lacks config"),
    "no_vocab": (lambda h: {k: v for k, v in h.items() if k != "vocab"}, "lacks vocab"),
    "vocab_int": (lambda h: {**h, "vocab": 7}, "vocab must be a string"),
    "vocab_list": (lambda h: {**h, "vocab": list(h["vocab"])}, "vocab must be a string"),
    "vocab_repeats": (lambda h: {**h, "vocab": "a" * len(h["vocab"])}, "distinct"),
    "step_string": (lambda h: {**h, "step": "1"}, "step must be an integer"),
    "step_beyond": (lambda h: {**h, "step": 10**9}, "step must be an integer in 0..2"),
    "config_list": (lambda h: {**h, "config": []}, "configuration must be a JSON object"),
    "config_lr_nan": (lambda h: {**h, "config": {**h["config"], "lr": "nan"}}, "lr must be"),
    "config_H": (lambda h: {**h, "config": {**h["config"], "hidden_size": 10**6}}, "disagree"),
    "dims_bool": (lambda h: {**h, "dims": {**h["dims"], "H": True}}, "dims.H"),
    "history_str": (lambda h: {**h, "history": "x"}, "history"),
    "no_fingerprint": (lambda h: {k: v for k, v in h.items() if k != "data"}, "lacks data"),
    "kind": (lambda h: {**h, "kind": "other"}, "not a bptt-jax training checkpoint"),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_a_forged_header_is_one_line_error(good, tmp_path, name, capsys):
    forge, match = HEADERS[name]
    header, tail = _split(good)
    path = tmp_path / "forged.bptt"
    path.write_bytes(_sign(forge(header), tail))
    _refused(path, match)
    assert main(["sample", str(path), "--length", "2"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _forge_arrays(good, change):
    header, tail = _split(good)
    table, raw = _table(tail)
    table, raw = change(table, bytearray(raw))
    return _sign(header, _tail(table, bytes(raw)))


def _nan_U(table, raw):
    b, e = table["params/U"]["data_offsets"]
    raw[b:e] = np.full((e - b) // 4, np.nan, np.float32).tobytes()
    return table, raw


def _float64_U(table, raw):
    b, e = table["params/U"]["data_offsets"]
    wide = np.frombuffer(bytes(raw[b:e]), np.float32).astype(np.float64).tobytes()
    table["params/U"] = {**table["params/U"], "dtype": "F64",
                         "data_offsets": [len(raw), len(raw) + len(wide)]}  # fmt: skip
    return table, raw + wide


def _key_shape(table, raw):
    table["key"]["shape"] = [1, 2]
    return table, raw


def _claims_400_gb(table, raw):
    table["params/U"]["shape"] = [200_000, 500_000]
    return table, raw


def _no_h(table, raw):
    del table["h"]
    return table, raw


def _extra(table, raw):
    table["__import__"] = table["key"]
    return table, raw


ARRAYS = {
    "nan_params": (_nan_U, "params/U holds NaN or infinity"),
    "float64_params": (_float64_U, "params/U is float64"),
    "key_shape": (_key_shape, r"key is uint32 \(1, 2\)"),
    "claims_400_GB": (_claims_400_gb, "does not hold F32 \\[200000, 500000\\]"),
    "no_h": (_no_h, "the array h is missing"),
    "extra_array": (_extra, "overlapping arrays|unexpected array"),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_forged_arrays_are_refused_naming_the_array(good, tmp_path, name):
    change, match = ARRAYS[name]
    path = tmp_path / "forged.bptt"
    path.write_bytes(_forge_arrays(good, change))
    _refused(path, match)


def test_a_file_larger_than_its_configuration_is_refused_without_reading(good, tmp_path):
    # The 3 MiB file holding a 3 GiB array, or worse: a sparse 3 GiB file whose
    # header declares a model of a few kB. Refused from the header and the size alone.
    path = tmp_path / "bomb.bptt"
    path.write_bytes(good)
    with open(path, "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    started = time.perf_counter()
    message = _refused(path, "allows at most")
    assert "not loaded" in message
    assert time.perf_counter() - started < 2  # not read, not hashed


def test_format_1_is_refused_naming_the_version(good, tmp_path):
    path = tmp_path / "old.bptt"
    path.write_bytes(b"BPTTJAX\x01" + good[8:])
    _refused(path, "format 1 is not supported")


@FUZZ
@given(data=st.data())
def test_fuzz_damaged_bytes_are_refused_cleanly(good, tmp_path, data):
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255).filter(lambda b, i=i: b != raw[i]))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "fuzz.bptt"
    path.write_bytes(bytes(raw))
    if bytes(raw) == good:
        return
    _refused(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)  # fmt: skip


@FUZZ
@given(data=st.data())
def test_fuzz_forged_headers_give_checkpoint_errors(good, tmp_path, data):
    header, tail = _split(good)
    if data.draw(st.booleans()):  # replace one entry (or one config field) by anything
        key = data.draw(st.sampled_from(sorted(header)))
        if key == "config" and data.draw(st.booleans()):
            field = data.draw(st.sampled_from(sorted(header["config"])))
            header["config"][field] = data.draw(JSON)
        else:
            header[key] = data.draw(JSON)
    else:  # or the whole header
        header = data.draw(JSON)
    path = tmp_path / "forged.bptt"
    path.write_bytes(_sign(header, tail))
    try:
        ckpt = read_training_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(ckpt.vocab, Vocab)  # a harmless change (say seconds) may load


@FUZZ
@given(data=st.data())
def test_fuzz_forged_array_tables_give_checkpoint_errors(good, tmp_path, data):
    header, tail = _split(good)
    table, raw = _table(tail)
    name = data.draw(st.sampled_from(sorted(table)))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    before = json.dumps(table[name])
    if field is None:
        table[name] = data.draw(JSON)
    else:
        table[name][field] = data.draw(JSON)
    if json.dumps(table[name]) == before:
        return
    path = tmp_path / "forged.bptt"
    path.write_bytes(_sign(header, _tail(table, raw)))
    with pytest.raises(CheckpointError) as e:
        read_training_checkpoint(path)
    assert "\n" not in str(e.value)
