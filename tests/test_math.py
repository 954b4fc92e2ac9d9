"""Issue 3: the seed's per-loss double sum, truncation, activations, chunks,
soft labels and appendix 1 -- each against its autodiff referee."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    RTOL,
    assert_tree_close,
    loss_value_and_grad,
    make_problem,
    max_rel_error,
    slow_except,
)

import bptt_jax
from bptt_jax.core.cell import RNNCell
from bptt_jax.core.losses import softmax_cross_entropy
from bptt_jax.core.options import Options
from bptt_jax.referees.autodiff import chunked_loss, windowed_loss

ACTS = list(bptt_jax.activations)
# Each activation is a compilation of its own: the fast tier runs the seed's
# tanh through the gradient checks, .ci/run every activation.
ACTS_TANH_FAST = slow_except(ACTS, fast=["tanh"])
PROBLEM = dict(K=6, H=5, C=4, B=3, T=9, h0=True)


@pytest.mark.parametrize("activation", ACTS_TANH_FAST)
def test_per_loss_equals_bptt_equals_jax_grad(activation, dtype):
    params, xs, ys, h0 = make_problem(**PROBLEM, dtype=dtype)
    E, grads = bptt_jax.bptt_per_loss(params, xs, ys, h0, activation=activation)
    E1, grads1 = bptt_jax.bptt(params, xs, ys, h0, activation=activation)
    E_ref, grads_ref = loss_value_and_grad(params, xs, ys, h0, activation=activation)
    for e in (E, E1):
        assert abs(float(e) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
    assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])
    assert_tree_close(grads1, grads_ref, rtol=RTOL[dtype])


@pytest.mark.parametrize("truncate", slow_except([1, 4], fast=[4]))
@pytest.mark.parametrize("activation", ACTS_TANH_FAST)
def test_chunked_truncation_matches_stop_gradient_at_chunk_ends(activation, truncate, dtype):
    params, xs, ys, h0 = make_problem(**PROBLEM, dtype=dtype)
    E, grads = bptt_jax.bptt(params, xs, ys, h0, activation=activation, truncate=truncate)
    E_ref, grads_ref = bptt_jax.autodiff_bptt(
        params, xs, ys, h0, activation=activation, truncate=truncate
    )
    assert abs(float(E) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
    assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])
    # ... and truncation really cuts something (T = 9 > τ).
    _, full = bptt_jax.bptt(params, xs, ys, h0, activation=activation)
    assert max_rel_error(grads.U, full.U) > 1e-3


@pytest.mark.slow  # a compilation per window
@pytest.mark.parametrize("truncate", slow_except([1, 3], fast=[3]))
@pytest.mark.parametrize("activation", ACTS_TANH_FAST)
def test_sliding_window_per_loss_matches_autodiff_window(activation, truncate, dtype):
    params, xs, ys, h0 = make_problem(**PROBLEM, dtype=dtype)
    E, grads = bptt_jax.bptt_per_loss(params, xs, ys, h0, activation=activation, truncate=truncate)
    E_ref, grads_ref = bptt_jax.autodiff_bptt_per_loss(
        params, xs, ys, h0, activation=activation, truncate=truncate
    )
    assert abs(float(E) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
    assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])
    _, chunked = bptt_jax.bptt(params, xs, ys, h0, activation=activation, truncate=truncate)
    if truncate > 1:  # a window and a chunk cut differ; τ = 1 keeps only δ_t^(t) in both
        assert max_rel_error(grads.U, chunked.U) > 1e-3


@pytest.mark.slow  # compiles both referee losses
def test_referee_losses_have_the_loss_value(x64):
    params, xs, ys, h0 = make_problem(**PROBLEM)
    E = bptt_jax.loss(params, xs, ys, h0)
    for fn in (chunked_loss, windowed_loss):
        assert float(fn(params, xs, ys, h0, options=Options(truncate=3))) == pytest.approx(
            float(E), rel=1e-14
        )


@pytest.mark.slow  # a compilation per truncation
@pytest.mark.parametrize("truncate", slow_except([None, 9, 50], fast=[9]))
def test_truncation_at_or_beyond_T_is_exact(truncate, x64):
    params, xs, ys, h0 = make_problem(**PROBLEM)
    _, full = bptt_jax.bptt(params, xs, ys, h0)
    _, g1 = bptt_jax.bptt(params, xs, ys, h0, truncate=truncate)
    _, g2 = bptt_jax.bptt_per_loss(params, xs, ys, h0, truncate=truncate)
    assert_tree_close(g1, full, rtol=1e-13)
    assert_tree_close(g2, full, rtol=1e-13)


@pytest.mark.slow  # compiles bptt_chunk and jax.grad with respect to h0
@pytest.mark.parametrize("truncate", [None, 3])
@pytest.mark.parametrize("activation", ACTS)
def test_dh0_matches_jax_grad_wrt_h0(activation, truncate, dtype):
    params, xs, ys, h0 = make_problem(**PROBLEM, dtype=dtype)
    _, _, dh0, h_T = bptt_jax.bptt_chunk(
        params, xs, ys, h0, activation=activation, truncate=truncate
    )
    dh0_ref = jax.grad(
        lambda h: chunked_loss(params, xs, ys, h, options=Options(RNNCell(activation), truncate))
    )(h0)
    assert dh0.shape == h0.shape and h_T.shape == h0.shape
    assert max_rel_error(dh0, dh0_ref) <= RTOL[dtype]
    hs, _ = bptt_jax.forward(params, xs, h0, activation=activation)
    np.testing.assert_array_equal(h_T, hs[:, -1])


@pytest.mark.slow  # shapes of its own
def test_dh0_for_one_sequence_has_shape_H(x64):
    params, xs, ys, h0 = make_problem(K=5, H=4, T=6, h0=True)
    _, _, dh0, h_T = bptt_jax.bptt_chunk(params, xs, ys, h0)
    assert dh0.shape == (4,) and h_T.shape == (4,)
    assert max_rel_error(dh0, bptt_jax.autodiff_dh0(params, xs, ys, h0)) <= 1e-10


@pytest.mark.slow  # a compilation per chunk shape
@pytest.mark.parametrize("activation", ACTS_TANH_FAST)
def test_chunks_processed_backwards_with_dh_T_give_the_full_gradient(activation, x64):
    # Forward chunk by chunk carrying h; backward chunk by chunk carrying dh.
    params, xs, ys, h0 = make_problem(K=6, H=5, B=2, T=12, h0=True)
    bounds = [(0, 5), (5, 9), (9, 12)]
    states = [h0]
    for lo, hi in bounds:
        *_, h_T = bptt_jax.bptt_chunk(
            params, xs[:, lo:hi], ys[:, lo:hi], states[-1], activation=activation
        )
        states.append(h_T)
    dh, E, total = None, 0.0, None
    for (lo, hi), h_start in reversed(list(zip(bounds, states, strict=False))):
        E_c, g, dh, _ = bptt_jax.bptt_chunk(
            params, xs[:, lo:hi], ys[:, lo:hi], h_start, dh_T=dh, activation=activation
        )
        E += float(E_c)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    E_full, full = bptt_jax.bptt(params, xs, ys, h0, activation=activation)
    assert pytest.approx(float(E_full), rel=1e-13) == E
    assert_tree_close(total, full, rtol=1e-12)
    dh0_full = bptt_jax.autodiff_dh0(params, xs, ys, h0, activation=activation)
    assert max_rel_error(dh, dh0_full) <= 1e-12


@pytest.mark.slow  # a compilation per chunk shape
def test_chunks_without_dh_T_are_bptt_truncated_at_the_chunk_ends(x64):
    params, xs, ys, h0 = make_problem(K=6, H=5, B=2, T=12, h0=True)
    total, h = None, h0
    for lo in range(0, 12, 4):
        _, g, _, h = bptt_jax.bptt_chunk(params, xs[:, lo : lo + 4], ys[:, lo : lo + 4], h)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    _, truncated = bptt_jax.bptt(params, xs, ys, h0, truncate=4)
    assert_tree_close(total, truncated, rtol=1e-12)


# --- soft labels and appendix 1 ------------------------------------------------


def _soft_labels(shape, C, dtype, seed=0):
    logits = jax.random.normal(jax.random.key(seed), (*shape, C), jnp.float64)
    return jax.nn.softmax(3 * logits).astype(dtype)


@pytest.mark.slow  # compiles both hand paths for soft labels
@pytest.mark.parametrize("activation", ACTS)
def test_soft_labels_match_jax_grad(activation, dtype):
    params, xs, _, h0 = make_problem(**PROBLEM, dtype=dtype)
    ys = _soft_labels(xs.shape, 4, dtype)
    for fn in (bptt_jax.bptt, bptt_jax.bptt_per_loss):
        E, grads = fn(params, xs, ys, h0, activation=activation)
        E_ref, grads_ref = loss_value_and_grad(params, xs, ys, h0, activation=activation)
        assert abs(float(E) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
        assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])


@pytest.mark.slow  # compiles soft labels
def test_one_hot_soft_labels_equal_class_ids(x64):
    params, xs, ys, h0 = make_problem(**PROBLEM)
    E_ids, g_ids = bptt_jax.bptt(params, xs, ys, h0)
    E_hot, g_hot = bptt_jax.bptt(params, xs, jax.nn.one_hot(ys, 4, dtype=jnp.float64), h0)
    assert float(E_ids) == pytest.approx(float(E_hot), rel=1e-14)
    assert_tree_close(g_hot, g_ids, rtol=1e-14)


@pytest.mark.slow  # compiles soft labels anew
def test_label_smoothing_with_zero_entries_stays_finite(x64):
    params, xs, ys, h0 = make_problem(**PROBLEM)
    ys_soft = 0.9 * jax.nn.one_hot(ys, 4, dtype=jnp.float64) + 0.1 / 4
    ys_soft = ys_soft.at[..., 3].set(0.0)  # a class with probability exactly 0 ...
    ys_soft = ys_soft / ys_soft.sum(-1, keepdims=True)  # ... rows still sum to 1
    E, grads = bptt_jax.bptt(params, xs, ys_soft, h0)
    _, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys_soft, h0)
    assert np.isfinite(float(E))
    assert_tree_close(grads, grads_ref, rtol=1e-10)


SCE_CASES = {
    "hard_small": (1.0, "hard"),
    "soft_small": (1.0, "soft"),
    "hard_1000": (1000.0, "hard"),
    "soft_1000": (1000.0, "soft"),
}


@pytest.mark.parametrize("case", SCE_CASES)
def test_softmax_cross_entropy_grad_matches_jax_grad(case, dtype):
    scale, kind = SCE_CASES[case]
    z = scale * jax.random.normal(jax.random.key(1), (7, 5), dtype)
    if scale > 1:
        z = jnp.clip(z, -1000, 1000).at[0].set(jnp.array([1000, -1000, 0, 999, -999], dtype))
    y = (
        jax.random.randint(jax.random.key(2), (7,), 0, 5)
        if kind == "hard"
        else _soft_labels((7,), 5, dtype)
    )

    def E(z):  # -Σ y log softmax(z), written with optax-free jax.nn
        log_p = jax.nn.log_softmax(z)
        if kind == "hard":
            return -jnp.sum(jnp.take_along_axis(log_p, y[:, None], axis=1))
        return -jnp.sum(y * log_p)

    g = bptt_jax.softmax_cross_entropy_grad(z, y)
    E_ref, g_ref = jax.value_and_grad(E)(z)
    assert np.all(np.isfinite(np.asarray(g)))
    assert g.dtype == z.dtype
    assert max_rel_error(g, g_ref) <= RTOL[dtype]
    # The one-exp form the chunked backward uses gives the same loss and r.
    E_hand, r = softmax_cross_entropy(z, y)
    assert max_rel_error(E_hand, E_ref) <= RTOL[dtype]
    assert max_rel_error(r, g_ref) <= RTOL[dtype]


def test_softmax_cross_entropy_grad_is_yhat_minus_y(x64):
    z = jnp.array([2.0, 0.0, -1.0], jnp.float64)
    yhat = jax.nn.softmax(z)
    np.testing.assert_allclose(
        bptt_jax.softmax_cross_entropy_grad(z, jnp.array(0)), yhat - jnp.array([1.0, 0, 0])
    )


@pytest.mark.slow  # shapes of its own
def test_loss_and_gradients_finite_for_logits_of_1000(dtype):
    params, xs, ys, h0 = make_problem(K=6, H=5, B=2, T=5, V_scale=800.0, dtype=dtype)
    _, z = bptt_jax.forward(params, xs, h0)
    assert float(jnp.max(jnp.abs(z))) > 500
    E, grads = bptt_jax.bptt(params, xs, ys, h0)
    _, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, h0)
    assert np.isfinite(float(E))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert_tree_close(grads, grads_ref, rtol=RTOL[dtype])


# --- activations (appendix 2) --------------------------------------------------


@pytest.mark.parametrize("activation", ACTS)
def test_derivative_from_h_equals_jax_grad_of_f(activation, x64):
    from bptt_jax.core.activations import get_activation

    act = get_activation(activation)
    s = jnp.linspace(-6, 6, 241, dtype=jnp.float64)
    s = s[s != 0]  # s = 0 is its own test (ReLU's kink)
    df_auto = jax.vmap(jax.grad(act.f))(s)
    np.testing.assert_allclose(act.df_from_h(act.f(s)), df_auto, rtol=1e-12, atol=1e-15)
    assert float(jnp.max(jnp.abs(df_auto))) <= act.max_slope + 1e-12


@pytest.mark.slow  # compiles relu's paths
def test_relu_at_exactly_zero_has_derivative_zero(x64):
    # U = W = b = 0 puts every s_t at exactly 0: h_t = relu(0) = 0, and the
    # convention f'(0) = 0 (jax.nn.relu, PyTorch) kills every recurrent gradient.
    params, xs, ys, _ = make_problem(K=5, H=4, B=2, T=6)
    params = params._replace(
        U=jnp.zeros_like(params.U), W=jnp.zeros_like(params.W), b=jnp.zeros_like(params.b)
    )
    _, grads = bptt_jax.bptt(params, xs, ys, activation="relu")
    _, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, activation="relu")
    for name in ("U", "W", "b"):
        assert not np.any(np.asarray(getattr(grads, name))), name
        assert not np.any(np.asarray(getattr(grads_ref, name))), name
    assert np.any(np.asarray(grads.c))  # the output bias still learns
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0


@pytest.mark.parametrize("activation", ACTS)
def test_forward_uses_the_activation(activation, x64):
    from helpers import seed_forward_loop

    params, xs, _, h0 = make_problem(K=5, H=4, T=6, h0=True)
    hs, _ = bptt_jax.forward(params, xs, h0, activation=activation)
    f = {
        "tanh": np.tanh,
        "sigmoid": lambda s: 1 / (1 + np.exp(-s)),
        "relu": lambda s: np.maximum(s, 0),
    }[activation]
    hs_ref, _, _ = seed_forward_loop(params, xs, None, h0, f=f)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-13, atol=1e-14)


# --- per-loss deltas -------------------------------------------------------------


@pytest.mark.slow  # eager jax.grad of an unrolled loop per step
def test_per_loss_deltas_are_dEt_dsk(x64):
    # δ_k^(t) = ∂E_t/∂s_k, checked by perturbing s_k: run the forward with an
    # additive offset e_k on s_k and differentiate E_t alone with jax.grad.
    params, xs, ys, h0 = make_problem(K=5, H=4, T=6, h0=True)
    deltas = bptt_jax.per_loss_deltas(params, xs, ys, h0)  # (T, T, H)
    T, H = 6, 4

    def E_t_of_offsets(e, t):  # e: (T, H) offsets added to every s_k
        U, V, W, b, c = params
        h = h0
        for k in range(t + 1):
            h = jnp.tanh(U @ h + W[:, xs[k]] + b + e[k])
        z = V @ h + c
        return -jax.nn.log_softmax(z)[ys[t]]

    for t in range(T):
        ref = jax.grad(E_t_of_offsets)(jnp.zeros((T, H), jnp.float64), t)
        np.testing.assert_allclose(deltas[t], ref, rtol=1e-12, atol=1e-15)
    assert not np.any(np.asarray(deltas[np.triu_indices(T, 1)]))  # k > t: zero


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(activation="softplus"), ValueError, "unknown activation 'softplus'; expected one"),
        (dict(activation=None), ValueError, "'tanh', 'sigmoid', 'relu'"),
        (dict(truncate=0), ValueError, "truncate must be None .* or an int >= 1, got 0"),
        (dict(truncate=-3), ValueError, "got -3"),
        (dict(truncate=2.5), TypeError, "truncate must be None .* or an int >= 1, got 2.5"),
        (dict(truncate=True), TypeError, "got True"),
    ],
    ids=["unknown_activation", "activation_None", "truncate_0", "truncate_negative",
         "truncate_float", "truncate_bool"],
)  # fmt: skip
@pytest.mark.parametrize("fn", ["bptt", "bptt_per_loss", "bptt_chunk", "autodiff_bptt"])
def test_bad_activation_or_truncate_is_a_clear_error(fn, kwargs, error, match, x64):
    params, xs, ys, h0 = make_problem(K=5, H=4, T=3)
    with pytest.raises(error, match=match):
        getattr(bptt_jax, fn)(params, xs, ys, h0, **kwargs)


@pytest.mark.parametrize("fn", ["forward", "loss"])
def test_forward_and_loss_reject_unknown_activations(fn, x64):
    params, xs, ys, _ = make_problem(K=5, H=4, T=3)
    args = (params, xs) if fn == "forward" else (params, xs, ys)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        getattr(bptt_jax, fn)(*args, activation="gelu")


def test_softmax_cross_entropy_grad_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"y has shape \(3, 4\), expected \(3, 5\)"):
        bptt_jax.softmax_cross_entropy_grad(jnp.zeros((3, 5)), jnp.full((3, 4), 0.25))
    with pytest.raises(ValueError, match=r"y has shape \(4,\), expected \(3,\)"):
        bptt_jax.softmax_cross_entropy_grad(jnp.zeros((3, 5)), jnp.zeros(4, jnp.int32))


def test_dh_T_shape_is_checked(x64):
    params, xs, ys, h0 = make_problem(K=5, H=4, B=2, T=3, h0=True)
    with pytest.raises(ValueError, match=r"dh_T has shape \(4,\), expected \(2, 4\)"):
        bptt_jax.bptt_chunk(params, xs, ys, h0, dh_T=jnp.zeros(4))


@pytest.mark.parametrize("shape", [(0,), (2, 0)], ids=["T0_single", "T0_batch"])
def test_per_loss_on_an_empty_sequence(shape, x64):
    params, _, _, _ = make_problem(K=5, H=4, T=1)
    xs = jnp.zeros(shape, jnp.int32)
    E, grads = bptt_jax.bptt_per_loss(params, xs, xs)
    assert float(E) == 0.0 and not any(np.any(np.asarray(g)) for g in grads)
    deltas = bptt_jax.per_loss_deltas(params, xs, xs)
    assert deltas.shape == ((0, 0, 4) if len(shape) == 1 else (0, 0, 2, 4))
