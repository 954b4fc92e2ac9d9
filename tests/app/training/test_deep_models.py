"""Deep and bidirectional models from the CLI: config, checkpoint, causality, sample, tag."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_jax.app.cli.main import main
from bptt_jax.app.inference.sample import CHUNK, generate, sample
from bptt_jax.app.inference.tagging import format_tags, predict_tags, tag_json
from bptt_jax.app.io.checkpoint import save_checkpoint
from bptt_jax.app.io.corpus import TOKEN_TYPES, Vocab, load_corpus, token_labels
from bptt_jax.app.training.checkpoint_schema import (
    Model,
    load_model,
    read_training_checkpoint,
    training_arrays,
    training_header,
)
from bptt_jax.app.training.config import (
    BIDIRECTIONAL_DEFAULTS,
    TrainConfig,
    TrainingError,
    check_config,
    default_config,
    default_out,
    model_cell,
)
from bptt_jax.app.training.models import init_model, logits_core, param_arrays, params_from_arrays
from bptt_jax.app.training.state import History, TrainState
from bptt_jax.app.training.train_step import make_optimizer
from bptt_jax.core.params import DeepParams, Params
from bptt_jax.referees.tolerances import AUTODIFF, max_relative_error

SOURCE = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n"
CHARS = "".join(sorted(set(SOURCE)))


def _model(task="tag", *, layers=2, bidirectional=False, activation="tanh", scale=3.0, seed=0):
    vocab = Vocab(CHARS)
    C = len(TOKEN_TYPES) if task == "tag" else vocab.size
    config = TrainConfig(task=task, hidden_size=8, num_layers=layers, bidirectional=bidirectional,
                         activation=activation)  # fmt: skip
    params = init_model(config, jax.random.key(seed), vocab.size, C)
    params = jax.tree.map(lambda a: a * scale, params)  # peaked outputs, as once trained
    return Model(params, vocab, task, config, step=0)


def _logits(model, text):
    return np.array(logits_core(model.params, model.vocab.encode(text)[None],
                                  model_cell(model.config))[0])  # fmt: skip


# --------------------------------------------------------------------------- config


def test_old_checkpoints_configuration_reads_as_the_seeds_one_tanh_layer():
    old = TrainConfig().to_json()
    for name in ("num_layers", "activation", "bidirectional"):
        del old[name]
    config = TrainConfig.from_json(old)
    assert (config.num_layers, config.activation, config.bidirectional) == (1, "tanh", False)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(task="lm", bidirectional=True), "--bidirectional is for --task tag only"),
        (dict(num_layers=0), "num_layers must be an integer >= 1"),
        (dict(activation="gelu"), "unknown activation 'gelu'"),
    ],
    ids=["bidirectional_lm", "zero_layers", "activation"],
)
def test_impossible_models_are_refused(fields, message):
    with pytest.raises(TrainingError, match=message):
        check_config(TrainConfig(**fields))


def test_bidirectional_language_model_is_one_line_and_exit_1(capsys, tmp_path):
    assert main(["train", "--bidirectional", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bidirectional is for --task tag only" in err
    assert not (tmp_path / "o").exists()  # refused before anything was read or written


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (2, True)],
                         ids=["seed", "deep", "bidirectional"])  # fmt: skip
def test_model_arrays_round_trip(layers, bidirectional):
    model = _model(layers=layers, bidirectional=bidirectional)
    assert isinstance(model.params, Params if layers == 1 else DeepParams)
    back = params_from_arrays(model.config, param_arrays(model.params))
    assert jax.tree.structure(back) == jax.tree.structure(model.params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _checkpoint(tmp_path, **fields):
    """A checkpoint of a freshly initialised model, as train writes it (no step compiled)."""
    (tmp_path / "src").mkdir(exist_ok=True)
    for i in range(3):
        (tmp_path / "src" / f"m{i}.py").write_text(SOURCE * (i + 1))
    config = TrainConfig(text=(str(tmp_path / "src"),), hidden_size=8, batch_size=2, seq_len=8,
                         steps=5, **fields)  # fmt: skip
    corpus = load_corpus(config.text, task=config.task)
    params = init_model(config, jax.random.key(1), corpus.vocab.size, corpus.num_classes)
    D = 2 if config.bidirectional else 1
    h = jnp.zeros((config.num_layers * D, 2, 8) if config.num_layers * D > 1 else (2, 8))
    state = TrainState(params, make_optimizer(config).init(params), h, jax.random.key(0), 3, 0, 0)
    path = tmp_path / "checkpoint.bptt"
    save_checkpoint(path, training_header(config, corpus, state, History()),
                    training_arrays(config, state))  # fmt: skip
    return path, params


def test_a_bidirectional_checkpoint_is_read_back_whole(tmp_path):
    path, params = _checkpoint(tmp_path, task="tag", num_layers=2, bidirectional=True)
    ckpt = read_training_checkpoint(path)
    assert ckpt.config.bidirectional and ckpt.config.num_layers == 2
    assert ckpt.arrays["h"].shape == (4, 2, 8)
    assert ckpt.arrays["params/layers/1/W"].shape == (8, 16)  # reads both directions below
    for a, b in zip(jax.tree.leaves(ckpt.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("t", [0, 5, 20], ids=lambda t: f"t{t}")
def test_a_left_to_right_tagger_labels_step_t_from_characters_up_to_t(t):
    model = _model()
    other = SOURCE[: t + 1] + "".join(reversed(SOURCE[t + 1 :]))  # same length, other future
    assert other[t + 1 :] != SOURCE[t + 1 :]
    # The same prefix through the same program: at most the table's float32 bound
    # for two evaluations of one quantity (in practice bitwise); a future character
    # leaking in would move the logits by O(1).
    got, want = _logits(model, other)[: t + 1], _logits(model, SOURCE)[: t + 1]
    assert max_relative_error(got, want) <= AUTODIFF["float32"]


def test_the_d_of_def_is_labelled_before_ef_is_read():
    model = _model()
    alone = predict_tags(model, "d")[0]
    assert all(predict_tags(model, "d" + rest)[0] == alone for rest in ("ef f():", "x = 1", "\n"))


def test_a_bidirectional_tagger_reads_ahead():
    model = _model(bidirectional=True)
    other = SOURCE[:1] + "".join(reversed(SOURCE[1:]))
    assert not np.allclose(_logits(model, other)[0], _logits(model, SOURCE)[0], atol=1e-3)


def test_padding_changes_no_tag_of_a_bidirectional_model():
    model = _model(bidirectional=True)
    np.testing.assert_array_equal(predict_tags(model, SOURCE), _logits(model, SOURCE).argmax(-1))


# --------------------------------------------------------------------------- sampling


def _greedy_by_loop(model, prime, length):
    """Greedy decoding of a stacked ReLU language model as a plain NumPy loop."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), model.params)
    h = [np.zeros(8) for _ in p.layers]
    z = p.c.copy()
    out = []

    def read(x):
        below = None
        for l, layer in enumerate(p.layers):
            a = layer.W[:, x] if l == 0 else layer.W @ below
            h[l] = below = np.maximum(layer.U @ h[l] + a + layer.b, 0)
        return p.V @ below + p.c

    for x in model.vocab.encode(prime, strict=True):
        z = read(x)
    for _ in range(length):
        z[model.vocab.unknown] = -np.inf
        out.append(int(np.argmax(z)))
        z = read(out[-1])
    return model.vocab.decode(out)


