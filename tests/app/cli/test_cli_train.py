"""bptt-jax train / sample / tag from the command line: outputs, exit codes, messages."""

import argparse
import contextlib
import io
import shutil
import subprocess
import sys

import pytest

from bptt_jax.app.cli.main import build_parser, main
from bptt_jax.app.io.checkpoint import load_checkpoint

# The shapes of test_train.py's runs, so that the jitted steps are compiled once.
TINY = ["--max-files", "12", "--hidden-size", "48", "--batch-size", "16", "--seq-len", "32",
        "--val-chars", "8192", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        argv = ["train", *TINY, "--steps", "20", "--eval-every", "10", "--out", str(out)]
        assert main(argv) == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tag")
    assert main(["train", *TINY, "--task", "tag", "--steps", "20", "--out", str(out)]) == 0
    return out


def _fails_with(argv, capsys, message):
    try:
        status = main(argv)
    except SystemExit as e:  # argument errors: the parser's, with the same status
        status = e.code
    assert status == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    return err


def test_train_writes_checkpoint_plot_and_summary(lm_run):
    run, out = lm_run
    summary = next(line for line in out.splitlines() if line.startswith("bptt-jax train:"))
    for part in ("step 20/20", "steps/s", "tokens/s", "bits/char", "ppl", "unigram",
                 "0 non-finite steps skipped"):  # fmt: skip
        assert part in summary
    assert "step 10: val loss" in out and "perplexity" in out
    header, _ = load_checkpoint(run / "checkpoint.bptt")
    assert header["step"] == 20 and header["config"]["hidden_size"] == 48
    assert (run / "loss.png").exists()


@pytest.mark.slow  # compiles a bf16 recompute training step
def test_train_with_bf16_products_and_recompute(tmp_path, capsys):
    argv = ["train", *TINY, "--steps", "2", "--eval-every", "0", "--out", str(tmp_path),
            "--matmul-dtype", "bfloat16", "--recompute"]  # fmt: skip
    assert main(argv) == 0
    assert "bfloat16 products recompute on 1 device" in capsys.readouterr().out
    config = load_checkpoint(tmp_path / "checkpoint.bptt")[0]["config"]
    assert (config["matmul_dtype"], config["recompute"]) == ("bfloat16", True)


@pytest.mark.slow  # a second training (each compiles its step)
def test_resume_from_the_command_line_goes_on(lm_run, tmp_path, capsys):
    lm_run = lm_run[0]
    shutil.copy(lm_run / "checkpoint.bptt", tmp_path / "checkpoint.bptt")
    argv = ["train", "--resume", "--steps", "25", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert load_checkpoint(tmp_path / "checkpoint.bptt")[0]["step"] == 25
    assert "step 25/25" in capsys.readouterr().out


def test_resume_with_another_model_size_is_refused(lm_run, capsys):
    lm_run = lm_run[0]
    ckpt = str(lm_run / "checkpoint.bptt")
    _fails_with(["train", "--resume", ckpt, "--hidden-size", "64", "--steps", "40"], capsys,
                "the checkpoint was trained with --hidden-size 48, not 64")  # fmt: skip


def test_resume_past_the_end_needs_more_steps(lm_run, capsys):
    lm_run = lm_run[0]
    _fails_with(["train", "--resume", str(lm_run / "checkpoint.bptt")], capsys,
                "already at step 20")  # fmt: skip


def test_sample_is_reproducible_and_starts_with_the_prime(lm_run, capsys):
    lm_run = lm_run[0]
    argv = ["sample", str(lm_run / "checkpoint.bptt"), "--prime", "def ", "--length", "50",
            "--seed", "7"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("def ") and len(first) == len("def ") + 50 + 1


@pytest.mark.parametrize(
    "extra, message",
    [(["--length", "0"], "--length: must be in 1..1000000, got 0"),
     (["--length", "-5"], "--length: must be in 1..1000000, got -5"),
     (["--prime", "x\u2603y"], "not in the model's vocabulary: '\u2603'")],
    ids=["length_zero", "length_negative", "prime_outside_vocab"],
)  # fmt: skip
def test_bad_sample_requests_exit_1(lm_run, capsys, extra, message):
    lm_run = lm_run[0]
    _fails_with(["sample", str(lm_run / "checkpoint.bptt"), *extra], capsys, message)


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte"])
def test_damaged_checkpoint_is_refused(lm_run, tmp_path, capsys, damage):
    lm_run = lm_run[0]
    data = bytearray((lm_run / "checkpoint.bptt").read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) // 3] ^= 0x10
    bad = tmp_path / "bad.bptt"
    bad.write_bytes(bytes(data))
    _fails_with(["sample", str(bad)], capsys, "corrupted or truncated")
    _fails_with(["train", "--resume", str(bad), "--steps", "99"], capsys, "corrupted or truncated")


@pytest.mark.slow  # a fresh Python process
def test_damaged_checkpoint_from_a_shell_gives_no_traceback(lm_run, tmp_path):
    lm_run = lm_run[0]
    bad = tmp_path / "bad.bptt"
    bad.write_bytes((lm_run / "checkpoint.bptt").read_bytes()[:-10])
    proc = subprocess.run([sys.executable, "-m", "bptt_jax", "sample", str(bad)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert "checkpoint is corrupted or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # trains a tagging model (tag_run)
def test_tag_prints_the_file_with_its_token_types(tag_run, tmp_path, capsys):
    src = tmp_path / "snippet.py"
    src.write_text("import os\n\n\ndef f(x):\n    return x + 1  # one\n")
    assert main(["tag", str(tag_run / "checkpoint.bptt"), str(src)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("legend: blank=whitespace  n=name  k=keyword")
    assert out[1] == "import os" and set(out[2]) <= set("nkodsc? ")
    assert out[-1].startswith("accuracy against tokenize: ")
    assert "\033[" not in "".join(out)  # not a terminal: no colour codes
    assert main(["tag", str(tag_run / "checkpoint.bptt"), str(src), "--color", "always"]) == 0
    assert "\033[" in capsys.readouterr().out


def test_tag_with_a_language_model_is_refused(lm_run, tmp_path, capsys):
    lm_run = lm_run[0]
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    _fails_with(["tag", str(lm_run / "checkpoint.bptt"), str(src)], capsys, "--task tag")


def test_train_on_a_non_utf8_file_names_it(tmp_path, capsys):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("hello world\n" * 50)
    bad.write_bytes(b"fine\nbut \xff here\n")
    err = _fails_with(["train", "--text", str(good), "--text", str(bad), "--out",
                       str(tmp_path / "o")], capsys, f"{bad}: not UTF-8 text")  # fmt: skip
    assert "line 2" in err


def test_train_on_an_empty_corpus_says_so(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    _fails_with(["train", "--text", str(tmp_path), "--out", str(tmp_path / "o")], capsys,
                "empty corpus")  # fmt: skip


@pytest.mark.parametrize("command", ["train", "sample", "tag", "check", "bench", "eval"])
def test_every_flag_documents_its_default(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), f"{command} {action.option_strings}"


COMMANDS = ("train", "sample", "tag", "eval", "check", "diagnose", "bench")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help(command, capsys):
    # argparse %-formats every help string: a stray "%" is a traceback at --help.
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: bptt-jax {command}")


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "sample", "tag", "check"))


@pytest.mark.slow  # a training in a fresh Python process
def test_ctrl_c_saves_a_checkpoint_before_exiting(tmp_path):
    import os
    import signal

    args = ["train", *TINY, "--steps", "100000", "--eval-every", "5", "--out", str(tmp_path)]
    # A background job inherits SIGINT ignored (a terminal's is not): restore
    # Python's KeyboardInterrupt handler first, then run bptt-jax.
    start = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from bptt_jax.app.cli.main import run; run()"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", start, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("step 10: val loss"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    header, _ = load_checkpoint(tmp_path / "checkpoint.bptt")
    assert 10 <= header["step"] < 100000
    assert f"step {header['step']}/100000 (interrupted)" in out
