"""forward and loss against a plain-Python loop of the seed's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_problem, seed_forward_loop, slow_except

import bptt_jax

CASES = {
    "ids": dict(K=7, H=5, T=8),
    "ids_h0": dict(K=7, H=5, T=8, h0=True),
    "ids_C_ne_K": dict(K=7, H=5, C=3, T=6),
    "dense": dict(K=4, H=6, T=5, inputs="dense"),
    "dense_h0": dict(K=4, H=6, T=5, inputs="dense", h0=True),
    "T1": dict(K=3, H=2, T=1),
}


# Cases with and without h0 share a compilation; the fast tier runs ids.
@pytest.mark.parametrize("case", slow_except(CASES, fast=["ids", "ids_h0"]))
def test_forward_and_loss_match_the_seed_loop(case, x64):
    params, xs, ys, h0 = make_problem(**CASES[case])
    hs, z = bptt_jax.forward(params, xs, h0)
    hs_ref, z_ref, E_ref = seed_forward_loop(params, xs, ys, h0)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(z, z_ref, rtol=1e-13, atol=1e-13)
    assert float(bptt_jax.loss(params, xs, ys, h0)) == pytest.approx(E_ref, rel=1e-13)
    assert float(bptt_jax.bptt(params, xs, ys, h0)[0]) == pytest.approx(E_ref, rel=1e-13)


def test_batched_forward_is_each_sequence_forward(x64):
    params, xs, ys, h0 = make_problem(K=6, H=5, B=3, T=7, h0=True)
    hs, z = bptt_jax.forward(params, xs, h0)
    assert hs.shape == (3, 7, 5) and z.shape == (3, 7, 6)
    for i in range(3):
        hs_ref, z_ref, _ = seed_forward_loop(params, xs[i], ys[i], h0[i])
        np.testing.assert_allclose(hs[i], hs_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(z[i], z_ref, rtol=1e-13, atol=1e-13)


def test_loss_is_stable_for_large_logits_in_float32(x64):
    # Logits around ±100: exp overflows float32, so a log of a softmax would
    # give inf or nan; log-sum-exp must not.
    params, xs, ys, h0 = make_problem(K=8, H=6, B=2, T=5, V_scale=80.0, dtype="float32")
    _, z = bptt_jax.forward(params, xs, h0)
    assert float(jnp.max(jnp.abs(z))) > 89.0  # exp(89) > float32 max
    E32 = bptt_jax.loss(params, xs, ys, h0)
    E64 = sum(seed_forward_loop(params, xs[i], ys[i])[2] for i in range(2))
    assert np.isfinite(float(E32))
    assert float(E32) == pytest.approx(E64, rel=1e-5)
    _, grads = bptt_jax.bptt(params, xs, ys, h0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_forward_output_dtype_follows_params(x64):
    params, xs, _, _ = make_problem(K=5, H=4, T=3, dtype="float32")
    hs, z = bptt_jax.forward(params, xs)
    assert hs.dtype == jnp.float32 and z.dtype == jnp.float32
    # Dense float64 inputs are cast to the params' dtype, not mixed in.
    hs, z = bptt_jax.forward(params, jax.nn.one_hot(xs, 5, dtype=jnp.float64))
    assert hs.dtype == jnp.float32 and z.dtype == jnp.float32
