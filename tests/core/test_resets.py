"""Per-step resets (issue 13, item 2): each segment runs as if it were alone.

``resets[b, t]``: the state entering step t is h0 and no gradient flows from step t
into step t - 1. Checked against running each segment alone and summing, and (in
tests/test_one_backward.py) against jax.grad of bptt_jax.loss with the same resets.
"""

import itertools

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_tree_close, slow_except
from test_backward import deep_params

import bptt_jax

T, K, C = 7, 5, 6
CUTS = (3, 5)  # segments [0, 3), [3, 5), [5, 7)


def model(kind):
    if kind == "seed":
        return bptt_jax.init_params(jax.random.key(0), K, 4, dtype="float64")._replace(
            V=0.5 * jax.random.normal(jax.random.key(1), (K, 4))
        )
    return deep_params(2, kind == "bidirectional", "float64")


def labels(kind, xs):
    return (xs + 1) % (K if kind == "seed" else C)


@pytest.mark.parametrize(
    "kind", slow_except(["seed", "stacked", "bidirectional"], fast={"stacked"})
)
def test_resets_equal_the_sum_of_the_segments(kind, x64):
    params = model(kind)
    xs = jax.random.randint(jax.random.key(2), (T,), 0, K)
    ys = labels(kind, xs)
    resets = jnp.zeros(T, bool).at[jnp.array(CUTS)].set(True)
    E, grads = bptt_jax.bptt(params, xs, ys, resets=resets, chunk=2)
    bounds = (0, *CUTS, T)
    parts = [bptt_jax.bptt(params, xs[a:b], ys[a:b]) for a, b in itertools.pairwise(bounds)]
    expected = (sum(p[0] for p in parts), jax.tree.map(lambda *g: sum(g), *[p[1] for p in parts]))
    assert_tree_close((E, grads), expected, rtol=1e-10)
    hs, _ = bptt_jax.forward(params, xs, resets=resets)
    alone = jnp.concatenate([bptt_jax.forward(params, xs[a:b])[0]
                             for a, b in itertools.pairwise(bounds)])  # fmt: skip
    assert_tree_close(hs, alone, rtol=1e-12)


@pytest.mark.parametrize("kind", slow_except(["seed", "bidirectional"], fast={"seed"}))
def test_padding_invariance_holds_with_resets(kind, x64):
    params = model(kind)
    xs = jax.random.randint(jax.random.key(3), (1, T), 0, K)
    ys = labels(kind, xs)
    resets = jnp.zeros((1, T), bool).at[0, 2].set(True)
    real = bptt_jax.bptt(params, xs[:, :5], ys[:, :5], resets=resets[:, :5])
    junk = jnp.concatenate([xs[:, :5], (xs[:, 5:] + 2) % K], axis=1)
    padded = bptt_jax.bptt(params, junk, ys, lengths=jnp.array([5]), resets=resets, chunk=3)
    assert_tree_close(padded, real, rtol=1e-10)


BAD = {
    "shape": (jnp.zeros((2, T + 1), bool), ValueError, r"resets has shape \(2, 8\)"),
    "dtype": (jnp.zeros((2, T), jnp.int32), TypeError, "resets must be boolean"),
    "padded": (jnp.zeros((2, T), bool).at[1, 5].set(True), ValueError,
               r"resets\[1, 5\] is True on a padded step"),
}  # fmt: skip


@pytest.mark.parametrize(
    "fn", slow_except(["forward", "loss", "bptt", "bptt_chunk"], fast={"bptt"})
)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_resets_are_clear_errors(case, fn, x64):
    resets, error, match = BAD[case]
    params = model("stacked")
    xs = jnp.zeros((2, T), int)
    args = (params, xs) if fn == "forward" else (params, xs, xs % C)
    with pytest.raises(error, match=match):
        getattr(bptt_jax, fn)(*args, lengths=jnp.array([T, 4]), resets=resets)