def _lm():
    """The language model of every sampling test here (one shape: one compilation)."""
    return _model("lm", layers=2, activation="relu", scale=2.0)


def test_a_deep_relu_language_model_samples_by_its_equations():
    model = _lm()
    assert sample(model, "def", 40, temperature=0.0) == _greedy_by_loop(model, "def", 40)


def test_top_p_draws_only_from_the_nucleus():
    model = _lm()
    text = sample(model, "d", 60, temperature=1.0, top_p=0.6, seed=2)
    ids = model.vocab.encode("d" + text)
    z = _logits(model, "d" + text)[:-1]
    z[:, model.vocab.unknown] = -np.inf
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    for t in range(60):  # the drawn one is among the most likely whose mass reaches 0.6
        assert p[t][p[t] > p[t, ids[t + 1]]].sum() < 0.6 + 1e-6
    assert len(set(text)) > 2  # not the greedy sequence
    assert sample(model, "d", 30, top_p=1e-6, seed=3) == sample(model, "d", 30, temperature=0.0)


def test_generate_yields_chunks_that_make_the_sample():
    model = _lm()
    pieces = list(generate(model, "d", 2 * CHUNK + 5, temperature=1.0, top_p=0.6, seed=1))
    assert [len(p) for p in pieces] == [CHUNK, CHUNK, 5]
    assert "".join(pieces) == sample(model, "d", 2 * CHUNK + 5, temperature=1.0, top_p=0.6,
                                     seed=1)  # fmt: skip


