"""Property-based: hand BPTT equals jax.grad for any shape hypothesis draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, make_problem, max_rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bptt_jax


@pytest.mark.slow  # a compilation per drawn shape
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    K=st.integers(1, 12),
    H=st.integers(1, 10),
    C=st.integers(1, 12),
    B=st.one_of(st.none(), st.integers(1, 4)),
    T=st.integers(1, 12),
    inputs=st.sampled_from(["ids", "dense"]),
    h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hand_gradients_match_jax_grad_for_any_shape(K, H, C, B, T, inputs, h0, seed):
    with jax.enable_x64(True):
        params, xs, ys, state = make_problem(
            K=K, H=H, C=C, B=B, T=T, inputs=inputs, h0=h0, seed=seed
        )
        E, grads = bptt_jax.bptt(params, xs, ys, state)
        E_ref, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, state)
        assert abs(float(E) - float(E_ref)) <= RTOL["float64"] * abs(float(E_ref))
        assert_tree_close(grads, grads_ref, rtol=RTOL["float64"])


@pytest.mark.slow  # a compilation per drawn shape
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    L=st.integers(1, 3),
    bidirectional=st.booleans(),
    B=st.integers(1, 3),
    T=st.integers(1, 7),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_deep_hand_gradients_match_jax_grad_for_any_shape_and_lengths(
    L, bidirectional, B, T, data, seed
):
    lengths = jnp.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        params = bptt_jax.init_params(
            jax.random.key(seed), 4, 3, num_classes=5, num_layers=L,
            bidirectional=bidirectional, dtype=jnp.float64,
        )  # fmt: skip
        params = jax.tree.map(lambda a: 2 * a + 0.1 * rng.standard_normal(a.shape), params)
        xs = jnp.asarray(rng.integers(0, 4, (B, T)))
        ys = jnp.asarray(rng.integers(0, 5, (B, T)))
        E, grads = bptt_jax.bptt(params, xs, ys, lengths=lengths)
        E_ref, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, lengths=lengths)
        assert abs(float(E) - float(E_ref)) <= RTOL["float64"] * max(abs(float(E_ref)), 1e-300)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
            assert max_rel_error(a, b) <= RTOL["float64"]
