"""Issue 15 on the command line: one-line errors, fail before work, signals, divergence.

Each example of the issue that the application answers has a test here; the
checkpoint loader's are in ``test_checkpoint_fuzz.py``.
"""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from helpers import cli_status, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bptt_jax.app.cli.main import main
from bptt_jax.app.io import checkpoint as _checkpoint
from bptt_jax.app.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bptt_jax.app.training.divergence import divergence, warmup

SMALL = ["--batch-size", "4", "--seq-len", "16", "--hidden-size", "16", "--val-chars", "256",
         "--eval-every", "0", "--no-progress"]  # fmt: skip


def _text(path: pathlib.Path, order=None) -> pathlib.Path:
    lines = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)]
    if order is not None:
        lines = [lines[i] for i in order]
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["train", "--seed", "99999999999999999999999"], "--seed: must be in"),
     (["sample", "x.bptt", "--length", "99999999999"], "--length: must be in 1..1000000"),
     (["sample", "x.bptt", "--length", "2000000000"], "--length: must be in 1..1000000"),
     (["sample", "x.bptt", "--temperature", "inf"], "--temperature: must be a finite number"),
     (["sample", "x.bptt", "--seed", "-99999999999999999999"], "--seed: must be in"),
     (["train", "--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
     (["train", "--lr", "nan"], "--lr: must be a finite number > 0"),
     (["bench", "-H", "60000"], "of memory, but"),
     (["check", "-H", "3000"], "the finite differences would take"),
     (["diagnose", "-T", "100000"], "of memory, but"),
     (["diagnose", "--delays", "2,x"], "--delays"),
     (["diagnose", "--delays", "2,40"], "below the delay task's 30 steps"),
     (["diagnose", "--sweep-scales", "1,inf"], "--sweep-scales"),
     (["train", "--hidden-size", "200000"], "of memory, but"),
     (["train", "--resume", "missing.bptt"], "no such checkpoint"),
     (["nonsense"], "invalid choice"),
     ([], "required")],
    ids=["seed_overflow", "length_overflow", "length_2e9", "temperature_inf", "sample_seed",
         "lr_inf", "lr_nan", "bench_H60000", "check_H3000", "diagnose_T1e5", "delays_text",
         "delays_too_long", "sweep_inf", "train_H2e5", "resume_missing", "no_such_command",
         "no_command"],
)  # fmt: skip
def test_bad_requests_are_one_line_errors_with_status_1(argv, match, capsys, tmp_path,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    one_line_error(argv, capsys, match)
    assert not any(tmp_path.iterdir())  # nothing written


def test_diagnose_exits_1_like_every_command(tmp_path, capsys):
    argv = ["diagnose", "-o", str(tmp_path), "--no-sweep", "-T", "3", "--init", "spectral"]
    one_line_error(argv, capsys, "init='spectral' needs spectral_radius")


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_an_out_that_is_a_file_fails_before_any_work(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("precious")
    started = time.perf_counter()
    one_line_error([command, "--out", str(afile)], capsys, "is a file, not a folder")
    one_line_error([command, "--out", str(afile / "sub")], capsys, "cannot write there")
    assert time.perf_counter() - started < 5  # no corpus read, no training, no plots
    assert afile.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_fails_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(["train", "--out", str(ro / "run")], capsys, "cannot write there")
    finally:
        ro.chmod(0o755)


def test_debug_gives_the_traceback_back(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        main(["--debug", "sample", str(tmp_path / "missing.bptt")])
    monkeypatch.setenv("BPTT_JAX_DEBUG", "1")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        main(["sample", str(tmp_path / "missing.bptt")])


def test_an_unexpected_exception_is_one_line_marked_as_a_bug(monkeypatch, capsys):
    from bptt_jax.app.cli import check as check_command
    from bptt_jax.app.cli import main as cli_main

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(check_command, "handle", broken)
    monkeypatch.setitem(cli_main._HANDLERS, "check", broken)
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "internal error KeyError" in err and "BPTT_JAX_DEBUG=1" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- writes


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.bptt"
    save_checkpoint(path, {"step": 1}, {})
    before = path.read_bytes()

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(_checkpoint.os, "replace", full)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, {"step": 2}, {})
    message = str(e.value)
    assert str(path) in message and "No space left on device" in message
    assert "previous checkpoint is unchanged" in message and "\n" not in message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.bptt"]  # no temporary left


def test_stale_temporary_files_of_killed_saves_are_removed(tmp_path):
    path = tmp_path / "checkpoint.bptt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".checkpoint.bptt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".checkpoint.bptt.tmp-{os.getppid()}"  # a running writer's
    alive.write_bytes(b"being written")
    save_checkpoint(path, {"step": 1}, {})
    assert not stale.exists() and alive.exists()
    assert load_checkpoint(path)[0] == {"step": 1}


# --------------------------------------------------------------------------- divergence


def test_the_divergence_rule():
    kw = dict(steps=1000, num_classes=64, unigram_bits=4.0)
    assert divergence(float("nan"), what="training", step=1, **kw)
    assert divergence(7.2, what="training", step=1, **kw)  # log2 64 + 1 = 7
    assert divergence(6.9, what="training", step=1, **kw) is None
    assert divergence(5.5, what="validation", step=warmup(1000) - 1, **kw) is None
    assert "unigram" in divergence(5.5, what="validation", step=warmup(1000), **kw)
    assert divergence(5.5, what="training", step=999, **kw) is None  # chunks vary: no rule 3
    assert warmup(100) == 100 and warmup(10_000) == 1000


def test_lr_1e3_is_caught_keeps_no_broken_checkpoint_and_exits_1(tmp_path, capsys):
    text = _text(tmp_path / "a.txt")
    out = tmp_path / "run"
    argv = ["train", "--text", str(text), *SMALL, "--steps", "40", "--lr", "1e3",
            "--out", str(out)]  # fmt: skip
    err = one_line_error(argv, capsys, "training diverged at step")
    assert "try a lower --lr (now 1000)" in err
    assert not (out / "checkpoint.bptt").exists()


# --------------------------------------------------------------------------- data change


@pytest.mark.slow  # two trainings and a resume
def test_resume_on_permuted_lines_is_refused_unless_allowed(tmp_path, capsys):
    data = _text(tmp_path / "data.txt")
    out = tmp_path / "run"
    base = ["train", "--text", str(data), *SMALL, "--out", str(out)]
    assert cli_status([*base, "--steps", "4"]) == 0
    _text(data, order=list(range(199, -1, -1)))  # the same characters, other text
    capsys.readouterr()
    one_line_error([*base, "--steps", "8", "--resume"], capsys, "training data has changed")
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 4
    assert cli_status([*base, "--steps", "8", "--resume", "--allow-data-change"]) == 0
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 8


# --------------------------------------------------------------------------- signals

_START = "from bptt_jax.app.cli.main import run; run()"


def _start_training(tmp_path, steps="1000000"):
    text = _text(tmp_path / "a.txt")
    args = ["train", "--text", str(text), *SMALL[:-3], "--eval-every", "5",
            "--steps", steps, "--out", str(tmp_path / "run")]  # fmt: skip
    # A background job inherits SIGINT ignored (a terminal's is not): restore it first.
    start = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + _START
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", start, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step 10: val loss"):
            break
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "status", "name"),
    [([signal.SIGINT], 130, "SIGINT"), ([signal.SIGINT, signal.SIGINT], 130, "SIGINT"),
     ([signal.SIGTERM], 143, "SIGTERM")],
    ids=["ctrl_c", "ctrl_c_twice_30ms", "sigterm"],
)  # fmt: skip
def test_a_signal_saves_the_last_step_and_exits_128_plus_n(tmp_path, signals, status, name):
    proc = _start_training(tmp_path)
    try:
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.03)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err  # not -11: no segfault at exit
    assert "Traceback" not in err
    checkpoint = tmp_path / "run" / "checkpoint.bptt"
    line = next(x for x in err.splitlines() if "interrupted at step" in x)
    assert f"by {name}: checkpoint saved to {checkpoint}" in line
    header, _ = load_checkpoint(checkpoint)
    assert f"interrupted at step {header['step']} " in line
    assert main(["sample", str(checkpoint), "--length", "5"]) == 0  # loadable
    # as at the normal end: the plot, and the metrics up to the saved step, one row a step
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    steps = [int(r.split(",")[0]) for r in
             (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]  # fmt: skip
    assert steps == sorted(set(steps)) and steps[-1] == header["step"]


@pytest.mark.slow
def test_three_quick_signals_never_leave_a_traceback(tmp_path):
    proc = _start_training(tmp_path)
    try:
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.001)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # Either the save finished before the third signal or it said plainly it saved nothing.
    assert "checkpoint saved to" in err or "nothing was saved" in err


