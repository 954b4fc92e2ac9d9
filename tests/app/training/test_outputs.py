"""The run folder of ``bptt-jax train`` (issue 24): nothing overwritten, one writer, every
failed write one line naming its path after the checkpoint is saved, ``metrics.csv``
repaired on resume and holding one row a step, rates that leave out every compilation."""

import contextlib
import errno
import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import pytest
from helpers import cli_status, one_line_error

from bptt_jax.app.io.checkpoint import load_checkpoint
from bptt_jax.app.io.preflight import UsageError
from bptt_jax.app.measure import plots
from bptt_jax.app.training import session
from bptt_jax.app.training.config import TrainConfig, default_config
from bptt_jax.app.training.loop import train
from bptt_jax.app.training.outputs import (
    LOCK_NAME,
    METRICS_HEADER,
    FolderLock,
    repair_metrics,
)

SMALL = ["--batch-size", "4", "--seq-len", "16", "--hidden-size", "16", "--val-chars", "256",
         "--eval-every", "0", "--no-progress"]  # fmt: skip


def _text(path: pathlib.Path) -> pathlib.Path:
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)))
    return path


def _rows(path: pathlib.Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == METRICS_HEADER
    return [line.split(",") for line in lines[1:]]


@pytest.fixture
def data(tmp_path):
    return _text(tmp_path / "data.txt")


def _train(data, out, *more) -> list[str]:
    return ["train", "--text", str(data), *SMALL, "--out", str(out), *more]


# --------------------------------------------------------------------------- nothing overwritten


def test_each_task_has_its_own_default_out():
    assert default_config({}).out == "runs/lm"
    assert default_config({"task": "tag"}).out == "runs/tag"
    assert default_config({"task": "tag", "out": "mine"}).out == "mine"


def test_resume_without_a_path_reads_the_tasks_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(["train", "--task", "tag", "--resume"], capsys, "no such checkpoint")
    assert str(pathlib.Path("runs/tag/checkpoint.bptt")) in err


def test_a_second_run_into_a_folder_with_a_checkpoint_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_status(_train(data, out, "--steps", "3")) == 0
    before = {n: (out / n).read_bytes() for n in ("checkpoint.bptt", "best.bptt")}
    capsys.readouterr()
    started = time.perf_counter()
    err = one_line_error(_train(data, out, "--steps", "2"), capsys, "already holds a run")
    assert time.perf_counter() - started < 5  # refused before the corpus is read
    for way in ("--resume", "--out", "--overwrite"):
        assert way in err
    assert {n: (out / n).read_bytes() for n in before} == before  # untouched
    # --overwrite starts afresh: the earlier run's outputs are gone, the new ones written
    assert cli_status(_train(data, out, "--steps", "2", "--overwrite")) == 0
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 2
    assert [r[0] for r in _rows(out / "metrics.csv")] == ["2"]
    # --resume continues it; --overwrite with --resume is a contradiction
    assert cli_status(_train(data, out, "--steps", "4", "--resume")) == 0
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 4
    capsys.readouterr()
    one_line_error(_train(data, out, "--steps", "5", "--resume", "--overwrite"), capsys,
                    "cannot go with --resume")  # fmt: skip


def test_a_best_checkpoint_alone_also_counts_as_a_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.bptt").write_bytes(b"an earlier model")
    one_line_error(_train(data, out, "--steps", "2"), capsys, "(best.bptt)")
    assert (out / "best.bptt").read_bytes() == b"an earlier model"


def test_resuming_into_a_folder_holding_another_run_is_refused(data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_status(_train(data, a, "--steps", "2")) == 0
    assert cli_status(_train(data, b, "--steps", "2")) == 0
    capsys.readouterr()
    argv = _train(data, b, "--steps", "4", "--resume", str(a / "checkpoint.bptt"))
    one_line_error(argv, capsys, "holds another run")
    assert load_checkpoint(b / "checkpoint.bptt")[0]["step"] == 2


# --------------------------------------------------------------------------- one writer

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def _held_by_another_process(folder: pathlib.Path):
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder / LOCK_NAME)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_on_one_out_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    with _held_by_another_process(out) as pid:
        err = one_line_error(_train(data, out, "--steps", "2"), capsys, "is writing there")
        assert f"(pid {pid})" in err
        with pytest.raises(UsageError, match="another bptt-jax train"):
            FolderLock(out).acquire()
    assert not (out / "checkpoint.bptt").exists()
    # the holder is dead: its lock went with it, and the run goes ahead
    assert cli_status(_train(data, out, "--steps", "2")) == 0


def test_the_lock_is_exclusive_and_released(tmp_path):
    with FolderLock(tmp_path), pytest.raises(UsageError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    with FolderLock(tmp_path):  # released: taken again
        pass


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    with FolderLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


# --------------------------------------------------------------------------- names in the way


@pytest.mark.parametrize("name", ["metrics.csv", "loss.png", "checkpoint.bptt", "best.bptt"])
def test_a_folder_in_the_way_of_an_output_is_found_before_training(name, data, tmp_path,
                                                                   capsys):  # fmt: skip
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    started = time.perf_counter()
    err = one_line_error(_train(data, out, "--steps", "2"), capsys, "is a folder")
    assert str(out / name) in err
    assert time.perf_counter() - started < 5
    assert (out / name).is_dir() and not (out / "metrics.csv").is_file()


def test_a_fifo_in_the_way_of_the_plot_is_found_before_training(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "loss.png")
    one_line_error(_train(data, out, "--steps", "2"), capsys, "is not a regular file")


# --------------------------------------------------------------------------- failed writes


def _fails_on(path_end: str, mode: str, error: int):
    real = open

    def fake(file, *args, **kwargs):
        given = args[0] if args else kwargs.get("mode", "r")
        if str(file).endswith(path_end) and given == mode:
            raise OSError(error, os.strerror(error), str(file))
        return real(file, *args, **kwargs)

    return fake


def test_a_full_disk_under_metrics_csv_saves_the_checkpoint_then_stops(data, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    out = tmp_path / "run"
    monkeypatch.setattr(session, "open", _fails_on("metrics.csv", "a", errno.ENOSPC),
                        raising=False)  # fmt: skip
    err = one_line_error(
        _train(data, out, "--steps", "8", "--log-every", "3"),
        capsys,
        f"cannot write {out / 'metrics.csv'}: No space left on device",
    )
    assert f"the checkpoint of step 3 is saved in {out / 'checkpoint.bptt'}" in err
    assert "continue with bptt-jax train --resume" in err
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 3


def test_a_failed_plot_is_one_line_naming_it_after_the_checkpoint(data, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(plots, "plot_history", refused)
    out = tmp_path / "run"
    err = one_line_error(_train(data, out, "--steps", "4"), capsys,
                          f"cannot write {out / 'loss.png'}: Permission denied")  # fmt: skip
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 4
    assert "continue with" not in err  # every step was taken


class _ClosedPipe(io.StringIO):
    """Standard output closed once the run is under way: the lines said before training
    (which text is held out) go through, every later write fails."""

    def write(self, text):
        if self.getvalue() and not self.getvalue().endswith("\n"):
            return super().write(text)  # the rest of a line that went through
        if text.startswith(("held out for validation", "skipped ")):
            return super().write(text)
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_closed_standard_output_is_one_line_after_the_checkpoint(data, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    # all held-out text (no line about a cap): the first line out is the last validation's
    err = one_line_error(_train(data, out, "--steps", "4", "--val-chars", "100000"), capsys,
                          "cannot write standard output: Broken pipe")  # fmt: skip
    assert f"the checkpoint of step 4 is saved in {out / 'checkpoint.bptt'}" in err
    assert load_checkpoint(out / "checkpoint.bptt")[0]["step"] == 4


@pytest.mark.slow  # a subprocess: the real pipe
def test_standard_output_closed_by_the_reader_ends_with_one_line(data, tmp_path):
    out = tmp_path / "run"
    argv = _train(data, out, "--steps", "4", "--val-chars", "100000")
    proc = subprocess.Popen([sys.executable, "-m", "bptt_jax", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()  # like `| head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, err
    assert err.strip().splitlines() == [err.strip()], err
    assert "cannot write standard output: Broken pipe" in err
    # the first line out (which text is held out) comes before any step: the run stops
    # there, before any work (a pipe closed later: the in-process test above)
    assert not (out / "checkpoint.bptt").exists()


# --------------------------------------------------------------------------- metrics.csv

_GOOD = [f"{s},2.5,,0.004,0.3,100.000,51200" for s in (3, 6, 9)]


@pytest.mark.parametrize(
    ("text", "step", "kept"),
    [("", 9, []),
     (METRICS_HEADER + "\n" + "\n".join(_GOOD) + "\n", 9, [3, 6, 9]),
     (METRICS_HEADER + "\n" + "\n".join(_GOOD) + "\n", 6, [3, 6]),
     (METRICS_HEADER + "\n" + "\n".join(_GOOD) + "\n12,2.5,,0.0", 9, [3, 6, 9]),
     (METRICS_HEADER + "\n" + _GOOD[0] + "\n6,2.5,,0.0" + _GOOD[2] + "\n", 9, [3]),
     ("\n".join(_GOOD) + "\n", 9, [3, 6, 9]),
     (METRICS_HEADER + "\n" + _GOOD[0] + "\n" + _GOOD[0] + "\n" + _GOOD[1] + "\n", 9, [3, 6]),
     ("garbage\x00\xff\n" + _GOOD[0] + "\n", 9, [3])],
    ids=["emptied", "intact", "rows_after_the_step", "last_row_cut", "rows_glued",
         "header_lost", "duplicate_step", "garbage_line"],
)  # fmt: skip
def test_repair_keeps_the_header_and_whole_rows_up_to_the_step(tmp_path, text, step, kept):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    repair_metrics(path, step)
    assert [int(r[0]) for r in _rows(path)] == kept
    assert path.read_text().endswith("\n")


def test_a_missing_metrics_file_is_started_with_its_header(tmp_path):
    repair_metrics(tmp_path / "metrics.csv", 5)
    assert (tmp_path / "metrics.csv").read_text() == METRICS_HEADER + "\n"


def _assert_one_row_a_step(path: pathlib.Path) -> list[int]:
    steps = [int(r[0]) for r in _rows(path)]
    assert steps == sorted(set(steps)), steps  # each step once, in order
    return steps


def test_resume_over_a_cut_metrics_file_writes_one_row_a_step(data, tmp_path):
    out = tmp_path / "run"
    assert cli_status(_train(data, out, "--steps", "6", "--log-every", "2")) == 0
    metrics = out / "metrics.csv"
    assert _assert_one_row_a_step(metrics) == [2, 4, 6]  # the last once, with its validation
    assert _rows(metrics)[-1][2] != ""
    metrics.write_text(metrics.read_text()[:-7])  # a save cut short in the last row
    assert cli_status(_train(data, out, "--steps", "10", "--log-every", "2", "--resume")) == 0
    assert _assert_one_row_a_step(metrics) == [2, 4, 8, 10]
    metrics.write_text("")  # emptied
    assert cli_status(_train(data, out, "--steps", "12", "--log-every", "2", "--resume")) == 0
    assert _assert_one_row_a_step(metrics) == [12]


def test_a_fresh_run_does_not_append_to_an_old_metrics_file(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text(METRICS_HEADER + "\n" + _GOOD[0] + "\n")
    assert cli_status(_train(data, out, "--steps", "4", "--log-every", "2")) == 0
    assert _assert_one_row_a_step(out / "metrics.csv") == [2, 4]


# --------------------------------------------------------------------------- rates

_SUMMARY_RATE = re.compile(r"\(([\d.]+) steps/s, ")


class _Compiles(logging.Handler):
    """Records, in order, each compilation of the training step and each step taken."""

    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, record):
        if record.getMessage().startswith("Compiling jit(step)"):
            self.events.append("compile")


@pytest.mark.slow  # 120 steps, timed
def test_every_compilation_is_left_out_and_the_summary_agrees_with_metrics(tmp_path):
    # A shape no other test compiles, so that this run's step compiles in this run.
    config = TrainConfig(max_files=12, batch_size=8, seq_len=24, hidden_size=40, steps=120,
                         eval_every=0, save_every=0, log_every=20, val_chars=2048,
                         out=str(tmp_path))  # fmt: skip
    compiles = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(compiles)

    def on_step(state):
        compiles.events.append(state.step)

    try:
        with jax.log_compiles(True):
            result = train(config, progress=False, echo=lambda s: None, on_step=on_step)
    finally:
        logger.removeHandler(compiles)
    # each compilation of the step happened in the step that came next in the events
    events = compiles.events
    compiled_in = {events[i + 1] for i, e in enumerate(events) if e == "compile"}
    assert compiled_in, events  # this test sees the compilations it is about
    assert compiled_in <= set(result.compiled_steps)
    assert len(result.compiled_steps) <= 2  # one per variant of the step, at most
    # The summary's rate and the rows' rate taken together are the same quotient,
    # (steps - compiled) / (seconds - other), of one clock whose windows (the rows) add
    # up to the steps' own time: they differ only by the rounding of the printed rates,
    # 0.05 in the summary (one decimal) and 5e-4 in each row (relative 1e-6 at these
    # rates of hundreds of steps/s).
    rows = _rows(tmp_path / "metrics.csv")
    steps, rates = [int(r[0]) for r in rows], [float(r[5]) for r in rows]
    previous, counted, seconds = 0, 0, 0.0
    for step, rate in zip(steps, rates, strict=True):
        n = step - previous - sum(previous < c <= step for c in result.compiled_steps)
        counted, seconds, previous = counted + n, seconds + n / rate, step
    summary = float(_SUMMARY_RATE.search(result.summary()).group(1))
    assert counted == 120 - len(result.compiled_steps)
    assert abs(summary - counted / seconds) <= 0.05 + 1e-4 * summary
    assert summary == pytest.approx(result.steps_per_second, abs=0.05)
