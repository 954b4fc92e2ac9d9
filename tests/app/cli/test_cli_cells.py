"""``bptt-jax train|sample|tag|eval`` with the gated cells (``--cell lstm|gru``), and
``bptt-jax check --cell``: tiny runs through the command line, the checkpoint's cell,
``bptt_jax.load`` against the commands, and the refusals, each one line."""

import json

import numpy as np
import pytest
from helpers import one_line_error

import bptt_jax
from bptt_jax.app.cli.main import main
from bptt_jax.app.io.checkpoint import load_checkpoint

SOURCE = "def add(a, b):\n    # sum\n    return a + b  # done\n\n\nx = add(1, 2)\n"

#: A tiny run: every step compiles in about a second on the 2-core CPU.
TINY = ["--hidden-size", "8", "--batch-size", "2", "--seq-len", "8", "--eval-every", "0",
        "--save-every", "0", "--lr", "0.03", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells") / "text"
    folder.mkdir()
    for i in range(3):
        (folder / f"m{i}.py").write_text(SOURCE.replace("add", f"add{i}") * 3)
    return folder


def _train(capsys, out, *argv) -> str:
    status = main(["train", *TINY, "--out", str(out), *argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def lstm_lm(text, tmp_path_factory):
    """An LSTM language model, 4 steps with the referee every 2 (document starts included)."""
    out = tmp_path_factory.mktemp("lstm")
    assert main(["train", *TINY, "--text", str(text), "--cell", "lstm", "--steps", "4",
                 "--verify-every", "2", "--out", str(out)]) == 0  # fmt: skip
    return out / "checkpoint.bptt"


@pytest.fixture(scope="module")
def gru_tagger(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("gru")
    assert main(["train", *TINY, "--text", str(text), "--task", "tag", "--cell", "gru",
                 "--steps", "3", "--verify-every", "3", "--out", str(out)]) == 0  # fmt: skip
    return out / "checkpoint.bptt"


def _cli(capsys, *argv) -> str:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


# --------------------------------------------------------------------------- train


def test_an_lstm_checkpoint_keeps_its_cell_and_both_parts_of_its_state(lstm_lm):
    header, arrays = load_checkpoint(lstm_lm)
    config = header["config"]
    assert (config["cell"], config["forget_bias"]) == ("lstm", 1.0)  # LSTM_DEFAULTS
    assert header["history"]["verified"] == 2  # --verify-every 2 at steps 0 and 2
    assert arrays["params/U"].shape == (32, 8) and arrays["params/b"].shape == (32,)
    assert arrays["h"].shape == arrays["c"].shape == (2, 8)  # (h, c), each (B, H)
    assert np.any(arrays["c"] != 0)  # the carried cell state, not zeros


def test_a_gru_checkpoint_has_one_state_array(gru_tagger):
    header, arrays = load_checkpoint(gru_tagger)
    assert header["config"]["cell"] == "gru" and header["config"]["forget_bias"] == 0
    assert arrays["params/U"].shape == (24, 8) and arrays["params/b"].shape == (32,)
    assert "c" not in arrays and arrays["h"].shape == (2, 8)


def test_the_summary_names_the_cell(text, tmp_path, capsys):
    out = _train(capsys, tmp_path, "--text", str(text), "--cell", "gru", "--steps", "1")
    summary = next(line for line in out.splitlines() if line.startswith("bptt-jax train:"))
    assert "lm H=8 gru B=2" in summary


@pytest.mark.slow  # a second LSTM training session
def test_an_lstm_run_resumes_with_its_cell(lstm_lm, tmp_path, capsys):
    (tmp_path / "checkpoint.bptt").write_bytes(lstm_lm.read_bytes())
    _train(capsys, tmp_path, "--resume", "--steps", "6")
    header, arrays = load_checkpoint(tmp_path / "checkpoint.bptt")
    assert header["step"] == 6 and header["config"]["cell"] == "lstm"
    assert arrays["c"].shape == (2, 8)


# --------------------------------------------------------------------------- refusals


def test_resume_with_another_cell_is_refused_in_one_line(lstm_lm, capsys):
    one_line_error(["train", "--resume", str(lstm_lm), "--cell", "gru", "--steps", "9"],
                   capsys, "the checkpoint was trained with --cell lstm, not gru")  # fmt: skip


def test_resume_with_another_forget_bias_is_refused_in_one_line(lstm_lm, capsys):
    argv = ["train", "--resume", str(lstm_lm), "--forget-bias", "0", "--steps", "9"]
    one_line_error(argv, capsys, "the checkpoint was trained with --forget-bias 1.0, not 0.0")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cell", "lstm", "--activation", "relu"],
         "--activation relu is the rnn cell's f; the lstm cell's nonlinearities are fixed"),
        (["--cell", "gru", "--activation", "sigmoid"], "the gru cell's nonlinearities"),
        (["--cell", "gru", "--forget-bias", "1"],
         "--forget-bias is the lstm cell's forget-gate bias; the gru cell has none"),
        (["--forget-bias", "2"], "the rnn cell has none"),
        (["--cell", "lsmt"], "argument --cell: invalid choice: 'lsmt'"),
        (["--cell", "lstm", "--forget-bias", "inf"], "must be a finite number, got inf"),
    ],
    ids=["lstm_relu", "gru_sigmoid", "gru_forget_bias", "rnn_forget_bias", "misspelt",
         "infinite_bias"],
)  # fmt: skip
def test_a_model_the_cell_cannot_be_is_refused_in_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(["train", *argv, "--out", str(out)], capsys, message)
    assert not out.exists()  # refused before anything was read or written


# --------------------------------------------------------------------------- sample, tag, eval


def test_sample_and_eval_of_an_lstm_are_what_load_gives(lstm_lm, text, capsys):
    model = bptt_jax.load(lstm_lm)
    assert model.config.cell == "lstm" and model.params.U.shape == (32, 8)
    assert "cell='lstm'" in repr(model)
    printed = _cli(capsys, "sample", str(lstm_lm), "--length", "40", "--seed", "3")
    assert printed == "def " + model.sample(length=40, seed=3) + "\n"
    greedy = _cli(capsys, "sample", str(lstm_lm), "--prime", "", "--length", "20",
                  "--temperature", "0")  # fmt: skip
    assert greedy == model.sample("", 20, temperature=0) + "\n"
    report = json.loads(_cli(capsys, "eval", "--json", str(lstm_lm), str(text)))
    report.pop("checkpoint")
    assert model.evaluate(text).to_json() == report
    one = text / "m0.py"
    assert model.score(one.read_text()).bits_per_char == model.evaluate(one).bits_per_char


def test_tag_and_eval_of_a_gru_tagger_are_what_load_gives(gru_tagger, text, capsys):
    model = bptt_jax.load(gru_tagger)
    assert model.config.cell == "gru"
    printed = json.loads(_cli(capsys, "tag", "--json", str(gru_tagger), str(text / "m1.py")))
    letters = "".join(bptt_jax.app.io.corpus.TOKEN_LETTERS[i]
                      for i in model.tag((text / "m1.py").read_text()))  # fmt: skip
    assert printed["tags"] == letters
    report = json.loads(_cli(capsys, "eval", "--json", str(gru_tagger), str(text)))
    report.pop("checkpoint")
    assert model.evaluate(text).to_json() == report


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_check_of_a_gated_cell_agrees(cell, capsys):
    assert main(["check", "--cell", cell, "-K", "5", "-H", "3", "-C", "4", "-B", "2",
                 "-T", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"cell={cell}" in out and out.count("all gradients agree") == 1
    G = {"lstm": 4, "gru": 3}[cell]
    row = next(line for line in out.splitlines() if line.startswith("U "))
    assert f"({G * 3}, 3)" in row and row.rstrip().endswith("ok")


@pytest.mark.slow  # three checks
def test_check_runs_every_cell_by_default(capsys):
    assert main(["check", "-K", "4", "-H", "2", "-C", "3", "-B", "1", "-T", "3"]) == 0
    out = capsys.readouterr().out
    assert [line.split("cell=")[1] for line in out.splitlines() if "cell=" in line] == [
        "rnn", "lstm", "gru"]  # fmt: skip
    assert out.count("all gradients agree") == 3


def test_check_refuses_a_misspelt_cell_in_one_line(capsys):
    one_line_error(["check", "--cell", "lsmt"], capsys, "argument --cell: invalid choice")
