"""Careless or hostile arguments (issue 15): each a one-line error naming what was wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bptt_jax
from bptt_jax import DeepParams, Layer, Params
from bptt_jax.api.arrays import QUADRATIC_CAP_BYTES

K, H = 5, 4


@pytest.fixture
def params():
    return bptt_jax.init_params(jax.random.key(0), K, H)


XS, YS = jnp.array([[0, 1, 2, 3]]), jnp.array([[1, 2, 3, 4]])


def _one_line(excinfo) -> None:
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("key", [0, 7, None, "seed", 1.5])
def test_init_params_refuses_a_seed_for_a_key(key):
    with pytest.raises(TypeError, match=r"JAX PRNG key: pass jax.random.key\(seed\), got"):
        bptt_jax.init_params(key, K, H)


def test_init_params_takes_both_key_kinds():
    typed = bptt_jax.init_params(jax.random.key(3), K, H)
    raw = bptt_jax.init_params(jax.random.PRNGKey(3), K, H)
    assert typed.U.shape == raw.U.shape == (H, H)


@pytest.mark.parametrize("field", Params._fields)
@pytest.mark.parametrize("value", [None, "abc", b"xy"])
def test_params_holding_none_or_a_string_is_refused_by_name(params, field, value):
    with pytest.raises(TypeError, match=rf"params.{field} must be a floating point array") as e:
        bptt_jax.bptt(params._replace(**{field: value}), XS, YS)
    _one_line(e)


def test_deep_params_holding_none_is_refused_by_name():
    deep = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=2)
    bad = deep._replace(layers=(deep.layers[0], deep.layers[1]._replace(b=None)))
    with pytest.raises(TypeError, match=r"layers\[1\].b must be a floating point array, got None"):
        bptt_jax.loss(bad, XS, YS)


def test_a_model_without_hidden_units_is_refused():
    empty = Params(U=jnp.zeros((0, 0)), V=jnp.zeros((K, 0)), W=jnp.zeros((0, K)),
                   b=jnp.zeros(0), c=jnp.zeros(K))  # fmt: skip
    for fn in (bptt_jax.bptt, bptt_jax.loss):
        with pytest.raises(ValueError, match=r"H = 0 hidden units \(U.shape\[1\]\); expected H"):
            fn(empty, XS, YS)
    with pytest.raises(ValueError, match="H = 0 hidden units"):
        bptt_jax.forward(empty, XS)
    deep = DeepParams(layers=(Layer(U=empty.U, W=empty.W, b=empty.b),), reverse_layers=(),
                      V=empty.V, c=empty.c)  # fmt: skip
    with pytest.raises(ValueError, match="H = 0 hidden units"):
        bptt_jax.bptt(deep, XS, YS)


def test_a_model_without_classes_is_refused(params):
    with pytest.raises(ValueError, match=r"C = 0 classes \(V.shape\[0\]\); expected C >= 1"):
        bptt_jax.forward(params._replace(V=jnp.zeros((0, H)), c=jnp.zeros(0)), XS)


@pytest.mark.parametrize("bad", [dict, list, lambda p: "params"])
def test_to_torch_refuses_what_is_not_a_model(params, bad):
    arg = bad(params._asdict()) if bad is dict else bad(params)
    with pytest.raises(TypeError, match=r"params must be a bptt_jax\.Params"):
        bptt_jax.to_torch(arg, as_numpy=True)


def test_train_delay_refuses_an_unknown_remedy_naming_the_remedies():
    with pytest.raises(TypeError, match=r"must be a .*Remedy, got 'magic'; .*REMEDIES\[0\]"):
        bptt_jax.train_delay(jax.random.key(0), remedy="magic")


@pytest.mark.parametrize(
    "delay, error, match",
    [
        (-1, ValueError, "delay must be an integer >= 0, got -1"),
        (6, ValueError, r"delay must be in 0..steps-1 = 0..5, got 6"),
        (np.int64(9), ValueError, "got 9"),
        (1.5, TypeError, "delay must be an integer"),
    ],
)
def test_delay_task_refuses_a_delay_out_of_range(delay, error, match):
    with pytest.raises(error, match=match):
        bptt_jax.delay_task(jax.random.key(0), batch=2, steps=6, delay=delay, vocab_size=3)


@pytest.mark.parametrize("delay", [-1, 6, 100])
def test_delay_task_with_a_device_delay_out_of_range_gives_nan_labels(delay):
    xs, ys = bptt_jax.delay_task(
        jax.random.key(0), batch=2, steps=6, delay=jnp.asarray(delay), vocab_size=3
    )
    assert xs.shape == (2, 6) and bool(jnp.all(jnp.isnan(ys)))
    _, ok = bptt_jax.delay_task(
        jax.random.key(0), batch=2, steps=6, delay=jnp.asarray(5), vocab_size=3
    )
    assert bool(jnp.all(jnp.isfinite(ok)))


@pytest.mark.parametrize("eps", [0, 0.0, -1e-3, float("nan"), float("inf"), True])
def test_finite_differences_refuse_a_bad_step(params, eps):
    with pytest.raises((ValueError, TypeError), match=r"eps must be a finite number > 0"):
        bptt_jax.finite_difference_bptt(params, XS, YS, eps=eps)


@pytest.mark.parametrize("fn", ["bptt", "gradient_flow", "loss"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_soft_labels_on_the_host_are_refused(params, fn, value):
    soft = np.full((1, 4, K), 1 / K)
    soft[0, 2, 1] = value
    with pytest.raises(ValueError, match=r"finite probabilities; the row at index \(0, 2\)") as e:
        getattr(bptt_jax, fn)(params, XS, soft)
    _one_line(e)


@pytest.mark.parametrize("fn", ["gradient_flow", "per_loss_deltas"])
def test_quadratic_diagnostics_refuse_a_huge_sequence_up_front(params, fn):
    T = 100_000
    size = T * T * 1 * H * 4
    assert size > QUADRATIC_CAP_BYTES
    xs = np.zeros((1, T), np.int32)
    with pytest.raises(ValueError, match=rf"{fn} holds .*T = {T}, B = 1, H = {H} .* = 149 GiB"):
        getattr(bptt_jax, fn)(params, xs, xs)