# --------------------------------------------------------------------------- CLI fuzz

_VALUES = st.sampled_from(["0", "1", "-1", "3", "2.5", "1e3", "inf", "nan", "-inf", "x", "",
                           "99999999999999999999999", "2000000000", "0x10", "1,2",
                           "\u2603"])  # fmt: skip
_FLAGS = {
    "train": ["--steps", "--lr", "--seed", "--hidden-size", "--batch-size", "--seq-len",
              "--clip", "--clip-value", "--eval-every", "--save-every", "--val-chars",
              "--max-files", "--optimizer", "--dtype", "--task", "--devices"],
    "sample": ["--length", "--temperature", "--top-k", "--seed", "--prime"],
    "check": ["-K", "-H", "-C", "-B", "-T", "--seed", "--dtype", "--inputs"],
    "bench": ["-K", "-H", "-B", "-T", "--repeats", "--chunk", "--unroll", "--dtype"],
    "diagnose": ["-K", "-H", "-B", "-T", "--spectral-radius", "--sweep-scales", "--delays",
                 "--iterations", "--init", "--activation"],
}  # fmt: skip


@st.composite
def _argv(draw):
    command = draw(st.sampled_from(sorted(_FLAGS)))
    argv = [command]
    for _ in range(draw(st.integers(1, 3))):
        argv += [draw(st.sampled_from(_FLAGS[command])), draw(_VALUES)]
    return argv


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(argv=_argv())
def test_fuzz_command_lines_give_one_line_errors_or_run(argv, tmp_path, monkeypatch, capsys):
    # The work itself is stubbed out (its own tests cover it): what is fuzzed is
    # everything between the command line and the work.
    from bptt_jax.app.cli import bench, check, diagnose, sample, tag, train

    def done(*args, **kwargs):  # reached the work: the command line was accepted
        raise SystemExit(0)

    for command, name in ((check, "run_check"), (bench, "run_bench"), (train, "train"),
                          (sample, "load_model"), (tag, "load_model"),
                          (diagnose, "run_diagnose")):  # fmt: skip
        monkeypatch.setattr(command, name, done)
    monkeypatch.chdir(tmp_path)
    if argv[0] == "sample":
        argv = [argv[0], "x.bptt", *argv[1:]]
    try:
        status = main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "diagnose" else [])])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    if status == 0:
        return
    assert status == 1, (argv, err)
    assert len(err.strip().splitlines()) == 1, (argv, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
