"""Training with the hand gradients: learning, resume, optimizers, numerical trouble."""

import dataclasses
import json
import math
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_training_bound

from bptt_jax.api.init import init_params
from bptt_jax.app.io.checkpoint import CheckpointError, load_checkpoint
from bptt_jax.app.io.corpus import load_corpus
from bptt_jax.app.training.checkpoint_schema import config_for_resume
from bptt_jax.app.training.config import TrainConfig, TrainingError
from bptt_jax.app.training.loop import train
from bptt_jax.app.training.train_step import make_optimizer, make_train_step
from bptt_jax.app.training.validation import Evaluation
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.params import Params
from bptt_jax.core.step import hand_bptt
from bptt_jax.referees.tolerances import AUTODIFF, max_relative_error

# A handful of standard-library files: the embedded corpus, small enough for seconds.
TINY = dict(max_files=12, batch_size=16, seq_len=32, hidden_size=48, eval_every=0,
            save_every=0, val_chars=8192, schedule="constant", warmup=0)  # fmt: skip


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(max_files=TINY["max_files"])


def _leaves(state):
    return jax.tree.leaves((state.params, state.opt_state, state.h))


def _bitwise_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=False)
        for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.slow  # 250 training steps
def test_training_on_the_stdlib_goes_well_below_the_unigram_entropy(corpus, tmp_path):
    config = TrainConfig(**{**TINY, "eval_every": 250}, steps=250, lr=1e-2, out=str(tmp_path))
    result = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    start = result.history.val[0][1] / math.log(2)  # step 0: the untrained model
    unigram = result.baselines["unigram_bits"]
    assert start > unigram  # the untrained model is worse than counting characters
    assert result.evaluation.bits < 0.75 * unigram, (result.evaluation.bits, unigram)
    assert result.history.nonfinite == 0
    assert (tmp_path / "loss.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    config = TrainConfig(**TINY, steps=12, out=str(tmp_path_factory.mktemp("full")))
    return train(config, corpus=corpus, progress=False, echo=lambda s: None)


@pytest.mark.slow  # two trainings
def test_resume_after_a_stop_is_bitwise_identical(corpus, uninterrupted, tmp_path):
    config = dataclasses.replace(uninterrupted.config, out=str(tmp_path))
    first = train(dataclasses.replace(config, steps=6), corpus=corpus, progress=False,
                  echo=lambda s: None)  # fmt: skip
    assert first.state.step == 6 and not first.interrupted
    assert load_checkpoint(first.checkpoint)[0]["step"] == first.state.step
    assert not _bitwise_equal(first.state, uninterrupted.state)  # not trivially equal
    resumed = train(config, resume=first.checkpoint, corpus=corpus, progress=False,
                    echo=lambda s: None)  # fmt: skip
    assert resumed.state.step == 12 and resumed.state.chunk == uninterrupted.state.chunk
    assert _bitwise_equal(resumed.state, uninterrupted.state)


INTERRUPT_SCRIPT = pathlib.Path(__file__).parents[2] / "scripts" / "interrupt_checks.py"


@pytest.fixture(scope="module")
def interrupted_runs():
    """The Ctrl-C runs, in a subprocess of their own: a signal is never sent to the
    test process (tests/scripts/interrupt_checks.py)."""
    proc = subprocess.run([sys.executable, str(INTERRUPT_SCRIPT)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow  # one subprocess: five trainings
@pytest.mark.parametrize("how", ["sigint_at_5", "sigint_at_5_cosine", "keyboard_interrupt_at_5"])
def test_resume_after_ctrl_c_is_bitwise_identical(interrupted_runs, how):
    run = interrupted_runs[how]
    assert run["interrupted"] and run["signum"] == signal.SIGINT
    assert run["step"] == run["saved_step"] == 5  # the step under way finished, then saved
    assert not run["first_equals_uninterrupted"]  # not trivially equal
    assert run["resumed_step"] == 12 and run["resumed_chunk_is_uninterrupted_chunk"]
    assert run["resumed_equals_uninterrupted"]
    assert interrupted_runs["sigint_handler_restored"]  # train() gives SIGINT back


@pytest.mark.slow  # compiles a training step
def test_sgd_is_the_seeds_update_on_the_hand_gradients(corpus):
    config = TrainConfig(optimizer="sgd", lr=0.5, clip=0.0, schedule="constant", warmup=0)
    tx = make_optimizer(config)
    step = make_train_step(tx)
    params = jax.tree.map(
        jnp.asarray,
        Params(*(np.random.default_rng(i).uniform(-0.3, 0.3, s).astype(np.float32)
                 for i, s in enumerate([(8, 8), (corpus.vocab.size, 8), (8, corpus.vocab.size),
                                        (8,), (corpus.vocab.size,)]))),
    )  # fmt: skip
    xs = jnp.asarray(corpus.train_ids[:60].reshape(3, 20))
    ys = jnp.asarray(corpus.train_ids[1:61].reshape(3, 20))
    h0 = jnp.zeros((3, 8), jnp.float32)
    new, _, h_T, loss, finite, _ = step(params, tx.init(params), xs, ys, h0)
    E, grads, _, h_ref = bptt_core(params, xs, ys, h0)
    expected = jax.tree.map(lambda p, g: p - 0.5 * (g / 60), params, grads)
    # XLA fuses the step's jit differently from bptt_core's own: two float32
    # evaluations of one gradient, loss and forward whose sums may run in other
    # orders, within r = AUTODIFF["float32"] of each other (the table's bound for
    # exactly that). The update then moves by at most 0.5 r max|g/60|, plus one
    # rounding of each subtraction (half an ulp of the result each).
    r = AUTODIFF["float32"]
    assert bool(finite) and float(loss) == pytest.approx(float(E) / 60, rel=r)
    for name in Params._fields:
        a, e, g = (np.asarray(getattr(t, name), np.float64) for t in (new, expected, grads))
        assert not np.array_equal(a, np.asarray(getattr(params, name)))  # it moved
        bound = 0.5 * r * np.max(np.abs(g / 60)) + np.spacing(np.max(np.abs(e)).astype(np.float32))
        assert np.max(np.abs(a - e)) <= bound, name
    assert max_relative_error(h_T, h_ref) <= r


def _nan_gradients(params, xs, ys, h0, resets=None):
    E, grads, dh0, h_T = hand_bptt(params, xs, ys, h0, resets)
    return E, grads._replace(U=grads.U.at[0, 0].set(jnp.nan)), dh0, h_T


@pytest.mark.slow  # each run compiles its own training step
@pytest.mark.parametrize("clip", [0.0, 1.0], ids=["no_clipping", "clipping"])
def test_non_finite_steps_are_skipped_counted_and_stop_training(corpus, tmp_path, clip):
    config = TrainConfig(**TINY, steps=50, clip=clip, out=str(tmp_path))
    with pytest.raises(TrainingError) as exc:
        train(config, corpus=corpus, progress=False, grad_fn=_nan_gradients)
    msg = str(exc.value)
    assert "5 steps in a row" in msg and "not applied" in msg
    assert ("no clipping" in msg) == (clip == 0) and ("--lr" in msg) == (clip > 0)
    header, arrays = load_checkpoint(tmp_path / "checkpoint.bptt")
    assert header["history"]["nonfinite"] >= 5 and header["step"] < 50
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
    # No step was applied: the parameters are still the initial ones (train's key use).
    _, init_key = jax.random.split(jax.random.key(config.seed))
    init = init_params(init_key, corpus.vocab.size, config.hidden_size)
    for name in Params._fields:
        np.testing.assert_array_equal(arrays[f"params/{name}"], getattr(init, name))


def _wrong_dU(params, xs, ys, h0, resets=None):
    E, grads, dh0, h_T = hand_bptt(params, xs, ys, h0, resets)
    return E, grads._replace(U=0.5 * grads.U), dh0, h_T


@pytest.mark.slow  # a training of its own
def test_verify_every_stops_on_wrong_gradients(corpus, tmp_path):
    config = TrainConfig(**TINY, steps=10, verify_every=3, out=str(tmp_path))
    with pytest.raises(TrainingError, match=r"disagrees with jax.grad.*U rel. error 5\.0+e-01"):
        train(config, corpus=corpus, progress=False, grad_fn=_wrong_dU)


@pytest.mark.slow  # a training of its own
def test_verify_every_passes_on_the_hand_gradients(corpus, tmp_path):
    config = TrainConfig(**TINY, steps=10, verify_every=4, out=str(tmp_path))
    result = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    assert result.history.verified == 3  # steps 0, 4 and 8
    assert result.history.verify_error <= AUTODIFF["float32"]  # the table's bound
    assert "hand gradients = jax.grad in 3 checks" in result.summary()


def test_perplexity_of_a_diverged_model_is_infinite_not_an_error():
    assert Evaluation(loss=1e4).perplexity == math.inf
    assert Evaluation(loss=math.log(4.0)).perplexity == pytest.approx(4.0)


@pytest.mark.slow  # 300 training steps on a larger corpus
def test_tagging_beats_both_baselines(tmp_path):
    corpus = load_corpus(task="tag", max_files=30)
    config = TrainConfig(**{**TINY, "max_files": 30}, task="tag", steps=300, lr=1e-2,
                         out=str(tmp_path))  # fmt: skip
    result = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    ev, base = result.evaluation, result.baselines
    assert ev.accuracy > base["char_unigram"] > base["majority"]
    assert sum(ev.counts.values()) >= 4096  # the accuracy is over enough characters
    assert ev.per_class["name"] > 0.5 and ev.per_class["whitespace"] > 0.5


@pytest.mark.parametrize(
    "given", [{"hidden_size": 64}, {"task": "tag"}, {"text": ("a.txt",)}],
    ids=["hidden_size", "task", "text"],
)  # fmt: skip
def test_resume_refuses_a_different_model_or_data(given):
    saved = TrainConfig(hidden_size=48).to_json()
    with pytest.raises(CheckpointError, match="the checkpoint was trained with"):
        config_for_resume(saved, given)


def test_resume_may_extend_steps_and_move_out():
    config = config_for_resume(TrainConfig(hidden_size=48).to_json(),
                               {"steps": 99, "out": "x", "hidden_size": 48})  # fmt: skip
    assert (config.steps, config.out, config.hidden_size) == (99, "x", 48)


def test_the_training_step_uses_no_autodiff():
    # jax.grad is the --verify-every referee only; the step itself is hand BPTT.
    import ast
    import inspect

    from bptt_jax.app.training import train_step as _train_step

    tree = ast.parse(inspect.getsource(_train_step.make_train_step))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "hand_bptt" in names  # the check sees the names the step uses
    autodiff = {"grad", "value_and_grad", "vjp", "jvp", "linearize", "autodiff_bptt"}
    assert not names & autodiff


@pytest.mark.slow  # compiles a bf16 training step and its referee
def test_bf16_products_train_and_verify_at_bf16_tolerance(corpus, uninterrupted, tmp_path):
    # --matmul-dtype bfloat16: the step runs bptt_core with bf16 products, the
    # --verify-every referee allows 4 bf16 ulps, and the run tracks float32's.
    config = TrainConfig(**TINY, steps=12, verify_every=4, matmul_dtype="bfloat16",
                         out=str(tmp_path))  # fmt: skip
    result = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    assert result.history.verified == 3 and result.history.nonfinite == 0
    assert AUTODIFF["float32"] < result.history.verify_error <= AUTODIFF["bfloat16"]
    assert "bfloat16 products" in result.summary()
    assert all(p.dtype == jnp.float32 for p in result.state.params)  # master weights
    # The first step's loss: the same parameters and batch, only the products'
    # operands rounded to bf16, within the table's bf16 bound (4 bf16 ulps) of
    # float32's. Later steps are not compared with float32's one by one: Adam
    # divides each entry by about |g|, so an entry whose gradient is round-off moves
    # by O(lr) in either run (helpers.linear_training_bound), and bf16's round-off
    # is 2**-8. The bf16 run must train as float32's does: its loss falls.
    losses = np.array([loss for _, loss, _ in result.history.train])
    losses32 = np.array([loss for _, loss, _ in uninterrupted.history.train])
    assert losses.shape == losses32.shape == (12,)
    assert abs(losses[0] - losses32[0]) <= AUTODIFF["bfloat16"] * losses32[0]
    assert losses[-4:].mean() < losses[:4].mean() and losses32[-4:].mean() < losses32[:4].mean()
    assert load_checkpoint(tmp_path / "checkpoint.bptt")[0]["config"]["matmul_dtype"] == "bfloat16"


@pytest.mark.slow  # compiles a recompute training step
def test_recompute_trains_like_storing_every_state(corpus, tmp_path):
    # With momentum, linear in the gradients (with Adam an entry whose gradient is
    # round-off moves by O(lr) either way): recompute's gradient is the stored
    # states' up to the order of its sums, so 12 steps stay within
    # helpers.linear_training_bound of each other.
    config = TrainConfig(**TINY, steps=12, optimizer="momentum", out=str(tmp_path / "stored"))
    stored = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    config = dataclasses.replace(config, recompute=True, out=str(tmp_path / "recompute"))
    result = train(config, corpus=corpus, progress=False, echo=lambda s: None)
    bound = linear_training_bound("float32", 12)
    for a, b in zip(_leaves(result.state), _leaves(stored.state), strict=True):
        assert max_relative_error(a, b) <= bound


def test_resume_refuses_other_products():
    with pytest.raises(CheckpointError, match="--matmul-dtype"):
        config_for_resume(TrainConfig().to_json(), {"matmul_dtype": "bfloat16"})


def test_unknown_matmul_dtype_is_a_clear_error(corpus, tmp_path):
    config = TrainConfig(**TINY, steps=1, matmul_dtype="float16", out=str(tmp_path))
    with pytest.raises(TrainingError, match="unknown matmul dtype 'float16'; choose bfloat16"):
        train(config, corpus=corpus, progress=False, echo=lambda s: None)
