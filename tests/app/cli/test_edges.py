"""The command line's edges: inputs that are not regular files, numbers that underflow
the run's dtype, memory for depth, --version, unknown flags, the defaults --help shows,
and deep models on a host with several devices."""

import argparse
import contextlib
import inspect
import io
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import one_line_error, with_device_count

import bptt_jax
from bptt_jax.app.cli.main import build_parser, main
from bptt_jax.app.cli.train_flags import TRAIN_OPTIONS
from bptt_jax.app.inference.sample import sample
from bptt_jax.app.io.checkpoint import load_checkpoint, save_checkpoint
from bptt_jax.app.io.preflight import rnn_bytes
from bptt_jax.app.measure.bench import BenchSettings
from bptt_jax.app.measure.check import run_check
from bptt_jax.app.measure.diagnose import DiagnoseSettings
from bptt_jax.app.training.checkpoint_schema import load_model
from bptt_jax.app.training.config import TrainConfig, TrainingError, check_config, default_out

SMALL = ["--batch-size", "2", "--seq-len", "8", "--hidden-size", "8", "--steps", "2",
         "--eval-every", "0", "--val-chars", "256", "--no-progress"]  # fmt: skip
SOURCE = "".join(f"def f{k}(x):\n    return x * {k}\n" for k in range(80))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edges")
    (tmp / "a.py").write_text(SOURCE)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *SMALL, "--text", str(tmp / "a.py"), "--out", str(tmp)]) == 0
    return tmp / "checkpoint.bptt"


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fails the test instead of hanging when a read blocks (the bug this guards)."""

    def expired(signum, frame):
        raise AssertionError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- not regular files

_NOT_REGULAR = {
    "resume_fifo": (["train", "--resume", "{fifo}"], "is a FIFO (named pipe)"),
    "resume_dev_zero": (["train", "--resume", "/dev/zero"], "is a character device"),
    "resume_folder": (["train", "--resume", "{dir}"], "is a folder"),
    "sample_fifo": (["sample", "{fifo}"], "is a FIFO (named pipe)"),
    "sample_dev_zero": (["sample", "/dev/zero"], "is a character device"),
    "tag_file_fifo": (["tag", "{ckpt}", "{fifo}"], "is a FIFO (named pipe)"),
    "tag_file_dev_zero": (["tag", "{ckpt}", "/dev/zero"], "is a character device"),
    "tag_checkpoint_fifo": (["tag", "{fifo}", "{py}"], "is a FIFO (named pipe)"),
    "eval_path_dev_zero": (["eval", "{ckpt}", "/dev/zero"], "is a character device"),
    "eval_path_fifo": (["eval", "{ckpt}", "{fifo}"], "is a FIFO (named pipe)"),
    "eval_checkpoint_fifo": (["eval", "{fifo}", "{py}"], "is a FIFO (named pipe)"),
    "text_fifo": (["train", "--text", "{fifo}", "--out", "{dir}/o"], "is a FIFO (named pipe)"),
    "text_dev_zero": (["train", "--text", "/dev/zero", "--out", "{dir}/o"], "character device"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_NOT_REGULAR))
def test_inputs_that_are_not_regular_files_are_refused_without_waiting(
    case, ckpt, tmp_path, capsys
):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer: an ordinary open() of it would wait for ever
    (tmp_path / "f.py").write_text(SOURCE)
    argv, match = _NOT_REGULAR[case]
    paths = {"fifo": fifo, "dir": tmp_path, "ckpt": ckpt, "py": tmp_path / "f.py"}
    argv = [a.format(**paths) for a in argv]
    with _deadline(120):
        one_line_error(argv, capsys, match)


# --------------------------------------------------------------------------- underflow


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["train", "--lr", "1e-320"], "--lr: must be 0 or at least 2.23e-308"),
     (["train", "--lr", "1e-40"], "--lr 1e-40 underflows float32"),
     (["train", "--clip", "1e-40"], "--clip 1e-40 underflows float32"),
     (["train", "--clip-value", "1e-45"], "--clip-value 1e-45 underflows float32"),
     (["sample", "x.bptt", "--temperature", "1e-320"], "--temperature: must be 0 or at least"),
     (["diagnose", "--spectral-radius", "5e-324"], "--spectral-radius: must be 0 or at least")],
    ids=["lr_float64_subnormal", "lr_float32", "clip", "clip_value", "temperature_float64",
         "spectral_radius"],
)  # fmt: skip
def test_numbers_that_underflow_are_refused(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(argv, capsys, match)


def test_float64_runs_accept_what_float32_cannot_hold():
    check_config(TrainConfig(lr=1e-40, dtype="float64"))
    with pytest.raises(TrainingError, match="underflows float32"):
        check_config(TrainConfig(lr=1e-40))
    check_config(TrainConfig(clip=0.0, clip_value=0.0))  # 0 is "off", not an underflow


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "1e-45"), ("--top-p", "1e-40")])
def test_sampling_numbers_that_underflow_the_models_dtype_are_refused(ckpt, capsys, flag, value):
    one_line_error(["sample", str(ckpt), flag, value], capsys, f"{flag} {value} underflows")


def test_a_tiny_normal_temperature_samples_the_greedy_text(ckpt, tmp_path):
    # Large logits (V scaled up): z / 2e-38 overflows float32 unless z is shifted first.
    header, arrays = load_checkpoint(ckpt)
    arrays = dict(arrays, **{"params/V": arrays["params/V"] * 1e3})
    save_checkpoint(tmp_path / "big.bptt", header, arrays)
    model = load_model(tmp_path / "big.bptt")
    assert float(np.finfo(np.float32).tiny) < 2e-38
    cold = sample(model, "def", 40, temperature=2e-38, seed=1)
    assert cold == sample(model, "def", 40, temperature=0.0)


# --------------------------------------------------------------------------- memory for depth


def test_an_absurd_depth_is_refused_by_the_memory_preflight(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(["train", "--num-layers", "100000"], capsys, "of memory, but")


def test_the_memory_estimate_grows_with_layers_and_directions():
    base = dict(K=65, H=64, C=65, B=4, T=16, itemsize=4)
    one, two = rnn_bytes(**base), rnn_bytes(**base, layers=2)
    assert one == rnn_bytes(**base, layers=1, directions=1)  # the seed's model as before
    H, K = base["H"], base["K"]
    # a second layer: 6 copies of U, W (H, H) and b, and 4 x 3 H activations per character
    assert two - one == 4 * (6 * (2 * H * H + H) + 4 * base["B"] * base["T"] * 3 * H)
    assert rnn_bytes(**base, directions=2) > one + 4 * 6 * (H * H + H * K)


@pytest.mark.parametrize("gates", [3, 4], ids=["gru", "lstm"])
def test_the_memory_estimate_counts_a_gated_cells_gate_rows(gates):
    base = dict(K=65, H=64, C=65, B=4, T=16, itemsize=4)
    H, K, BT = base["H"], base["K"], base["B"] * base["T"]
    # G - 1 more blocks of U, W and b in each of 6 copies, and 2 (G - 1) H more
    # activations (gate values and their δ) per character
    extra = 4 * (6 * (gates - 1) * (H * H + H * K + H) + 4 * BT * 2 * (gates - 1) * H)
    assert rnn_bytes(**base, gates=gates) - rnn_bytes(**base) == extra


# --------------------------------------------------------------------------- the parser


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"bptt-jax {bptt_jax.__version__}\n"


COMMANDS = {"train": [], "sample": ["x.bptt"], "tag": ["x.bptt", "f.py"], "check": [],
            "diagnose": [], "bench": [], "eval": ["x.bptt", "f.py"]}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unknown_flag_names_its_command(command, capsys):
    err = one_line_error([command, *COMMANDS[command], "--foo", "3"], capsys, "")
    assert err == (
        f"bptt-jax {command}: error: unrecognized arguments: --foo 3 "
        f"(see bptt-jax {command} --help)\n"
    )


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _shown(value) -> set[str]:
    """How a default may be written in a help string."""
    shown = {str(value), repr(value)}
    if isinstance(value, int | float) and not isinstance(value, bool):
        shown.add(f"{value:,}")
    return {f"(default {s}" for s in shown} | {f"default {s})" for s in shown}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_help_shows_the_defaults_the_code_uses(command):
    for action in _subparser(command)._actions:
        value = action.default
        if not action.option_strings or value in (None, False, argparse.SUPPRESS):
            continue
        if action.dest == "help" or (isinstance(value, list) and not value):
            continue
        if isinstance(action, argparse._StoreConstAction | argparse._StoreFalseAction):
            continue  # an on/off flag: its default is said in words
        help_ = action.help or ""
        assert any(s in help_ for s in _shown(value)), f"{command} {action.dest}: {help_!r}"


def test_train_help_shows_the_defaults_of_train_config():
    defaults = TrainConfig()
    actions = {a.dest: a for a in _subparser("train")._actions}
    for name in TRAIN_OPTIONS:
        value = getattr(defaults, name)
        if value in (None, False, ()):  # shown in words ("default: all", ...)
            continue
        help_ = actions[name].help
        if name == "out":  # its own per task
            assert all(default_out(t) in help_ for t in ("lm", "tag")), help_
            continue
        assert any(s in help_ for s in _shown(value)), f"train --{name}: {help_!r}"


@pytest.mark.parametrize(
    "command, work",
    [("check", run_check), ("bench", BenchSettings), ("diagnose", DiagnoseSettings)],
    ids=["check", "bench", "diagnose"],
)
def test_a_commands_defaults_are_those_of_the_work_it_runs(command, work):
    # Stated once, in the work's signature (or its settings' fields): a flag of the same name
    # parses to it.
    defaults = {
        name: p.default
        for name, p in inspect.signature(work).parameters.items()
        if p.default is not p.empty and name != "delays"  # the flag's [] for ()
    }
    checked = 0
    for action in _subparser(command)._actions:
        if action.dest not in defaults:
            continue
        assert action.default == defaults[action.dest], (command, action.dest)
        checked += 1
    assert checked >= 6  # the sizes, the seed and more: not vacuous


# --------------------------------------------------------------------------- several devices


@pytest.mark.slow  # a fresh Python with 8 simulated devices trains a small deep model
def test_deep_models_take_one_device_by_default_and_say_so(tmp_path):
    (tmp_path / "a.py").write_text(SOURCE)
    env = dict(os.environ, XLA_FLAGS=with_device_count(8), JAX_PLATFORMS="cpu")
    argv = ["train", *SMALL, "--num-layers", "2", "--text", str(tmp_path / "a.py"), "--out",
            str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "bptt_jax", *argv], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "a --num-layers 2 model trains on one device: using 1 of the 8" in proc.stdout
    assert "on 1 device;" in proc.stdout
    # asked for explicitly, several devices are still refused with one line (a fresh --out:
    # the first run's folder now holds a run, which train refuses to overwrite)
    argv[-1] = str(tmp_path / "o2")
    proc = subprocess.run([sys.executable, "-m", "bptt_jax", *argv, "--devices", "2"],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 1 and "train on one device" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
