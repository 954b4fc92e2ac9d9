"""Signals honoured from the first instruction of ``bptt-jax`` to its last (issue 24):
held before JAX is imported, and during the final validation and plot. Each signal is
sent to a subprocess (never to the test process)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from bptt_jax.app.io.checkpoint import load_checkpoint
from bptt_jax.app.training.signals import is_command_line

SMALL = ["--batch-size", "4", "--seq-len", "16", "--hidden-size", "16", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["/usr/bin/python3", "-m", "bptt_jax", "train"], True),
     (["python", "-X", "dev", "-m", "bptt_jax"], True),
     (["python", "-mbptt_jax", "sample"], True),
     (["/venv/bin/python", "/venv/bin/bptt-jax", "train"], True),
     (["python", "-m", "pytest", "tests"], False),
     (["python", "-c", "import bptt_jax"], False),
     (["python", "my_program.py"], False),
     (["python"], False)],
    ids=["module", "module_after_options", "module_glued", "console_script", "pytest",
         "dash_c", "a_program", "repl"],
)  # fmt: skip
def test_only_the_command_line_holds_signals_from_its_first_import(argv, expected):
    assert is_command_line(argv) is expected


def _text(path: pathlib.Path) -> pathlib.Path:
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)))
    return path


def _start(tmp_path, *more) -> subprocess.Popen:
    argv = ["train", "--text", str(_text(tmp_path / "a.txt")), *SMALL,
            "--out", str(tmp_path / "run"), *more]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bptt_jax", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
        # a background job inherits SIGINT ignored (a terminal's is not): as a terminal's
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its /proc status's SigCgt)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl_c", "sigterm"])  # fmt: skip
def test_a_signal_while_jax_imports_stops_the_run_cleanly(tmp_path, sig, status):
    proc = _start(tmp_path, "--steps", "50")
    try:
        # SIGTERM is caught from bptt_jax's first import on (Python itself never
        # catches it): send the signal as soon as that is so, while JAX still loads.
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err  # not 0: the signal was not lost
    assert err.strip().splitlines() == [err.strip()], err  # one line, no traceback
    # held from before JAX was imported, reported before the command began
    assert f"interrupted by {signal.Signals(sig).name} before it started; nothing" in err
    assert not (tmp_path / "run" / "checkpoint.bptt").exists()


@pytest.mark.slow
def test_a_signal_during_the_final_validation_and_plot_is_honoured(tmp_path):
    proc = _start(tmp_path, "--steps", "30", "--eval-every", "0", "--val-chars", "100000")
    try:
        for line in proc.stdout:  # the final validation's line: then the save and the plot
            if line.startswith("step 30: val loss"):
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "SIGINT" in err and len(err.strip().splitlines()) == 1, err
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoint.bptt")[0]["step"] == 30
    assert (run / "loss.png").stat().st_size > 0
