"""``bptt-jax eval CHECKPOINT PATH...``, in process: reports, --json, and bad input."""

import csv
import json
import math

import pytest

from bptt_jax.app.cli.main import main
from bptt_jax.app.io.checkpoint import load_checkpoint
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train

SOURCE = "def add(a, b):\n    # sum\n    return a + b  # done\n\n\nx = add(1, 2)\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    text = root / "text"
    text.mkdir()
    for i in range(3):
        (text / f"m{i}.py").write_text(SOURCE.replace("add", f"add{i}") * 3)
    out = {}
    for task in ("lm", "tag"):
        config = TrainConfig(task=task, text=(str(text),), steps=3, batch_size=2, seq_len=8,
                             hidden_size=8, eval_every=1, save_every=0, log_every=1, lr=0.03,
                             out=str(root / task))  # fmt: skip
        out[task] = str(train(config, progress=False, echo=lambda s: None).checkpoint)
    return root, out


def _run(capsys, *argv):
    status = main(["eval", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_lm_report_counts_every_character_and_the_unknown_ones(runs, capsys, tmp_path):
    root, ckpt = runs
    (tmp_path / "snow.py").write_text("x = (1, ☃)\n")  # ☃ is not in the training text
    status, out, _ = _run(capsys, ckpt["lm"], str(root / "text"), str(tmp_path / "snow.py"))
    assert status == 0
    assert "on 4 file(s)" in out and "characters outside the vocabulary: 1 " in out
    status, out, _ = _run(capsys, "--json", ckpt["lm"], str(tmp_path / "snow.py"))
    report = json.loads(out)
    assert status == 0 and report["chars"] == len("x = (1, ☃)\n") - 1 and report["oov_chars"] == 1
    assert math.isclose(2 ** report["bits_per_char"], report["perplexity"], rel_tol=1e-9)
    assert math.isclose(report["nats_per_char"], report["bits_per_char"] * math.log(2))


def test_tag_report_has_accuracy_per_class_and_the_confusion_table(runs, capsys):
    root, ckpt = runs
    status, out, _ = _run(capsys, "--json", ckpt["tag"], str(root / "text" / "m0.py"))
    report = json.loads(out)
    assert status == 0 and report["chars"] == len(SOURCE.replace("add", "add0") * 3)
    confusion = report["confusion"]
    assert sum(map(sum, confusion)) == report["chars"]
    right = sum(confusion[i][i] for i in range(len(confusion)))
    assert math.isclose(report["accuracy"], right / report["chars"])
    status, out, _ = _run(capsys, ckpt["tag"], str(root / "text" / "m0.py"))
    assert status == 0 and "confusion (rows: tokenize's type" in out and "keyword" in out


@pytest.mark.parametrize("case", ["missing", "binary", "empty_folder", "other_task"])
def test_bad_input_is_one_line_and_status_1(runs, capsys, tmp_path, case):
    root, ckpt = runs
    target, expected, extra = str(tmp_path / "nope.py"), "no such file or folder", []
    if case == "binary":
        (tmp_path / "b.bin").write_bytes(b"\x00\x01\x02abc")
        target, expected = str(tmp_path / "b.bin"), "binary file"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        target, expected = str(tmp_path / "empty"), "holds no files"
    elif case == "other_task":
        target, expected, extra = str(root / "text"), "is a --task lm model", ["--task", "tag"]
    status, out, err = _run(capsys, *extra, ckpt["lm"], target)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("bptt-jax eval: error: ") and expected in err


def test_training_logs_metrics_rows_and_keeps_the_best_checkpoint(runs):
    root, _ = runs
    with open(root / "lm" / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]  # one row per step: eval + log
    assert all(r["val_bits"] for r in rows) and rows[0]["train_bits"] == ""
    assert all(float(r["grad_norm"]) > 0 for r in rows[1:])
    # a row of steps that all compiled (the first of each variant of the step) has no rate
    rates = [float(r["steps_per_s"]) for r in rows[1:] if r["steps_per_s"]]
    assert rates and all(rate > 0 for rate in rates)
    header, _ = load_checkpoint(root / "lm" / "best.bptt")
    val = {int(r["step"]): float(r["val_bits"]) for r in rows[1:]}
    best = min(val, key=val.get)
    assert header["step"] == best and header["history"]["best_step"] == best
