"""The delay task and its tiny training loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_valid_png, make_problem

import bptt_jax
from bptt_jax import delay_task, train_delay
from bptt_jax.app.measure.plots import plot_delay, plot_delay_grad_norm
from bptt_jax.lab.tasks import REMEDIES, Remedy


@pytest.mark.parametrize("delay", [0, 1, 4, 5])  # delay = steps is refused: test_misuse
def test_delay_task_labels_are_the_input_d_steps_back(delay):
    xs, ys = delay_task(jax.random.key(delay), batch=3, steps=6, delay=delay, vocab_size=5)
    xs, ys = np.asarray(xs), np.asarray(ys)
    assert xs.shape == (3, 6) and ys.shape == (3, 6, 5) and ys.dtype == np.float32
    # 5 entries, each rounded once to float32 (1/5 before the delay), and 4 additions
    # of partial sums <= 1: at most 9 unit roundoffs (2**-24 each) from 1.
    np.testing.assert_allclose(ys.sum(-1), 1, rtol=9 * 2.0**-24)
    for t in range(6):  # 0-based step t: label x_{t-d}, uniform before
        if t >= delay:
            np.testing.assert_array_equal(ys[:, t], np.eye(5, dtype=np.float32)[xs[:, t - delay]])
        else:
            np.testing.assert_array_equal(ys[:, t], np.full((3, 5), 0.2, np.float32))


def test_uniform_label_steps_cost_log_K_and_give_no_gradient_to_V_at_uniform_output(x64):
    # With V = 0, c = 0 the prediction is uniform; the unlabelled steps (t ≤ d)
    # then contribute exactly log K to E and nothing to any gradient.
    params, _, _, _ = make_problem(K=4, H=3, T=5)
    params = params._replace(V=jnp.zeros_like(params.V), c=jnp.zeros_like(params.c))
    xs, ys = delay_task(jax.random.key(0), batch=1, steps=5, delay=5 - 1, vocab_size=4,
                        dtype=jnp.float64)  # fmt: skip
    E, grads = bptt_jax.bptt(params, xs[:, :4], ys[:, :4])  # only unlabelled steps
    assert float(E) == pytest.approx(4 * np.log(4), rel=1e-12)
    assert all(not np.any(np.abs(np.asarray(g)) > 1e-15) for g in grads)


@pytest.fixture(scope="module")
def curves():
    # The same static configuration as tests/test_plots.py: one compilation for both.
    return train_delay(jax.random.key(0), (1, 3), REMEDIES[1], iterations=20)


@pytest.mark.slow  # trains on the delay task (curves)
def test_train_delay_learns_a_short_delay(curves):
    assert curves.loss.shape == curves.accuracy.shape == curves.grad_norm.shape == (2, 20)
    assert np.all(np.isfinite(curves.loss)) and np.all(curves.grad_norm > 0)
    assert np.mean(curves.loss[0, -5:]) < 0.5 * np.mean(curves.loss[0, :5])
    assert np.mean(curves.accuracy[0, -5:]) > 0.6  # chance is 1/4
    # The share of the gradient reaching back d steps at init shrinks with d.
    assert 0 < curves.signal[1] < curves.signal[0] < 1


@pytest.mark.slow  # trains on the delay task (curves)
def test_delay_plots_are_valid_pngs(curves, tmp_path):
    assert_valid_png(plot_delay([curves, curves], tmp_path / "acc.png", vocab_size=4))
    assert_valid_png(plot_delay_grad_norm([curves], tmp_path / "norm.png"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [(dict(delays=(0, 30)), ValueError, r"delays must be in 0..steps-1 = 0..29"),
     (dict(delays=()), ValueError, "delays must be"),
     (dict(remedy=Remedy("x", init="he")), ValueError, "unknown init 'he'"),
     (dict(remedy=Remedy("x", clip="norm")), ValueError, "unknown clipping 'norm'"),
     (dict(remedy=Remedy("x", clip_delta=0.0)), ValueError, "clip_delta must be"),
     (dict(remedy=Remedy("x", activation="gelu")), ValueError, "unknown activation 'gelu'")],
    ids=["delay_too_long", "no_delays", "unknown_init", "unknown_clip", "clip_delta_0",
         "unknown_activation"],
)  # fmt: skip
def test_train_delay_rejects_bad_configurations(kwargs, error, match):
    with pytest.raises(error, match=match):
        train_delay(jax.random.key(0), **kwargs)