# --------------------------------------------------------------------------- tag output


def test_tag_output_has_no_doubled_blank_lines_and_diff_marks_disagreements():
    text = "x = 1\n\n\ny\n"
    truth = token_labels(text)
    tags = truth.copy()
    tags[0] = TOKEN_TYPES.index("keyword")
    plain = format_tags(text, truth, color=False)
    assert plain == "x = 1\nn o d\n\n\ny\nn\n"  # each blank line once
    assert format_tags(text, tags, color=False, truth=truth) == "x = 1\nk o d\n^\n\n\ny\nn\n"
    assert "\033[4;7m" in format_tags(text, tags, color=True, truth=truth)


def test_tag_json_is_one_object_with_the_disagreements():
    text = "x = 1\n"
    truth = token_labels(text)
    tags = truth.copy()
    tags[4] = TOKEN_TYPES.index("name")
    out = json.loads(json.dumps(tag_json("f.py", text, tags, truth)))
    assert out["chars"] == len(text) == len(out["tags"])
    assert out["disagreements"] == [4] and out["accuracy"] == pytest.approx(5 / 6)
    assert out["spans"][0] == [0, 1, "name"]


# --------------------------------------------------------------------------- the CLI


def _run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


def test_tag_and_its_errors_from_the_cli(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path, task="tag", num_layers=2, bidirectional=True)
    src = tmp_path / "src" / "m0.py"
    status, out = _run(["tag", str(path), str(src), "--json"])
    assert status == 0
    assert json.loads(out)["chars"] == len(SOURCE)
    status, out = _run(["tag", str(path), str(src), "--diff", "--color", "never"])
    assert status == 0 and "disagree)" in out
    status, out = _run(["eval", str(path), str(tmp_path / "src"), "--json"])  # reads it too
    model, right, chars = load_model(path), 0, 0
    for f in sorted((tmp_path / "src").iterdir()):
        text = f.read_text()
        right += int(np.sum(predict_tags(model, text) == token_labels(text)))
        chars += len(text)
    assert status == 0 and json.loads(out)["chars"] == chars
    assert json.loads(out)["accuracy"] == pytest.approx(right / chars)
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe\x00")
    for argv, message in (
        (["tag", str(path), str(tmp_path / "missing.py")], "cannot read"),
        (["tag", str(path), str(tmp_path / "bin.py")], "not UTF-8"),
        (["tag", str(path), str(tmp_path)], "is a folder, not a regular file"),
        (["sample", str(path)], "not a language model"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


class _Flushes(io.StringIO):
    def __init__(self):
        super().__init__()
        self.seen = []

    def flush(self):
        self.seen.append(len(self.getvalue()))


def test_sample_streams_each_sample_from_the_zero_state(tmp_path):
    path, _ = _checkpoint(tmp_path, num_layers=2, activation="relu")  # _lm()'s shapes
    out = _Flushes()
    argv = ["sample", str(path), "--length", "70", "--num-samples", "2", "--temperature", "0",
            "--prime", "def"]  # fmt: skip
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    lines = out.getvalue().split("\n")
    assert lines[0] == "--- sample 1 of 2 ---" and "--- sample 2 of 2 ---" in lines
    first, second = lines[1], lines[lines.index("--- sample 2 of 2 ---") + 1]
    assert first == second and len(first) == len("def") + 70  # greedy from zero twice
    assert len(out.seen) >= 2 * 3  # flushed per chunk of characters, as generated


def test_a_bidirectional_tagger_has_its_own_defaults_and_the_flags_win():
    config = default_config({"task": "tag", "bidirectional": True, "steps": 7})
    assert config.steps == 7 and config.bidirectional
    for name, value in BIDIRECTIONAL_DEFAULTS.items():
        if name != "steps":
            assert getattr(config, name) == value != getattr(TrainConfig(), name)
    assert default_config({"task": "tag"}) == TrainConfig(task="tag", out=default_out("tag"))
