"""A real multi-process run on one machine: two ``bptt-jax train`` processes
with two simulated CPU devices each, joined by ``jax.distributed.initialize``
(XLA's CPU collectives over gloo), against one process on one device."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import linear_training_bound, with_device_count

from bptt_jax.app.io.checkpoint import load_checkpoint
from bptt_jax.app.io.corpus import load_corpus
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train
from bptt_jax.referees.tolerances import max_relative_error

# Two training subprocesses joined over gloo, plus a reference training: slow tier.
pytestmark = pytest.mark.slow

# Momentum, linear in the gradients: the runs' gradients differ in the order of their
# sums (4 devices in 2 processes against 1), and after Adam steps an entry whose
# gradient is round-off moves by O(lr) either way (helpers.linear_training_bound).
ARGS = dict(max_files=12, batch_size=16, seq_len=32, hidden_size=48, eval_every=0,
            save_every=0, val_chars=8192, steps=4, dtype="float64",
            optimizer="momentum")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    argv = ["train", "--no-progress"]
    for k, v in ARGS.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=with_device_count(2))
    start = "from bptt_jax.app.cli.main import run; run()"
    cluster = ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = []
    for p in range(2):
        cmd = [sys.executable, "-c", start, *argv, "--out", str(out / f"p{p}"), *cluster]
        cmd += ["--process-id", str(p)]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    try:
        results = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return out, [proc.returncode for proc in procs], results


def test_two_processes_train_on_all_four_devices(two_processes):
    out, codes, results = two_processes
    assert codes == [0, 0], [err for _, err in results]
    assert "float64 on 4 devices; step 4/4" in results[0][0]
    assert "bptt-jax train:" not in results[1][0]  # process 0 reports for all
    assert (out / "p0" / "checkpoint.bptt").exists()
    assert not (out / "p1" / "checkpoint.bptt").exists()  # process 0 writes the files


def test_two_processes_give_the_parameters_of_one_device(two_processes, tmp_path):
    out, codes, _ = two_processes
    assert codes == [0, 0]
    config = TrainConfig(**ARGS, out=str(tmp_path))
    train(config, corpus=load_corpus(max_files=12), progress=False, echo=lambda s: None,
          devices=1)  # fmt: skip
    _, multi = load_checkpoint(out / "p0" / "checkpoint.bptt")
    _, single = load_checkpoint(pathlib.Path(tmp_path) / "checkpoint.bptt")
    assert multi.keys() == single.keys()
    bound = linear_training_bound("float64", ARGS["steps"])
    for name in single:  # params, optimizer state and h gathered in stream order
        assert max_relative_error(multi[name], single[name]) <= bound, name
    assert np.max(np.abs(single["h"])) > 0.1  # a real carried state, not zeros
