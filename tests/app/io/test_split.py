"""The held-out split: chosen by a visible rule or by --val-text, printed, written to
OUT/split.json and the checkpoint; a folder's files that are not text skipped."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bptt_jax.app.cli.main import main
from bptt_jax.app.io import preflight
from bptt_jax.app.io.checkpoint import load_checkpoint, save_checkpoint
from bptt_jax.app.io.corpus import BYTES_PER_CHAR, DataError, load_corpus
from bptt_jax.app.io.files import held_out_by_name
from bptt_jax.app.io.preflight import UsageError
from bptt_jax.app.io.split import split_lines, split_record
from bptt_jax.app.training.checkpoint_schema import load_model

SMALL = ["--batch-size", "2", "--seq-len", "8", "--hidden-size", "8", "--steps", "2",
         "--eval-every", "0", "--val-chars", "256", "--no-progress"]  # fmt: skip


def _source(i: int, n: int = 60) -> str:
    return "".join(f"def f{i}_{k}(x):\n    return x * {k}\n" for k in range(n))


def _folder(tmp_path, names=("a.py", "b.py", "c.py", "d.py")):
    folder = tmp_path / "src"
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / name).write_text(_source(i))
    return folder


def _train(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(["train", *SMALL, *argv])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue()


def _one_line_error(argv, capsys, match: str) -> str:
    status, _ = _train(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


# --------------------------------------------------------------------------- the rule


def test_several_files_hold_out_those_whose_name_hashes_to_zero(tmp_path):
    names = [f"m{i}.py" for i in range(40)]
    corpus = load_corpus([str(_folder(tmp_path, names))])
    expected = [f"src/{n}" for n in sorted(names) if held_out_by_name(f"src/{n}")]
    assert expected and corpus.rule == "name-hash"
    assert list(corpus.val_files) == expected
    record = split_record(corpus)
    assert record["held_out"] == expected and record["held_out_range"] is None
    assert record["held_out_chars"] == len(corpus.val_ids)
    assert record["train_files"] == list(corpus.train_files)
    line = split_lines(corpus)[0]
    assert line.startswith("held out for validation:") and expected[0] in line


def test_when_no_name_hashes_to_zero_the_last_file_is_held_out_and_said_so(tmp_path):
    names = [n for n in (f"n{i}.py" for i in range(30)) if not held_out_by_name(f"src/{n}")][:3]
    corpus = load_corpus([str(_folder(tmp_path, names))])
    assert corpus.rule == "last-file" and corpus.val_files == (f"src/{sorted(names)[-1]}",)
    assert "the last by name" in split_lines(corpus)[0]


def test_one_file_holds_out_its_last_tenth_and_records_the_range(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 100)
    corpus = load_corpus([str(path)])
    assert corpus.rule == "tail" and corpus.val_range == (900, 1000)
    assert split_record(corpus)["held_out_range"] == [900, 1000]
    assert "the last 10 % of book.txt, characters 900..1,000" in split_lines(corpus)[0]


def test_more_held_out_than_trained_on_is_pointed_out(tmp_path):
    big, note = tmp_path / "big.txt", tmp_path / "note.txt"
    big.write_text(_source(0, 400))
    note.write_text(_source(1, 5))
    corpus = load_corpus([str(note)], val_text=[str(big)])
    assert "more held out than trained on" in split_lines(corpus)[0]


# --------------------------------------------------------------------------- --val-text


def test_val_text_names_the_held_out_files(tmp_path):
    folder = _folder(tmp_path)
    held = tmp_path / "held.py"
    held.write_text(_source(9))
    corpus = load_corpus([str(folder)], val_text=[str(held)])
    assert corpus.rule == "val-text" and corpus.val_files == ("held.py",)
    assert len(corpus.train_files) == 4  # every --text file is trained on
    assert len(corpus.val_ids) == len(held.read_text())


@pytest.mark.parametrize("case", ["same_file", "file_in_text_folder", "missing", "fifo"])
def test_bad_val_text_is_a_one_line_error(tmp_path, capsys, case):
    folder = _folder(tmp_path)
    val = {"same_file": folder / "a.py", "file_in_text_folder": folder / "b.py",
           "missing": tmp_path / "nope.py", "fifo": tmp_path / "pipe"}[case]  # fmt: skip
    text = str(folder / "a.py") if case == "same_file" else str(folder)
    if case == "fifo":
        os.mkfifo(val)
    match = {"missing": "--val-text", "fifo": "is a FIFO (named pipe), not a regular file"}
    argv = ["--text", text, "--val-text", str(val), "--out", str(tmp_path / "o")]
    err = _one_line_error(argv, capsys, match.get(case, "also a training"))
    assert str(val) in err or case == "missing"


# --------------------------------------------------------------------------- not text


def test_a_folders_file_that_is_not_utf8_is_skipped_and_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00")
    corpus = load_corpus([str(folder)])
    assert corpus.not_text == ("src/logo.png",)
    assert "src/logo.png" not in corpus.train_files + corpus.val_files
    lines = split_lines(corpus)
    assert (
        len(lines) == 2 and "skipped 1 file(s) that are not UTF-8 text: src/logo.png" in lines[1]
    )
    assert split_record(corpus)["skipped_not_text"] == ["src/logo.png"]
    with pytest.raises(DataError, match=r"logo\.png: not UTF-8 text"):
        load_corpus([str(folder)], strict_text=True)


def test_a_file_named_directly_that_is_not_utf8_still_stops(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbut \xff here\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus([str(_folder(tmp_path)), str(bad)])


def test_a_folder_with_a_non_utf8_file_name_can_be_trained(tmp_path):
    folder = _folder(tmp_path)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.py"), "w") as f:
        f.write(_source(7))
    corpus = load_corpus([str(folder)])
    names = corpus.train_files + corpus.val_files
    assert "src/caf\\xe9.py" in names  # the undecodable byte shown, never lost
    json.dumps(split_record(corpus), ensure_ascii=False).encode()  # writable as UTF-8


# --------------------------------------------------------------------------- memory


def test_a_corpus_that_would_not_fit_in_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    nbytes = sum(p.stat().st_size for p in folder.iterdir())
    monkeypatch.setattr(preflight, "available_bytes", lambda host=False: 10 * nbytes)
    monkeypatch.setattr("bptt_jax.app.io.corpus.read_text", lambda p: pytest.fail("read"))
    with pytest.raises(UsageError, match=f"the corpus \\({nbytes:,} bytes in 4 files\\)"):
        load_corpus([str(folder)])


_MEASURE = """
import pathlib, sys, tracemalloc
import numpy as np
from bptt_jax.app.training.checkpoint_schema import data_fingerprint
from bptt_jax.app.io.corpus import load_corpus
from bptt_jax.app.training.validation import baselines, held_out
from bptt_jax.app.io.streams import Streams
task, folder = sys.argv[1], sys.argv[2]
tracemalloc.start()  # the heap's peak (Python objects and NumPy arrays), not the RSS's
c = load_corpus([folder], task=task)
s = Streams(c.train_ids, c.train_labels, 64, 64, starts=c.train_starts)
fp = data_fingerprint(c)
h = held_out(c.val_ids, c.val_labels, c.val_starts, c.val_files, 1_000_000)
b = baselines(c, np.concatenate(h.ys), np.concatenate(h.xs))
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.slow  # a fresh Python reads a corpus of megabytes
@pytest.mark.parametrize(("task", "megabytes"), [("lm", 16), ("tag", 3)], ids=["lm", "tag"])
def test_bytes_per_char_bounds_the_measured_peak(tmp_path, task, megabytes):
    # BYTES_PER_CHAR is an accounting of the arrays (io/corpus.py); the peak of the heap
    # (tracemalloc: Python objects and NumPy arrays; the RSS's peak was set by JAX's import
    # before the corpus was read, so it measured nothing) must stay under it, and the
    # figure must not be loose by more than a factor 2 (it would refuse usable corpora).
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(4):
        (folder / f"f{i}.py").write_text(_source(i, megabytes * 2**20 // 4 // 30))
    nbytes = sum(p.stat().st_size for p in folder.iterdir())
    proc = subprocess.run([sys.executable, "-c", _MEASURE, task, str(folder)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout)
    assert BYTES_PER_CHAR[task] / 2 * nbytes <= peak <= BYTES_PER_CHAR[task] * nbytes


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    folder = _folder(tmp)
    (folder / "data.bin").write_bytes(bytes(range(256)))
    held = tmp / "held.py"
    held.write_text(_source(8))
    out = tmp / "out"
    status, stdout = _train(["--text", str(folder), "--val-text", str(held), "--out", str(out)])
    assert status == 0
    return out, stdout


def test_the_run_prints_the_split_and_the_skipped_files(run):
    _, stdout = run
    lines = stdout.splitlines()
    held = f"held.py ({len(_source(8)):,} characters; training on "
    assert lines[0].startswith("held out for validation: 1 file(s) named by --val-text: " + held)
    assert lines[0].endswith(" in 4 file(s))")
    assert lines[1].startswith("skipped 1 file(s) that are not UTF-8 text: src/data.bin")


def test_the_run_writes_split_json_and_records_the_split_in_the_checkpoint(run):
    out, _ = run
    record = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert record["rule"] == "val-text" and record["held_out"] == ["held.py"]
    assert record["skipped_not_text"] == ["src/data.bin"]
    assert sorted(record["train_files"]) == [f"src/{n}" for n in ("a.py", "b.py", "c.py", "d.py")]
    header, _ = load_checkpoint(out / "checkpoint.bptt")
    assert header["split"] == {k: v for k, v in record.items() if k != "train_files"}
    assert header["config"]["val_text"] == [str(out.parent / "held.py")]


def test_a_checkpoint_without_a_split_still_loads(run, tmp_path):
    out, _ = run
    header, arrays = load_checkpoint(out / "checkpoint.bptt")
    del header["split"]
    del header["config"]["val_text"], header["config"]["strict_text"]  # an older writer's
    save_checkpoint(tmp_path / "old.bptt", header, arrays)
    model = load_model(tmp_path / "old.bptt")
    assert model.config.val_text == () and model.config.strict_text is False
    np.testing.assert_array_equal(model.params.U, load_model(out / "checkpoint.bptt").params.U)


def test_a_forged_split_is_refused(run, tmp_path, capsys):
    out, _ = run
    header, arrays = load_checkpoint(out / "checkpoint.bptt")
    header["split"] = ["not", "an", "object"]
    save_checkpoint(tmp_path / "forged.bptt", header, arrays)
    assert main(["sample", str(tmp_path / "forged.bptt")]) == 1
    assert "split must be an object" in capsys.readouterr().err


def test_resume_with_other_val_text_is_refused(run, tmp_path, capsys):
    out, _ = run
    other = tmp_path / "other.py"
    other.write_text(_source(5))
    argv = ["--resume", str(out / "checkpoint.bptt"), "--steps", "3", "--val-text", str(other)]
    _one_line_error(argv, capsys, "the checkpoint was trained with --val-text")


def test_strict_text_stops_at_a_folders_file_that_is_not_text(tmp_path, capsys):
    folder = _folder(tmp_path)
    (folder / "data.bin").write_bytes(b"\xff\xfe")
    _one_line_error(["--text", str(folder), "--strict-text", "--out", str(tmp_path / "o")],
                    capsys, "data.bin: not UTF-8 text")  # fmt: skip
