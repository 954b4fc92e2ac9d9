"""``resets=`` of shape ``(T,)`` with a batch ``(B, T)``: the same steps of every
sequence, equal (bit for bit) to the explicit ``(B, T)`` broadcast, in every function
that takes ``resets``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import slow_except

import bptt_jax

K, H, B, T = 5, 4, 3, 7
RESETS = jnp.zeros(T, bool).at[jnp.array([2, 5])].set(True)  # (T,)


def _model(kind):
    return bptt_jax.init_params(jax.random.key(0), K, H, num_layers=1 if kind == "seed" else 2,
                                bidirectional=kind == "bidirectional")  # fmt: skip


def _call(fn, params, xs, ys, resets):
    """The function's outputs, and for recurrence / hand_loss also jax.grad through them."""
    if fn == "recurrence":
        out = bptt_jax.recurrence(params, xs, resets=resets)
        grad = jax.grad(lambda p: jnp.sum(jnp.sin(bptt_jax.recurrence(p, xs, resets=resets)[0])))
        return out, grad(params)
    if fn == "hand_loss":
        return jax.value_and_grad(bptt_jax.hand_loss)(params, xs, ys, resets=resets)
    if fn == "forward":
        return bptt_jax.forward(params, xs, resets=resets, return_state=True)
    return getattr(bptt_jax, fn)(params, xs, ys, resets=resets)


FUNCTIONS = ["forward", "loss", "bptt", "bptt_chunk", "recurrence", "hand_loss"]
CASES = [(fn, kind) for fn in FUNCTIONS for kind in ("seed", "bidirectional")]


@pytest.mark.parametrize(
    "case", slow_except(CASES, fast={("bptt", "seed"), ("recurrence", "bidirectional")},
                        ids=[f"{f}-{k}" for f, k in CASES]),
)  # fmt: skip
def test_resets_of_shape_T_equal_the_explicit_broadcast(case):
    fn, kind = case
    params = _model(kind)
    xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
    ys = (xs + 1) % K
    got = _call(fn, params, xs, ys, RESETS)
    expected = _call(fn, params, xs, ys, jnp.broadcast_to(RESETS, (B, T)))
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, e)
    # and the resets matter: without them the result differs
    assert not np.array_equal(
        jax.tree.leaves(got)[0], jax.tree.leaves(_call(fn, params, xs, ys, None))[0]
    )


@pytest.mark.parametrize(
    "resets, match",
    [
        (jnp.zeros(T + 1, bool), r"resets has shape \(8,\), expected \(3, 7\) .* or \(7,\)"),
        (jnp.zeros(T, bool).at[5].set(True), r"resets\[1, 5\] is True on a padded step"),
    ],
    ids=["wrong_T", "padded"],
)
def test_bad_resets_of_shape_T_are_clear_errors(resets, match):
    xs = jnp.zeros((B, T), int)
    with pytest.raises(ValueError, match=match):
        bptt_jax.recurrence(_model("seed"), xs, lengths=jnp.array([T, 4, T]), resets=resets)
