"""Property-based: hand BPTT equals jax.grad for any shape hypothesis draws."""

import jax
from helpers import RTOL, assert_tree_close, make_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bptt_jax


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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
