"""Issue 14: documents start from zero in training, validation scores all held-out text
file by file from zero, learning-rate schedules."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_tree_close, slow_except

import bptt_jax
from bptt_jax.api.init import init_params
from bptt_jax.app.io.streams import Streams
from bptt_jax.app.training.config import (
    LEGACY,
    TrainConfig,
    TrainingError,
    check_config,
    learning_rate,
)
from bptt_jax.app.training.train_step import make_train_step, model_grad_fn
from bptt_jax.app.training.validation import evaluation, held_out, score
from bptt_jax.app.training.verify import verify_gradients
from bptt_jax.core.options import Options
from bptt_jax.core.step import hand_bptt

K = 7


def test_streams_reset_exactly_where_a_file_starts():
    ids = np.arange(40, dtype=np.int32) % K
    starts = (0, 7, 13, 31)  # files [0, 7), [7, 13), [13, 31), [31, 40)
    s = Streams(ids, None, batch_size=2, seq_len=5, starts=starts)  # rows [0, 20), [20, 40)
    where = {(int(b), k * 5 + int(t)) for k in range(s.num_chunks)
             for b, t in np.argwhere(s.resets(k))}  # fmt: skip
    assert where == {(0, 0), (0, 7), (0, 13), (1, 11)}  # 31 = 20 + 11; 13 + 20 = 33 > 19
    assert s.resets(1).shape == (2, 5) and s.resets(1)[0, 2]  # 7 = chunk 1, step 2


@pytest.mark.slow  # compiles a training step in float64; tests/core/test_step.py is the fast one
def test_the_training_step_with_resets_equals_the_segments_alone(x64):
    # SGD with lr 1 and no clipping: θ' = θ − ∇E/n, ∇E the sum over the segments,
    # the first from the carried state, the next ones from zero.
    params = init_params(jax.random.key(0), K, 5, dtype="float64")
    ids = np.asarray(jax.random.randint(jax.random.key(1), (41,), 0, K), np.int32)
    s = Streams(ids, None, batch_size=2, seq_len=8, starts=(0, 5, 26))  # row 1: 26 = 20 + 6
    xs, ys, resets = *s.chunk(0), s.resets(0)
    h0 = 0.3 * jax.random.normal(jax.random.key(2), (2, 5), jnp.float64)
    step = make_train_step(optax.sgd(1.0))
    new, _, _, loss, finite, gnorm = step(params, optax.sgd(1.0).init(params), xs, ys, h0,
                                           resets)  # fmt: skip
    E, grads = 0.0, jax.tree.map(jnp.zeros_like, params)
    assert [tuple(np.nonzero(r)[0]) for r in resets] == [(0, 5), (6,)]
    for b in range(2):
        for a, e in itertools.pairwise(sorted({0, *np.nonzero(resets[b])[0], 8})):
            start = jnp.zeros(5, jnp.float64) if resets[b, a] else h0[b]  # row 0 starts a file
            E_s, g_s = bptt_jax.bptt(params, xs[b, a:e], ys[b, a:e], start)
            E, grads = E + E_s, jax.tree.map(jnp.add, grads, g_s)
    assert bool(finite) and float(loss) == pytest.approx(float(E) / 16, rel=1e-12)
    want = jax.tree.map(lambda p, g: p - g / 16, params, grads)
    assert_tree_close(new, want, rtol=1e-10)
    assert float(gnorm) == pytest.approx(float(optax.tree.norm(grads)) / 16, rel=1e-10)


def test_held_out_is_whole_files_with_their_own_targets_and_an_explicit_cap():
    ids = np.arange(20, dtype=np.int32)
    held = held_out(ids, None, (0, 4, 5, 12), ("a", "b", "c", "d"))
    # lm: a file of n characters has n - 1 targets; "b" (1 character) has none.
    assert held.names == ("a", "c", "d") and held.chars == 3 + 6 + 7 and not held.capped
    np.testing.assert_array_equal(held.xs[1], np.arange(5, 11))
    np.testing.assert_array_equal(held.ys[1], np.arange(6, 12))
    capped = held_out(ids, None, (0, 4, 5, 12), ("a", "b", "c", "d"), max_chars=5)
    assert capped.chars == 5 and capped.total == 16 and capped.capped
    assert "capped by --val-chars" in capped.describe() and len(capped.ys[1]) == 2
    tag = held_out(ids, ids % 3, (0, 4), ("a", "b"))
    assert tag.chars == 20 and [len(y) for y in tag.ys] == [4, 16]


@pytest.mark.parametrize("kind", ["seed", "stacked"])
def test_score_is_each_file_alone_from_zero(kind, x64):
    # Rows 2, segments of 4: files span several calls and rows refill mid-way.
    L = 1 if kind == "seed" else 2
    params = init_params(jax.random.key(3), K, 6, num_layers=L, dtype="float64")
    rng = np.random.default_rng(0)
    lengths = (9, 3, 14, 6, 1, 11)
    ids = rng.integers(0, K, sum(lengths)).astype(np.int32)
    starts = tuple(int(x) for x in np.cumsum((0, *lengths[:-1])))
    held = held_out(ids, None, starts, [str(i) for i in range(6)])
    scores = score(params, held, num_classes=K, rows=2, segment=4)
    for f, (x, y) in enumerate(zip(held.xs, held.ys, strict=True)):
        alone = bptt_jax.loss(params, x, y)
        assert scores.nll[f] == pytest.approx(float(alone), rel=1e-10)
    assert scores.confusion.sum() == held.chars
    logits = [bptt_jax.forward(params, x)[1] for x in held.xs]
    right = sum(
        int(np.sum(np.asarray(z).argmax(-1) == y)) for z, y in zip(logits, held.ys, strict=True)
    )
    assert np.trace(scores.confusion) == right
    ev = evaluation(scores, "lm")
    assert ev.chars == held.chars and len(ev.file_bits) == 5
    assert ev.loss == pytest.approx(scores.nll.sum() / held.chars)


def test_learning_rate_schedules_warm_up_then_decay():
    c = TrainConfig(lr=0.01, steps=100, warmup=10, schedule="cosine")
    lr = learning_rate(c)
    assert float(lr(0)) == 0 and float(lr(5)) == pytest.approx(0.005)
    assert float(lr(10)) == pytest.approx(0.01) and float(lr(100)) == pytest.approx(0, abs=1e-9)
    assert float(lr(55)) == pytest.approx(0.005, rel=1e-5)  # half-way down the cosine
    linear = learning_rate(TrainConfig(lr=0.01, steps=100, warmup=0, schedule="linear"))
    assert float(linear(25)) == pytest.approx(0.0075)
    constant = learning_rate(TrainConfig(lr=0.01, steps=100, warmup=0, schedule="constant"))
    assert float(constant(99)) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "given, message",
    [({"warmup": 101}, "warmup must be at most steps"),
     ({"schedule": "step"}, "unknown schedule")],
    ids=["warmup_above_steps", "unknown_schedule"],
)  # fmt: skip
def test_bad_schedules_are_refused(given, message):
    with pytest.raises(TrainingError, match=message):
        check_config(TrainConfig(steps=100, **given))


def test_a_configuration_saved_before_schedules_reads_as_a_constant_rate():
    saved = TrainConfig().to_json()
    for name in LEGACY:
        del saved[name]
    config = TrainConfig.from_json(saved)
    assert (config.schedule, config.warmup) == ("constant", 0)
    assert math.isclose(float(learning_rate(config)(1234)), config.lr)


@pytest.mark.parametrize("kind", slow_except(["seed", "stacked", "bidirectional"], fast={"seed"}))
def test_verify_every_checks_the_step_with_its_document_starts(kind, x64):
    # --verify-every passes the chunk's resets to both sides: the referee is jax.grad
    # of the chunk's loss written from the public loss (each row cut at its first
    # reset), so a step that ignored the resets is caught. Row 0: a document starts
    # at step 0 and at 4; row 1 at 6; row 2 none.
    L, bi = {"seed": (1, False), "stacked": (2, False), "bidirectional": (2, True)}[kind]
    params = init_params(jax.random.key(0), K, 4, num_layers=L, bidirectional=bi,
                         dtype="float64")  # fmt: skip
    params = jax.tree.map(lambda a: 2 * a + 0.1, params)
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, K, (3, 9)), rng.integers(0, K, (3, 9))
    resets = np.zeros((3, 9), bool)
    resets[0, [0, 4]] = resets[1, 6] = True
    shape = (3, 4) if kind == "seed" else (2 * (2 if bi else 1), 3, 4)
    h0 = 0.5 * jax.random.normal(jax.random.key(1), shape, jnp.float64)
    if bi:
        h0 = h0.at[1::2].set(0)  # right-to-left cells start every chunk from zero
    step = None if kind == "seed" else model_grad_fn(Options(), bi)
    errors = verify_gradients(params, xs, ys, h0, step, resets=resets)
    assert max(errors.values()) <= 1e-10

    def ignores_resets(p, x, y, h, r):
        return hand_bptt(p, x, y, h, None)

    with pytest.raises(TrainingError, match=r"disagrees with jax\.grad"):
        verify_gradients(params, xs, ys, h0, ignores_resets, resets=resets)
