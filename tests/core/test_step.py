"""The training step's generic hand gradient, ``hand_bptt``: any model, resets to zero.

A reset at step t makes the state entering step t zero (a new document) while the
chunk's first step continues ``h0`` (the training streams' carried state); so the
chunk's loss and gradients are those of its segments run alone: the first from
``h0``, every later one from zeros.
"""

import itertools

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_tree_close, slow_except
from test_backward import deep_params

import bptt_jax
from bptt_jax.core.options import Options
from bptt_jax.core.step import hand_bptt

T, K, C = 7, 5, 6
CUTS = {0: (3, 5), 1: (2,)}  # row 0: [0, 3), [3, 5), [5, 7); row 1: [0, 2), [2, 7)


def model(kind):
    if kind == "seed":
        return bptt_jax.init_params(jax.random.key(0), K, 4, dtype="float64")._replace(
            V=0.5 * jax.random.normal(jax.random.key(1), (K, 4))
        )
    return deep_params(2, False, "float64")


@pytest.mark.parametrize("kind", slow_except(["seed", "stacked"], fast={"stacked"}))
def test_resets_restart_from_zero_and_equal_the_segments_alone(kind, x64):
    params = model(kind)
    xs = jax.random.randint(jax.random.key(2), (2, T), 0, K)
    ys = (xs + 1) % (K if kind == "seed" else C)
    shape = (2, 4) if kind == "seed" else (2, 2, 4)  # (B, H) or (L, B, H)
    h0 = 0.5 * jax.random.normal(jax.random.key(3), shape, jnp.float64)
    resets = jnp.zeros((2, T), bool)
    for b, cuts in CUTS.items():
        resets = resets.at[b, jnp.array(cuts)].set(True)
    E, grads, _, h_T = hand_bptt(params, xs, ys, h0, resets, Options(chunk=2))
    E_ref, grads_ref, finals = 0.0, jax.tree.map(jnp.zeros_like, params), []
    for b, cuts in CUTS.items():
        for i, (a, e) in enumerate(itertools.pairwise((0, *cuts, T))):
            start = h0[..., b, :] if i == 0 else jnp.zeros_like(h0[..., b, :])
            E_s, g_s, _, h_s = bptt_jax.bptt_chunk(params, xs[b, a:e], ys[b, a:e], start)
            E_ref, grads_ref = E_ref + E_s, jax.tree.map(jnp.add, grads_ref, g_s)
        finals.append(h_s)
    assert_tree_close((E, grads), (E_ref, grads_ref), rtol=1e-10)
    assert_tree_close(h_T, jnp.stack(finals, axis=-2), rtol=1e-12)
    assert not jnp.allclose(grads_ref.V, hand_bptt(params, xs, ys, h0, None)[1].V)  # resets matter


def test_without_resets_the_seed_model_runs_the_seeds_bptt_core(x64):
    params = model("seed")
    xs = jax.random.randint(jax.random.key(4), (3, T), 0, K)
    ys = (xs + 2) % K
    h0 = jnp.zeros((3, 4), jnp.float64)
    got = hand_bptt(params, xs, ys, h0, None)
    want = bptt_jax.bptt_chunk(params, xs, ys, h0)
    assert_tree_close(got, want, rtol=1e-12)
