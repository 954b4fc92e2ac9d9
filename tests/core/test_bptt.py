"""The hand gradients against jax.grad (every shape, both dtypes) and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    FD_RTOL,
    RTOL,
    assert_tree_close,
    loss_value_and_grad,
    make_problem,
    slow_except,
)

import bptt_jax

# name -> make_problem kwargs. Covers T = 1, B = 1, one sequence vs a batch,
# H > K and H < K, C != K, non-zero h0, ids and dense inputs, large logits.
CASES = {
    "T1_single": dict(K=5, H=4, T=1),
    "T1_batch": dict(K=5, H=4, B=3, T=1),
    "B1_batch": dict(K=6, H=5, B=1, T=8),
    "single_sequence": dict(K=7, H=6, T=9),
    "batch": dict(K=7, H=6, B=4, T=7),
    "H_gt_K": dict(K=3, H=12, B=2, T=6),
    "H_lt_K": dict(K=40, H=4, B=2, T=6),
    "C_ne_K": dict(K=9, H=5, C=3, B=3, T=5),
    "C_gt_K": dict(K=3, H=5, C=11, T=7),
    "h0_single": dict(K=6, H=5, T=6, h0=True),
    "h0_batch": dict(K=6, H=5, B=3, T=6, h0=True),
    "dense_single": dict(K=6, H=5, T=7, inputs="dense"),
    "dense_batch_h0_C": dict(K=6, H=5, C=4, B=3, T=5, inputs="dense", h0=True),
    "long_T": dict(K=8, H=6, B=2, T=60, h0=True),
    "large_logits": dict(K=10, H=8, B=2, T=6, V_scale=40.0),
}
# Each shape is a compilation of its own (the hand BPTT and its referee): the
# fast tier runs one batch with h0, whose shape most tests below share, and
# .ci/run every case.
FAST_CASES = ("h0_batch",)


@pytest.mark.parametrize("case", slow_except(CASES, fast=FAST_CASES))
def test_hand_gradients_match_jax_grad(case, dtype):
    params, xs, ys, h0 = make_problem(**CASES[case], dtype=dtype)
    E, grads = bptt_jax.bptt(params, xs, ys, h0)
    E_ref, grads_ref = loss_value_and_grad(params, xs, ys, h0)
    assert E.dtype == jnp.dtype(dtype) and E.shape == ()
    assert abs(float(E) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
    assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])


def test_large_logits_case_really_has_large_logits(x64):
    params, xs, _, h0 = make_problem(**CASES["large_logits"])
    _, z = bptt_jax.forward(params, xs, h0)
    assert 40.0 <= float(jnp.max(jnp.abs(z))) <= 200.0


@pytest.mark.parametrize(
    "case",
    slow_except(
        ["single_sequence", "h0_batch", "C_ne_K", "dense_batch_h0_C", "H_lt_K"],
        fast=["h0_batch"],
    ),
)
def test_hand_gradients_match_finite_differences(case, x64):
    params, xs, ys, h0 = make_problem(**CASES[case], seed=1)
    E, grads = bptt_jax.bptt(params, xs, ys, h0)
    E_fd, grads_fd = bptt_jax.finite_difference_bptt(params, xs, ys, h0)
    assert float(E) == pytest.approx(float(E_fd), rel=1e-14)
    assert_tree_close(grads, grads_fd, rtol=FD_RTOL)


@pytest.mark.slow  # compiles the referee eagerly
def test_autodiff_reference_is_jax_grad_of_loss(x64):
    params, xs, ys, h0 = make_problem(**CASES["h0_batch"])
    E, grads = bptt_jax.autodiff_bptt(params, xs, ys, h0)
    E_ref, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, h0)
    assert float(E) == float(E_ref)
    assert_tree_close(grads, grads_ref, rtol=0.0)


@pytest.mark.slow  # a shape of its own
def test_gradient_w_scatter_adds_repeated_ids_and_leaves_unseen_columns_zero(x64):
    params, _, ys, _ = make_problem(K=6, H=4, T=5)
    xs = jnp.array([2, 4, 2, 2, 4])  # ids 0, 1, 3, 5 never occur
    _, grads = bptt_jax.bptt(params, xs, ys)
    dW = np.asarray(grads.W)
    assert np.all(dW[:, [0, 1, 3, 5]] == 0.0)
    assert np.all(np.abs(dW[:, [2, 4]]).sum(axis=0) > 0)
    _, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys)
    assert_tree_close(grads, grads_ref, rtol=RTOL["float64"])


def test_ids_and_one_hot_inputs_give_the_same_loss_and_gradients(x64):
    params, xs, ys, h0 = make_problem(**CASES["h0_batch"])  # its compilation, shared
    one_hot = jax.nn.one_hot(xs, CASES["h0_batch"]["K"], dtype=jnp.float64)
    E_ids, g_ids = bptt_jax.bptt(params, xs, ys, h0)
    E_vec, g_vec = bptt_jax.bptt(params, one_hot, ys, h0)
    assert float(E_ids) == pytest.approx(float(E_vec), rel=1e-14)
    assert_tree_close(g_ids, g_vec, rtol=1e-14)


def test_batch_is_the_sum_of_its_sequences(x64):
    params, xs, ys, h0 = make_problem(**CASES["h0_batch"])
    E, grads = bptt_jax.bptt(params, xs, ys, h0)
    singles = [bptt_jax.bptt(params, xs[i], ys[i], h0[i]) for i in range(3)]
    assert float(E) == pytest.approx(sum(float(e) for e, _ in singles), rel=1e-13)
    summed = jax.tree.map(lambda *g: sum(g), *[g for _, g in singles])
    assert_tree_close(grads, summed, rtol=1e-13)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5)], ids=["T0_single", "T0_batch", "B0"])
def test_empty_sequence_gives_zero_loss_and_zero_gradients(shape, x64):
    params, _, _, _ = make_problem(K=5, H=4, T=1)
    xs = jnp.zeros(shape, jnp.int32)
    E, grads = bptt_jax.bptt(params, xs, xs)
    assert float(E) == 0.0
    for g, p in zip(grads, params, strict=True):
        assert g.shape == p.shape
        assert not np.any(np.asarray(g))
    assert float(bptt_jax.loss(params, xs, xs)) == 0.0
    hs, z = bptt_jax.forward(params, xs)
    assert hs.shape == (*shape, 4) and z.shape == (*shape, 5)


def test_gradients_are_a_params_pytree_that_optax_applies(x64):
    import optax

    params, xs, ys, _ = make_problem(**CASES["h0_batch"])  # its compilation, shared
    _, grads = bptt_jax.bptt(params, xs, ys)
    assert isinstance(grads, bptt_jax.Params)
    opt = optax.sgd(0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert isinstance(new, bptt_jax.Params)
    # The seed's update V := V - λ ∂E/∂V, for every parameter.
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert_tree_close(new, expected, rtol=1e-15)


@pytest.mark.slow  # compiles bptt_core and jax.grad with respect to h0
def test_core_returns_dh0_and_final_state_for_chunked_streams(x64):
    from bptt_jax.core.bptt import bptt_core

    params, xs, ys, h0 = make_problem(K=6, H=5, B=3, T=7, h0=True)
    _, _, dh0, h_T = bptt_core(params, xs, ys, h0)
    hs, _ = bptt_jax.forward(params, xs, h0)
    np.testing.assert_array_equal(h_T, hs[:, -1])
    dh0_ref = jax.grad(bptt_jax.loss, argnums=3)(params, xs, ys, h0)
    assert_tree_close(dh0, dh0_ref, rtol=RTOL["float64"])
