"""The gated cells in the application: the configuration, the carried state (the LSTM's
``(h, c)``) in the step, the data-parallel step, checkpoints, validation and the
``--verify-every`` referee."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_tree_close

import bptt_jax
from bptt_jax.api.init import init_params
from bptt_jax.app.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bptt_jax.app.io.corpus import load_corpus
from bptt_jax.app.training.checkpoint_schema import (
    read_training_checkpoint,
    restore,
    training_arrays,
    training_header,
)
from bptt_jax.app.training.config import TrainConfig, TrainingError, default_config
from bptt_jax.app.training.models import init_model, zero_state
from bptt_jax.app.training.parallel import data_parallel_bptt_core, make_mesh, shard_batch
from bptt_jax.app.training.state import History, TrainState
from bptt_jax.app.training.train_step import make_optimizer, make_train_step, model_grad_fn
from bptt_jax.app.training.validation import held_out, score
from bptt_jax.app.training.verify import verify_gradients
from bptt_jax.core.cells import cell_named
from bptt_jax.core.options import Options
from bptt_jax.core.params import to_deep

K = 7
SOURCE = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n"


# --------------------------------------------------------------------------- configuration


def test_an_lstm_run_opens_its_forget_gate_by_default():
    assert default_config({"cell": "lstm"}).forget_bias == 1.0
    assert default_config({"cell": "lstm", "forget_bias": 0.0}).forget_bias == 0.0
    assert default_config({"cell": "gru"}).forget_bias == 0.0
    assert default_config({}).cell == "rnn"


def test_an_lstm_run_reads_64_streams_of_32_characters_by_default():
    # the timed default run of docs/training.md: B 64, T 32, lr 0.03, 5200 steps
    c = default_config({"cell": "lstm"})
    assert (c.batch_size, c.seq_len, c.lr, c.steps, c.eval_every) == (64, 32, 0.03, 5200, 0)
    assert default_config({"cell": "lstm", "seq_len": 64}).seq_len == 64  # a flag wins
    assert default_config({"cell": "gru"}).seq_len == default_config({}).seq_len == 64


def test_a_configuration_saved_before_the_cells_reads_as_the_vanilla_cell():
    saved = TrainConfig(activation="relu").to_json()
    del saved["cell"], saved["forget_bias"]
    config = TrainConfig.from_json(saved)
    assert (config.cell, config.forget_bias, config.activation) == ("rnn", 0.0, "relu")


@pytest.mark.parametrize(
    "fields, message",
    [(dict(cell="LSTM"), "unknown cell 'LSTM'; choose one of rnn, lstm, gru"),
     (dict(cell="lstm", forget_bias=float("nan")), "forget_bias must be a finite number"),
     (dict(cell="lstm", forget_bias=True), "forget_bias must be a finite number"),
     (dict(cell="gru", activation="relu"), "the gru cell's nonlinearities are fixed")],
    ids=["unknown", "nan_bias", "bool_bias", "gru_relu"],
)  # fmt: skip
def test_a_forged_configuration_of_a_cell_is_refused(fields, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig.from_json(TrainConfig(**fields).to_json())


# --------------------------------------------------------------------------- the step


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_step_carries_every_part_of_the_state(cell):
    config = TrainConfig(cell=cell, hidden_size=4, batch_size=3, seq_len=5)
    params = init_model(config, jax.random.key(0), K, K)
    tx = optax.sgd(0.1)
    step = make_train_step(tx, model_grad_fn(Options(cell=cell_named(cell))))
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, K, (3, 5)), rng.integers(0, K, (3, 5))
    h0 = jax.tree.map(jnp.asarray, zero_state(config, 3))
    _, _, h, _, finite, _ = step(params, tx.init(params), xs, ys, h0)
    assert bool(finite) and jax.tree.structure(h) == jax.tree.structure(h0)
    h_ref = bptt_jax.forward(params, xs, h0, return_state=True)[-1]  # after the chunk
    assert_tree_close(h, h_ref, rtol=1e-5)


def test_the_data_parallel_step_takes_the_lstms_pair(x64):
    config = TrainConfig(cell="lstm", hidden_size=4, batch_size=4, dtype="float64")
    params = init_model(config, jax.random.key(1), K, K)
    rng = np.random.default_rng(1)
    xs, ys = rng.integers(0, K, (4, 6)), rng.integers(0, K, (4, 6))
    resets = np.zeros((4, 6), bool)
    resets[1, 3] = True
    h0 = jax.tree.map(lambda a: a + 0.3, zero_state(config, 4))
    options = Options(cell=cell_named("lstm"))
    mesh = make_mesh(1)
    got = data_parallel_bptt_core(mesh, options)(
        params, shard_batch(xs, mesh), shard_batch(ys, mesh), shard_batch(h0, mesh),
        shard_batch(resets, mesh))  # fmt: skip
    want = model_grad_fn(options)(params, xs, ys, jax.tree.map(jnp.asarray, h0), resets)
    assert_tree_close(got, want, rtol=1e-12)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(tmp_path, **fields):
    """A checkpoint of a fresh model with a non-zero carried state, as train writes it."""
    (tmp_path / "src").mkdir(exist_ok=True)
    for i in range(3):
        (tmp_path / "src" / f"m{i}.py").write_text(SOURCE * (i + 1))
    config = TrainConfig(text=(str(tmp_path / "src"),), hidden_size=8, batch_size=2, seq_len=8,
                         steps=5, **fields)  # fmt: skip
    corpus = load_corpus(config.text, task=config.task)
    params = init_model(config, jax.random.key(1), corpus.vocab.size, corpus.num_classes)
    parts = jax.tree.leaves(zero_state(config, 2))
    h = jax.tree.unflatten(jax.tree.structure(zero_state(config, 2)),
                           [jnp.full(a.shape, i + 0.5) for i, a in enumerate(parts)])  # fmt: skip
    tx = make_optimizer(config)
    state = TrainState(params, tx.init(params), h, jax.random.key(0), 3, 0, 0)
    path = tmp_path / "checkpoint.bptt"
    save_checkpoint(path, training_header(config, corpus, state, History()),
                    training_arrays(config, state))  # fmt: skip
    return path, config, corpus, tx, state


@pytest.mark.parametrize(
    "fields",
    [dict(cell="lstm", forget_bias=1.0), dict(cell="gru"),
     dict(cell="lstm", task="tag", num_layers=2, bidirectional=True)],
    ids=["lstm", "gru", "lstm_bidirectional"],
)  # fmt: skip
def test_a_checkpoint_round_trip_keeps_the_cell_and_its_state(tmp_path, fields):
    path, config, corpus, tx, state = _checkpoint(tmp_path, **fields)
    ckpt = read_training_checkpoint(path)
    assert ckpt.config == config and ckpt.config.cell == fields["cell"]
    back, _ = restore(ckpt, ckpt.config, corpus, tx)
    assert jax.tree.structure(back.h) == jax.tree.structure(state.h)
    for a, b in zip(jax.tree.leaves((back.h, back.params)),
                    jax.tree.leaves((state.h, state.params)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    if fields["cell"] == "lstm":  # the forget gate's block of b starts at forget_bias
        b = np.asarray(to_deep(ckpt.params).layers[0].b)
        assert np.all(b[8:16] == config.forget_bias) and np.all(b[:8] == 0)


def test_an_lstm_checkpoint_without_its_cell_state_is_refused(tmp_path):
    path, *_ = _checkpoint(tmp_path, cell="lstm")
    header, arrays = load_checkpoint(path)
    del arrays["c"]
    save_checkpoint(path, header, arrays)
    with pytest.raises(CheckpointError, match="the array c is missing"):
        read_training_checkpoint(path)


def test_a_checkpoint_written_before_the_cells_loads_as_the_vanilla_cell(tmp_path, capsys):
    path, *_ = _checkpoint(tmp_path)
    header, arrays = load_checkpoint(path)
    del header["config"]["cell"], header["config"]["forget_bias"]
    save_checkpoint(path, header, arrays)
    model = bptt_jax.load(path)
    assert model.config.cell == "rnn" and model.params.U.shape == (8, 8)
    assert len(model.sample("def", 10, temperature=0)) == 10
    report = json.dumps(model.score(SOURCE).to_json())
    assert "bits_per_char" in report


def test_a_checkpoint_whose_cell_contradicts_its_shapes_is_refused(tmp_path):
    path, *_ = _checkpoint(tmp_path, cell="gru")
    header, arrays = load_checkpoint(path)
    header["config"]["cell"] = "lstm"  # the arrays are the GRU's (3H rows)
    save_checkpoint(path, header, arrays)
    with pytest.raises(CheckpointError, match=r"params/U is float32 \(24, 8\).* lstm"):
        read_training_checkpoint(path)


# --------------------------------------------------------------------------- evaluation, referee


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_score_reads_each_file_alone_from_the_zero_state(cell, x64):
    params = init_params(jax.random.key(3), K, 6, num_layers=2, cell=cell, dtype="float64")
    rng = np.random.default_rng(0)
    lengths = (9, 3, 14, 6, 1, 11)
    ids = rng.integers(0, K, sum(lengths)).astype(np.int32)
    starts = tuple(int(x) for x in np.cumsum((0, *lengths[:-1])))
    held = held_out(ids, None, starts, [str(i) for i in range(6)])
    scores = score(params, held, cell=cell_named(cell), rows=2, segment=4)
    for f, (x, y) in enumerate(zip(held.xs, held.ys, strict=True)):
        assert scores.nll[f] == pytest.approx(float(bptt_jax.loss(params, x, y)), rel=1e-10)


@pytest.mark.parametrize(
    "cell, layers, bidirectional",
    [("lstm", 1, False), ("gru", 1, False),
     pytest.param("lstm", 2, True, marks=pytest.mark.slow),  # compiles deep referees
     pytest.param("gru", 2, False, marks=pytest.mark.slow)],
    ids=["lstm", "gru", "lstm_bidirectional", "gru_stacked"],
)  # fmt: skip
def test_verify_every_checks_a_gated_step_with_its_document_starts(
    cell, layers, bidirectional, x64
):
    params = init_params(jax.random.key(0), K, 4, num_layers=layers,
                         bidirectional=bidirectional, cell=cell, dtype="float64")  # fmt: skip
    params = jax.tree.map(lambda a: 2 * a + 0.1, params)
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, K, (3, 9)), rng.integers(0, K, (3, 9))
    resets = np.zeros((3, 9), bool)
    resets[0, [0, 4]] = resets[1, 6] = True
    D = 2 if bidirectional else 1
    shape = (3, 4) if layers == 1 else (layers * D, 3, 4)
    parts, treedef = jax.tree.flatten(cell_named(cell).zero_state(shape, jnp.float64))
    keys = jax.random.split(jax.random.key(1), len(parts))
    h0 = jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, shape, jnp.float64)
                                      for k in keys])  # fmt: skip
    if bidirectional:  # right-to-left cells start every chunk from zero
        h0 = jax.tree.map(lambda a: a.at[1::2].set(0), h0)
    step = model_grad_fn(Options(cell=cell_named(cell)), bidirectional)
    for r in (resets, None):
        errors = verify_gradients(params, xs, ys, h0, step, resets=r, cell=cell)
        assert max(errors.values()) <= 1e-10

    def wrong(p, x, y, h, r):  # the gradient of the f gate's (or r gate's) rows halved
        E, grads, dh0, h_T = step(p, x, y, h, r)
        grads = jax.tree.map(lambda g: g.at[4:8].multiply(0.5) if g.shape[0] >= 12 else g,
                             grads)  # fmt: skip
        return E, grads, dh0, h_T

    with pytest.raises(TrainingError, match=r"disagrees with jax\.grad"):
        verify_gradients(params, xs, ys, h0, wrong, resets=resets, cell=cell)
