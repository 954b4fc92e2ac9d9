"""Multi-host wiring that can be checked on one machine: which streams each
process reads, the cluster settings from flags and environment, and that a
single-process run never calls ``jax.distributed.initialize``."""

import contextlib
import io

import numpy as np
import pytest

from bptt_jax.app.cli.main import main
from bptt_jax.app.io.corpus import DataError
from bptt_jax.app.io.streams import Streams, process_streams, streams_in_order
from bptt_jax.app.training.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    Cluster,
    ClusterError,
    cluster_from,
    initialize,
)

# --------------------------------------------------------------------------- shards


@pytest.mark.parametrize(
    "B, P", [(16, 1), (16, 2), (16, 4), (64, 8), (6, 3)], ids=["1", "2", "4", "8", "3_of_6"]
)
def test_process_shards_are_disjoint_equal_and_cover_all_streams(B, P):
    shards = [process_streams(B, P, p) for p in range(P)]
    assert all(len(s) == B // P for s in shards)
    together = np.concatenate(shards)
    assert len(set(together.tolist())) == B  # disjoint
    assert sorted(together.tolist()) == list(range(B))  # covering


def test_process_p_reads_streams_p_p_plus_P_and_so_on():
    np.testing.assert_array_equal(process_streams(12, 4, 1), [1, 5, 9])


@pytest.mark.parametrize(
    "B, P, p, message",
    [
        (16, 3, 0, "--batch-size 16 is not divisible by the 3 processes"),
        (16, 4, 4, "process id 4 is outside 0..3"),
        (16, 4, -1, "process id -1 is outside 0..3"),
        (16, 0, 0, "number of processes must be >= 1"),
    ],
    ids=["indivisible", "id_too_big", "id_negative", "no_processes"],
)
def test_bad_process_shards_are_refused(B, P, p, message):
    with pytest.raises(DataError, match=message):
        process_streams(B, P, p)


@pytest.mark.parametrize("P", [2, 4], ids=["2", "4"])
def test_each_process_streams_are_the_single_process_rows(P):
    ids = np.arange(1000, dtype=np.int32) % 37
    whole = Streams(ids, None, 8, 5)
    for p in range(P):
        part = Streams(ids, None, 8, 5, num_processes=P, process_id=p)
        assert part.num_chunks == whole.num_chunks
        for k in (0, whole.num_chunks - 1):
            xs, ys = part.chunk(k)
            np.testing.assert_array_equal(xs, whole.chunk(k)[0][p::P])
            np.testing.assert_array_equal(ys, whole.chunk(k)[1][p::P])


def test_streams_in_order_undoes_the_process_split():
    rows = np.arange(24).reshape(12, 2)  # 12 streams, one row each
    blocks = np.stack([rows[process_streams(12, 3, p)] for p in range(3)])  # (3, 4, 2)
    np.testing.assert_array_equal(streams_in_order(blocks), rows)


# --------------------------------------------------------------------------- settings


def test_no_settings_is_a_single_process():
    assert cluster_from(env={}) == Cluster(None, 1, 0)
    assert not Cluster().multi_process


def test_flags_give_a_multi_process_cluster():
    cluster = cluster_from("10.0.0.1:1234", 4, 3, env={})
    assert cluster == Cluster("10.0.0.1:1234", 4, 3) and cluster.multi_process


def test_environment_fills_what_the_flags_leave_out():
    env = {ENV_COORDINATOR: "host0:99", ENV_NUM_PROCESSES: "2", ENV_PROCESS_ID: "1"}
    assert cluster_from(env=env) == Cluster("host0:99", 2, 1)
    assert cluster_from(process_id=0, env=env) == Cluster("host0:99", 2, 0)  # flag wins


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        (dict(num_processes=2, process_id=0), {}, "needs --coordinator HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2), {}, "needs --process-id"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), {}, "outside 0..1"),
        (dict(coordinator="h:1", process_id=1), {}, "need --num-processes"),
        (dict(num_processes=0), {}, "must be >= 1"),
        (dict(num_processes=1, process_id=1), {}, "outside 0..0"),
        (dict(coordinator="nohost", num_processes=2, process_id=0), {}, "must be HOST:PORT"),
        ({}, {ENV_NUM_PROCESSES: "two"}, "BPTT_JAX_NUM_PROCESSES must be an integer"),
    ],
    ids=["no_coordinator", "no_id", "id_too_big", "no_count", "zero_count", "id_for_one",
         "bad_address", "bad_env"],
)  # fmt: skip
def test_inconsistent_settings_are_refused(kwargs, env, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from(**kwargs, env=env)


def test_single_process_skips_initialize_and_multi_process_calls_it():
    calls = []

    def record(**kw):
        calls.append(kw)

    assert initialize(Cluster(), record) is False
    assert calls == []
    assert initialize(Cluster("h:1", 2, 1), record) is True
    assert calls == [dict(coordinator_address="h:1", num_processes=2, process_id=1)]


def _cli(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stderr.getvalue()


def test_bad_multi_host_flags_exit_1_before_training(tmp_path, monkeypatch):
    for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    code, err = _cli(["train", "--num-processes", "2", "--out", str(tmp_path)])
    assert code == 1
    assert "needs --coordinator HOST:PORT" in err and "Traceback" not in err
    assert not (tmp_path / "checkpoint.bptt").exists()


@pytest.mark.parametrize("flag", ["--devices", "--num-processes"], ids=["devices", "processes"])
def test_zero_devices_or_processes_is_a_usage_error(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", flag, "0"])
    assert e.value.code == 1
    assert "must be >= 1, got 0" in capsys.readouterr().err
