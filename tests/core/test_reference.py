"""The fast paths against the core's reference BPTT (``bptt_jax/core/reference.py``), the
derivation written top to bottom: same loss, gradients, ∂E/∂h_0 and h_T to round-off."""

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, assert_tree_close, make_problem

import bptt_jax
from bptt_jax.core.cell import RNNCell
from bptt_jax.core.options import Options
from bptt_jax.core.reference import reference_bptt

PROBLEM = dict(K=5, H=4, B=3, T=9, h0=True)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("inputs", ["ids", "dense"])
def test_bptt_chunk_equals_the_reference(activation, inputs, x64):
    params, xs, ys, h0 = make_problem(**PROBLEM, inputs=inputs)
    want = reference_bptt(params, xs, ys, h0, options=Options(cell=RNNCell(activation)))
    # chunk=2: four full chunks and a short first one, so the chunking is exercised
    got = bptt_jax.bptt_chunk(params, xs, ys, h0, activation=activation, chunk=2)
    assert_tree_close(got, want, rtol=RTOL["float64"])


@pytest.mark.parametrize("kind", ["recurrence", "deep"])
def test_other_drivers_equal_the_reference(kind, x64):
    # The composable recurrence (hand_loss's general path, soft labels) and the deep
    # backward (a mask of all-real steps sends the seed's Params there).
    params, xs, ys, h0 = make_problem(**PROBLEM)
    E, grads, _, _ = reference_bptt(params, xs, ys, h0)
    if kind == "recurrence":
        soft = jnp.eye(5, dtype=jnp.float64)[ys]  # one-hot rows: the same loss
        got_E, got = (
            bptt_jax.loss(params, xs, soft, h0),
            jax.grad(bptt_jax.hand_loss)(params, xs, soft, h0),
        )
    else:
        mask = jnp.ones(xs.shape, bool)
        got_E, got = bptt_jax.bptt(params, xs, ys, h0, mask=mask)
    assert_tree_close((got_E, got), (E, grads), rtol=RTOL["float64"])
