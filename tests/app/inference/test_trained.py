"""``bptt_jax.load``: a trained checkpoint from Python gives exactly what the commands give.

Each comparison runs the command in process (:func:`bptt_jax.app.cli.main`) on a
tiny checkpoint trained here, and the method on the model :func:`bptt_jax.load`
returns, and asks for equality: same text, same JSON report, same tags.
"""

import dataclasses
import json
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

import bptt_jax
from bptt_jax.app.cli.main import main
from bptt_jax.app.io.checkpoint import MAGIC, save_checkpoint
from bptt_jax.app.io.corpus import TOKEN_LETTERS, TOKEN_TYPES, load_corpus
from bptt_jax.app.training.checkpoint_schema import training_arrays, training_header
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train
from bptt_jax.app.training.models import init_model, zero_state
from bptt_jax.app.training.state import History, TrainState
from bptt_jax.app.training.train_step import make_optimizer

SOURCE = "def add(a, b):\n    # sum\n    return a + b  # done\n\n\nx = add(1, 2)\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(folder, {task: checkpoint path})``: a language model and a tagger, 3 steps each."""
    root = tmp_path_factory.mktemp("trained")
    text = root / "text"
    text.mkdir()
    for i in range(3):
        (text / f"m{i}.py").write_text(SOURCE.replace("add", f"add{i}") * 3)
    out = {}
    for task in ("lm", "tag"):
        config = TrainConfig(task=task, text=(str(text),), steps=3, batch_size=2, seq_len=8,
                             hidden_size=8, eval_every=0, save_every=0, log_every=1, lr=0.03,
                             out=str(root / task))  # fmt: skip
        out[task] = str(train(config, progress=False, echo=lambda s: None).checkpoint)
    return root, out


def _cli(capsys, *argv) -> str:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


# --------------------------------------------------------------------------- the value


def test_load_gives_the_checkpoints_model(runs):
    _, ckpt = runs
    model = bptt_jax.load(ckpt["lm"])
    assert isinstance(model, bptt_jax.TrainedModel)
    assert model.task == "lm" and model.labels is None and model.step == 3
    assert isinstance(model.params, bptt_jax.Params)
    K = model.vocab.size
    assert model.params.W.shape == (8, K) and model.params.V.shape == (K, 8)
    assert model.config.hidden_size == 8 and model.config.seq_len == 8
    tagger = bptt_jax.load(ckpt["tag"])
    assert tagger.task == "tag" and tagger.labels == TOKEN_TYPES
    assert tagger.params.V.shape == (len(TOKEN_TYPES), 8)
    assert repr(model).startswith("TrainedModel(task='lm', step=3, K=")


