"""Checkpoint files: round trip, atomic write, and refusal of damaged files."""

import numpy as np
import pytest

from bptt_jax.app.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

HEADER = {"kind": "test", "step": 7, "vocab": "abc\n\ufffd", "nested": {"x": [1, 2.5, None]}}


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "params/U": rng.standard_normal((5, 5)).astype(np.float32),
        "opt/0": np.array(3, np.int32),
        "key": np.array([1, 2], np.uint32),
    }


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "run" / "checkpoint.bptt"
    save_checkpoint(path, HEADER, _arrays())
    return path


def test_round_trip_is_exact(saved):
    header, arrays = load_checkpoint(saved)
    assert header == HEADER
    expected = _arrays()
    assert set(arrays) == set(expected)
    for k, v in expected.items():
        assert arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(arrays[k], v)


def test_no_temporary_file_is_left(saved):
    assert [p.name for p in saved.parent.iterdir()] == ["checkpoint.bptt"]


def test_overwrite_replaces_the_file(saved):
    save_checkpoint(saved, {**HEADER, "step": 8}, _arrays())
    assert load_checkpoint(saved)[0]["step"] == 8


@pytest.mark.parametrize("keep", [0, 5, 40, 47, 100, -1], ids=lambda k: f"keep{k}")
def test_truncated_checkpoint_is_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(CheckpointError, match=r"truncated|not a bptt-jax"):
        load_checkpoint(saved)


@pytest.mark.parametrize("where", ["digest", "header_length", "header", "arrays", "last_byte"])
def test_one_flipped_byte_is_refused(saved, where):
    data = bytearray(saved.read_bytes())
    offset = {"digest": 10, "header_length": 41, "header": 60, "arrays": len(data) // 2,
              "last_byte": len(data) - 1}[where]  # fmt: skip
    data[offset] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(saved)


def test_other_files_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a bptt-jax checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.bptt")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_non_finite_array_is_never_saved(tmp_path, bad):
    arrays = _arrays()
    arrays["params/U"][2, 3] = bad
    with pytest.raises(CheckpointError, match="params/U is not finite"):
        save_checkpoint(tmp_path / "c.bptt", HEADER, arrays)
    assert not list(tmp_path.iterdir())
