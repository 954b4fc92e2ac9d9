"""Clipping: per-step δ clipping inside the hand recursion, and the optax clippers."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, assert_tree_close, make_problem, max_rel_error, slow_except

import bptt_jax

B, T, H = 2, 6, 4


def _problem(activation="tanh"):
    # Ids b*T + t, all distinct (K = B*T): column x_t^b of dW = Σ δ ⊗ x is exactly
    # δ_t^b, so every (clipped) δ_t of every sequence can be read off dW.
    params, _, ys, h0 = make_problem(K=B * T, H=H, C=5, B=B, T=T, h0=True, V_scale=4.0)
    xs = jnp.arange(B * T, dtype=jnp.int32).reshape(B, T)
    return params._replace(U=2.5 * params.U), xs, ys, h0


def _deltas(grads):
    return np.asarray(grads.W).T.reshape(B, T, H)  # [b, t-1] = δ_t^b


def seed_clipped_deltas(params, xs, ys, h0, theta, f_prime):
    """The clipped recursion as a plain numpy loop over sequences and steps."""
    U, V, W, b, c = (np.asarray(p, np.float64) for p in params)
    out = np.zeros((B, T, H))
    for n in range(B):
        h, hs = np.asarray(h0[n]), []
        for t in range(T):
            h = np.tanh(U @ h + W[:, int(xs[n, t])] + b)
            hs.append(h)
        g = np.zeros(H)
        for t in reversed(range(T)):
            z = V @ hs[t] + c
            r = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            r[int(ys[n, t])] -= 1
            delta = (V.T @ r + g) * f_prime(hs[t])
            norm = np.linalg.norm(delta)
            if norm > theta:
                delta = delta * theta / norm
            out[n, t] = delta
            g = U.T @ delta
    return out


@pytest.mark.slow  # a compilation per threshold
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_clip_delta_above_every_norm_is_the_exact_gradient(activation, x64):
    params, xs, ys, h0 = _problem()
    E, exact = bptt_jax.bptt(params, xs, ys, h0, activation=activation)
    theta = 1.0001 * float(np.max(np.linalg.norm(_deltas(exact), axis=-1)))
    E_c, clipped = bptt_jax.bptt(params, xs, ys, h0, activation=activation, clip_delta=theta)
    assert float(E_c) == float(E)
    assert_tree_close(clipped, exact, rtol=RTOL["float64"])


# clip_delta is a static argument: each threshold is a compilation.
@pytest.mark.parametrize("fraction", slow_except([0.9, 0.5, 0.1], fast=[0.5]))
def test_clip_delta_never_exceeds_the_threshold(fraction, x64):
    params, xs, ys, h0 = _problem()
    _, exact = bptt_jax.bptt(params, xs, ys, h0)
    norms = np.linalg.norm(_deltas(exact), axis=-1)
    theta = fraction * float(np.max(norms))
    _, clipped = bptt_jax.bptt(params, xs, ys, h0, clip_delta=theta)
    got = np.linalg.norm(_deltas(clipped), axis=-1)
    assert np.all(got <= theta * (1 + 1e-12))
    assert np.isclose(np.max(got), theta, rtol=1e-12)  # the threshold was reached
    ref = seed_clipped_deltas(params, xs, ys, h0, theta, lambda h: 1 - h * h)
    assert max_rel_error(_deltas(clipped), ref) <= RTOL["float64"]
    # By design no longer the gradient: dU, dW, db differ; dV, dc do not.
    assert max_rel_error(clipped.U, exact.U) > 1e-3
    np.testing.assert_array_equal(clipped.V, exact.V)
    np.testing.assert_array_equal(clipped.c, exact.c)


def test_clip_delta_in_bptt_chunk_clips_dh0_too(x64):
    params, xs, ys, h0 = _problem()
    _, grads, dh0, _ = bptt_jax.bptt_chunk(params, xs, ys, h0, clip_delta=0.05)
    delta_1 = _deltas(grads)[:, 0]  # (B, H)
    assert np.all(np.linalg.norm(delta_1, axis=-1) <= 0.05 * (1 + 1e-12))
    assert max_rel_error(dh0, delta_1 @ np.asarray(params.U)) <= 1e-14  # dh0 = Uᵀ δ_1


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [(0, ValueError, "clip_delta must be a finite number > 0, got 0"),
     (-1.0, ValueError, "got -1.0"), (float("nan"), ValueError, "got nan"),
     ("5", TypeError, "clip_delta must be a finite number > 0"), (True, TypeError, "got True")],
    ids=["zero", "negative", "nan", "str", "bool"],
)  # fmt: skip
@pytest.mark.parametrize("fn", ["bptt", "bptt_chunk"])
def test_bad_clip_delta_is_a_clear_error(fn, value, error, match):
    params, xs, ys, _ = make_problem(K=5, H=4, T=3, dtype="float32")
    with pytest.raises(error, match=match):
        getattr(bptt_jax, fn)(params, xs, ys, clip_delta=value)


def _big_grads():
    rng = np.random.default_rng(0)
    return bptt_jax.Params(
        *(jnp.asarray(20 * rng.standard_normal(s), jnp.float32)
          for s in [(4, 4), (3, 4), (4, 5), (4,), (3,)])
    )  # fmt: skip


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree)))


def test_elementwise_clipping_is_plus_minus_five_by_default():
    grads = _big_grads()
    out, _ = bptt_jax.make_clipper("elementwise").update(grads, optax.EmptyState())
    for g, o in zip(grads, out, strict=True):
        np.testing.assert_array_equal(o, np.clip(np.asarray(g), -5, 5))
    assert max(float(jnp.max(jnp.abs(g))) for g in grads) > 5  # it did clip


@pytest.mark.parametrize("value", [1.0, 30.0])
def test_global_norm_clipping_rescales_all_gradients_together(value):
    grads = _big_grads()
    clipper = bptt_jax.make_clipper("global_norm", value)
    out, _ = clipper.update(grads, clipper.init(grads))
    norm = _global_norm(grads)
    assert norm > value
    assert _global_norm(out) == pytest.approx(value, rel=1e-5)
    for g, o in zip(grads, out, strict=True):  # same direction
        assert max_rel_error(o, np.asarray(g) * value / norm) <= RTOL["float32"]


def test_global_norm_below_threshold_and_none_change_nothing():
    grads = _big_grads()
    for clipper in (bptt_jax.make_clipper("global_norm", 1e6), bptt_jax.make_clipper("none")):
        out, _ = clipper.update(grads, clipper.init(grads))
        for g, o in zip(grads, out, strict=True):
            np.testing.assert_array_equal(o, g)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [(("clip",), ValueError, "unknown clipping 'clip'; expected one of 'none', 'elementwise', "
                             "'global_norm'"),
     (("delta",), ValueError, "clip_delta"),
     (("elementwise", 0), ValueError, "clip value must be a finite number > 0, got 0"),
     (("global_norm", -2.0), ValueError, "got -2.0"),
     (("none", 5.0), ValueError, "takes no value")],
    ids=["unknown", "delta_is_not_optax", "zero", "negative", "none_with_value"],
)  # fmt: skip
def test_bad_clipper_is_a_clear_error(args, error, match):
    with pytest.raises(error, match=match):
        bptt_jax.make_clipper(*args)