def test_the_model_is_frozen_and_compares_by_identity(runs):
    model = bptt_jax.load(runs[1]["lm"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.step = 7
    again = bptt_jax.load(runs[1]["lm"])
    assert model == model and model != again and len({model, again}) == 2


def test_its_parameters_work_with_the_library(runs):
    model = bptt_jax.load(runs[1]["lm"])
    ids = model.encode(SOURCE)
    E = bptt_jax.loss(model.params, ids[:-1], ids[1:])
    report = model.score(SOURCE)
    # The same loss: eval's bits/char is E over the targets, in bits (float32 sums).
    assert np.isclose(float(E) / (len(ids) - 1) / np.log(2), report.bits_per_char, rtol=1e-5)


def test_encode_and_decode_are_the_vocabularys(runs):
    model = bptt_jax.load(runs[1]["lm"])
    ids = model.encode("def x")
    assert ids.dtype == np.int32 and model.decode(ids) == "def x"
    assert model.decode(list(ids)) == "def x"
    unknown = model.encode("☃")
    assert unknown.tolist() == [model.vocab.size - 1] and model.decode(unknown) == "\ufffd"


@pytest.mark.parametrize(
    ("ids", "expected"),
    [([0, 999], "must be in 0..* got 999 at flat index 1"), ([-1], "got -1 at flat index 0"),
     ([0.5], "must be integers"), ([True], "must be integers")],
    ids=["too_large", "negative", "float", "bool"],
)  # fmt: skip
def test_decode_refuses_ids_outside_the_vocabulary(runs, ids, expected):
    model = bptt_jax.load(runs[1]["lm"])
    with pytest.raises(ValueError, match=expected.replace("..", r"\.\.").replace("*", ".*")):
        model.decode(ids)


# --------------------------------------------------------------------------- same as the CLI


@pytest.mark.parametrize(
    "options",
    [{}, {"prime": "de", "length": 70, "seed": 3, "temperature": 1.3, "top_k": 4, "top_p": 0.9},
     {"prime": "", "length": 33, "temperature": 0.0}],
    ids=["defaults", "all_options", "greedy_empty_prime"],
)  # fmt: skip
def test_sample_is_what_bptt_jax_sample_prints(runs, capsys, options):
    ckpt = runs[1]["lm"]
    flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    printed = _cli(capsys, "sample", ckpt, *flags)
    model = bptt_jax.load(ckpt)
    text = model.sample(**options)
    assert printed == options.get("prime", "def ") + text + "\n"
    assert len(text) == options.get("length", 500)
    assert "".join(model.stream(**options)) == text


def test_the_samples_of_num_samples_are_the_indices(runs, capsys):
    ckpt = runs[1]["lm"]
    printed = _cli(capsys, "sample", ckpt, "--prime", "x", "--length", "40", "--num-samples", "2")
    model = bptt_jax.load(ckpt)
    first, second = (model.sample("x", 40, index=i) for i in (0, 1))
    assert first != second
    assert printed == (
        f"--- sample 1 of 2 ---\nx{first}\n\n--- sample 2 of 2 ---\nx{second}\n"
    )  # fmt: skip


@pytest.mark.slow  # a second process: imports and compiles again
def test_sample_in_another_process_is_the_same_text(runs):
    ckpt = runs[1]["lm"]
    argv = [sys.executable, "-m", "bptt_jax", "sample", ckpt, "--length", "50", "--seed", "9"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout == "def " + bptt_jax.load(ckpt).sample(length=50, seed=9) + "\n"


def report_vocab(path) -> str:
    return bptt_jax.load(path).vocab.chars


@pytest.mark.parametrize("task", ["lm", "tag"])
def test_evaluate_is_what_bptt_jax_eval_reports(runs, capsys, tmp_path, task):
    root, ckpt = runs
    (tmp_path / "snow.py").write_text("x = (1, '☃')\n")  # ' and ☃ are not in the training text
    paths = [str(root / "text"), str(tmp_path / "snow.py")]
    printed = json.loads(_cli(capsys, "eval", "--json", ckpt[task], *paths))
    report = bptt_jax.load(ckpt[task]).evaluate(*paths)
    assert printed.pop("checkpoint") == ckpt[task]
    assert report.to_json() == printed  # every number, bit for bit through JSON
    oov = sum(ch not in report_vocab(ckpt[task]) for ch in "x = (1, '☃')\n")
    assert report.oov_chars == oov == 3 and len(report.files) == 4 and report.task == task
    assert (report.accuracy is None) == (task == "lm")


@pytest.mark.parametrize("task", ["lm", "tag"])
def test_score_of_texts_is_evaluate_of_files_holding_them(runs, tmp_path, task):
    texts = [SOURCE, SOURCE.replace("add", "sub") + "y = 3\n"]
    for i, text in enumerate(texts):
        (tmp_path / f"f{i}.py").write_text(text)
    model = bptt_jax.load(runs[1][task])
    scored = model.score(*texts)
    files = model.evaluate(*(tmp_path / f"f{i}.py" for i in range(2)))
    assert [f.file for f in scored.files] == ["text 1", "text 2"]
    pairs = zip(scored.files, files.files, strict=True)
    renamed = [dataclasses.replace(f, file=g.file) for f, g in pairs]
    assert dataclasses.replace(scored, files=tuple(renamed)) == files


def test_tag_is_what_bptt_jax_tag_prints(runs, capsys, tmp_path):
    path = tmp_path / "code.py"
    path.write_text(SOURCE + "z = '☃'\n")
    ckpt = runs[1]["tag"]
    printed = json.loads(_cli(capsys, "tag", "--json", ckpt, str(path)))
    tags = bptt_jax.load(ckpt).tag(path.read_text())
    assert tags.dtype == np.int32 and tags.shape == (len(path.read_text()),)
    assert "".join(TOKEN_LETTERS[t] for t in tags) == printed["tags"]


# --------------------------------------------------------------------------- the file format


def test_safetensors_reads_the_array_section(runs):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ckpt = runs[1]["lm"]
    data = pathlib.Path(ckpt).read_bytes()
    assert data[:8] == MAGIC
    (n,) = struct.unpack("<Q", data[40:48])  # after the magic and the sha256: the header
    arrays = safetensors_numpy.load(data[48 + n :])
    model = bptt_jax.load(ckpt)
    for name in bptt_jax.Params._fields:
        got, want = arrays[f"params/{name}"], np.asarray(getattr(model.params, name))
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert arrays["h"].shape == (2, 8)  # the carried state, (B, H), is there too


# --------------------------------------------------------------------------- deep models


def _deep_checkpoint(root, **fields) -> str:
    """A checkpoint of a freshly initialised deep model, as train writes it (no step run:
    a deep model's training step is the slowest compilation there is)."""
    config = TrainConfig(text=(str(root / "text"),), hidden_size=8, batch_size=2, seq_len=8,
                         steps=5, num_layers=2, **fields)  # fmt: skip
    corpus = load_corpus(config.text, task=config.task)
    params = init_model(config, jax.random.key(1), corpus.vocab.size, corpus.num_classes)
    h = jax.numpy.asarray(zero_state(config, config.batch_size))
    state = TrainState(params, make_optimizer(config).init(params), h, jax.random.key(0), 3, 0, 0)
    path = root / f"deep-{config.task}.bptt"
    save_checkpoint(path, training_header(config, corpus, state, History()),
                    training_arrays(config, state))  # fmt: skip
    return str(path)


@pytest.mark.slow  # compiles deep forward passes
def test_a_deep_language_model_samples_and_scores_as_the_commands(runs, capsys):
    root, _ = runs
    ckpt = _deep_checkpoint(root, task="lm", activation="relu")
    model = bptt_jax.load(ckpt)
    assert isinstance(model.params, bptt_jax.DeepParams) and len(model.params.layers) == 2
    printed = _cli(capsys, "sample", ckpt, "--length", "40", "--seed", "2")
    assert printed == "def " + model.sample(length=40, seed=2) + "\n"
    report = json.loads(_cli(capsys, "eval", "--json", ckpt, str(root / "text")))
    report.pop("checkpoint")
    assert model.evaluate(root / "text").to_json() == report


@pytest.mark.slow  # compiles a bidirectional model
def test_a_bidirectional_tagger_tags_and_scores_as_the_commands(runs, capsys):
    root, _ = runs
    ckpt = _deep_checkpoint(root, task="tag", bidirectional=True)
    model = bptt_jax.load(ckpt)
    assert model.params.bidirectional and "L=2, bidirectional" in repr(model)
    path = root / "text" / "m1.py"
    printed = json.loads(_cli(capsys, "tag", "--json", ckpt, str(path)))
    assert "".join(TOKEN_LETTERS[t] for t in model.tag(path.read_text())) == printed["tags"]
    report = json.loads(_cli(capsys, "eval", "--json", ckpt, str(path)))
    report.pop("checkpoint")
    assert model.evaluate(path).to_json() == report
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    data = pathlib.Path(ckpt).read_bytes()
    (n,) = struct.unpack("<Q", data[40:48])
    arrays = safetensors_numpy.load(data[48 + n :])
    leaves = jax.tree_util.tree_flatten_with_path(model.params)[0]
    for path_, leaf in leaves:  # params/layers/0/U ... params/reverse_layers/1/b, V, c
        name = "params/" + jax.tree_util.keystr(path_, simple=True, separator="/")
        assert np.array_equal(arrays[name], np.asarray(leaf)), name
    assert len(leaves) == 2 * 2 * 3 + 2


# --------------------------------------------------------------------------- bad input


def _damaged(tmp_path, ckpt, how):
    path = tmp_path / "damaged.bptt"
    data = bytearray(pathlib.Path(ckpt).read_bytes())
    if how == "flipped":
        data[-3] ^= 0xFF
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "not_a_checkpoint":
        data = b"just some text\n"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("how", "expected"),
    [("missing", "no such checkpoint"), ("folder", "is a folder, not a regular file"),
     ("not_a_checkpoint", "not a bptt-jax checkpoint"), ("flipped", "sha256 checksum mismatch"),
     ("truncated", "corrupted or truncated")],
    ids=["missing", "folder", "not_a_checkpoint", "flipped", "truncated"],
)  # fmt: skip
def test_load_refuses_a_bad_path_in_one_line(runs, tmp_path, how, expected):
    if how == "missing":
        path = tmp_path / "nope.bptt"
    elif how == "folder":
        path = tmp_path
    else:
        path = _damaged(tmp_path, runs[1]["lm"], how)
    with pytest.raises(bptt_jax.CheckpointError, match=expected) as info:
        bptt_jax.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_load_refuses_what_is_not_a_path():
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike, got int"):
        bptt_jax.load(3)


@pytest.mark.parametrize(
    ("task", "call", "error", "expected"),
    [("tag", lambda m: m.sample(), ValueError, "is a 'tag' model, not a language model"),
     ("lm", lambda m: m.sample(length=0), ValueError, "^length must be a positive"),
     ("lm", lambda m: m.sample(temperature=-1.0), ValueError, "^temperature must be >= 0"),
     ("lm", lambda m: m.sample(top_k=10**6), ValueError, "^top_k must be between 1 and"),
     ("lm", lambda m: m.sample(top_p=0.0), ValueError, r"^top_p must be in \(0, 1\]"),
     ("lm", lambda m: m.sample("☃"), ValueError, "^prime '☃': 1 character"),
     ("lm", lambda m: m.stream(length=0), ValueError, "^length must be"),
     ("lm", lambda m: m.sample(b"def"), TypeError, "prime must be a str, got bytes"),
     ("lm", lambda m: m.encode("☃", strict=True), ValueError, "not in the model's vocabulary"),
     ("lm", lambda m: m.encode(None), TypeError, "text must be a str, got NoneType"),
     ("lm", lambda m: m.tag("x = 1\n"), ValueError, "tagging needs one trained with --task"),
     ("lm", lambda m: m.score("x"), ValueError, "nothing to score"),
     ("lm", lambda m: m.score(), ValueError, "score needs at least one text"),
     ("lm", lambda m: m.score("ok", 3), TypeError, "text 2 must be a str, got int"),
     ("tag", lambda m: m.score("x = (\n"), ValueError, "text 1: tokenize"),
     ("lm", lambda m: m.evaluate(), ValueError, "evaluate needs at least one file"),
     ("lm", lambda m: m.evaluate("/no/such/file.py"), ValueError, "no such file or folder")],
    ids=["sample_tagger", "length", "temperature", "top_k", "top_p", "prime", "stream",
         "prime_bytes", "encode_strict", "encode_none", "tag_lm", "score_nothing",
         "score_no_text", "score_not_text", "score_untokenizable", "evaluate_no_path",
         "evaluate_missing"],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors_named_by_keyword(runs, task, call, error, expected):
    model = bptt_jax.load(runs[1][task])
    with pytest.raises(error, match=expected) as info:
        call(model)
    assert "\n" not in str(info.value) and "--" not in str(info.value).split(";")[0]
