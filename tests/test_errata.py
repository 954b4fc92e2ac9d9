"""The seed's slips (docs/math.md §14, the errata), one test each: the
corrected form agrees with jax.grad and, where the slip is a formula, the
literal formula as printed does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_problem, max_rel_error

import bptt_jax

T, H, K = 7, 5, 6


@pytest.fixture
def seq(x64):
    """One sequence with a non-zero h0, its jax.grad, h_0..h_T and all δ_k^(t)."""
    params, xs, ys, h0 = make_problem(K=K, H=H, T=T, h0=True, seed=3)
    grads = jax.grad(bptt_jax.loss)(params, xs, ys, h0)
    hs, _ = bptt_jax.forward(params, xs, h0)
    h = np.concatenate([np.asarray(h0)[None], np.asarray(hs)])  # h[k] = h_k, k = 0..T
    d = np.asarray(bptt_jax.per_loss_deltas(params, xs, ys, h0))  # d[t-1, k-1] = δ_k^(t)
    x = np.eye(K)[np.asarray(xs)]  # x[k-1] = one-hot x_k
    return dict(params=params, xs=xs, ys=ys, h0=h0, grads=grads, h=h, d=d, x=x)


def _far(a, b):
    return max_rel_error(a, b) > 1e-2


def test_slip_1_per_loss_sum_pairs_delta_k_with_h_k_minus_1(seq):
    d, h, x, g = seq["d"], seq["h"], seq["x"], seq["grads"]
    t_idx = range(1, T + 1)
    # Corrected: ∂E_t/∂U = Σ_{k=1}^{t} δ_k^(t) ⊗ h_{k−1};  ∂E_t/∂W = Σ_k δ_k^(t) ⊗ x_k.
    dU = sum(np.outer(d[t - 1, k - 1], h[k - 1]) for t in t_idx for k in range(1, t + 1))
    dW = sum(np.outer(d[t - 1, k - 1], x[k - 1]) for t in t_idx for k in range(1, t + 1))
    assert max_rel_error(dU, g.U) <= 1e-10 and max_rel_error(dW, g.W) <= 1e-10
    # As printed: Σ_k δ_k ⊗ h_{t−1} and Σ_k δ_k ⊗ x_t, the vector fixed at step t.
    dU_lit = sum(np.outer(d[t - 1, k - 1], h[t - 1]) for t in t_idx for k in range(1, t + 1))
    dW_lit = sum(np.outer(d[t - 1, k - 1], x[t - 1]) for t in t_idx for k in range(1, t + 1))
    assert _far(dU_lit, g.U) and _far(dW_lit, g.W)


def test_slip_2_total_gradient_sums_over_all_steps(seq):
    d, x, g = seq["d"], seq["x"], seq["grads"]
    delta = d.sum(axis=0)  # δ_k = Σ_t δ_k^(t) = ∂E/∂s_k
    dW_total = sum(np.outer(delta[k], x[k]) for k in range(T))
    assert max_rel_error(dW_total, g.W) <= 1e-10
    # As printed: ∂E/∂W = ∂E/∂s_t · ∂s_t/∂W for one t (any single t is wrong).
    for t in range(T):
        assert _far(np.outer(delta[t], x[t]), g.W)


def test_slip_3_bullet_is_the_hadamard_product(seq):
    params, d, h = seq["params"], seq["d"], seq["h"]
    U = np.asarray(params.U)
    t, k = T, T - 1  # one step of the recursion δ_k^(t) from δ_{k+1}^(t)
    Ut_delta, fprime = U.T @ d[t - 1, k], 1 - h[k] * h[k]
    assert max_rel_error(Ut_delta * fprime, d[t - 1, k - 1]) <= 1e-12  # element-wise
    dot = Ut_delta @ fprime  # "向量点积", a scalar: no H-vector can come of it
    assert np.ndim(dot) == 0
    assert _far(dot * np.ones(H), d[t - 1, k - 1])


def test_slip_4_product_of_jacobians_has_order_and_transposes(seq):
    params, d, h = seq["params"], seq["d"], seq["h"]
    U = np.asarray(params.U)
    t = T
    for k in range(1, t):
        # δ_k^(t) = diag(f'_k) Uᵀ diag(f'_{k+1}) Uᵀ ⋯ diag(f'_{t−1}) Uᵀ δ_t^(t)
        J = np.eye(H)
        for i in range(k, t):
            J = J @ np.diag(1 - h[i] ** 2) @ U.T
        assert max_rel_error(J @ d[t - 1, t - 1], d[t - 1, k - 1]) <= 1e-12
        # As printed: δ_t ∏_{i=k}^{t−1} U (1 − h_i ⊙ h_i), U untransposed.
        L = np.eye(H)
        for i in range(k, t):
            L = L @ U @ np.diag(1 - h[i] ** 2)
        assert _far(L @ d[t - 1, t - 1], d[t - 1, k - 1])


def test_slip_4_gamma_above_one_does_not_imply_explosion(x64):
    # ‖U‖₂ = 3 so γ = ‖U‖₂ · max|tanh'| = 3 > 1, yet large biases saturate tanh
    # (f' ≈ 0) and the per-loss deltas vanish with distance instead of exploding.
    params, xs, ys, _ = make_problem(K=4, H=6, T=12, seed=1)
    U = np.asarray(params.U)
    U = 3 * U / np.linalg.norm(U, 2)
    params = params._replace(U=jnp.asarray(U), b=jnp.full((6,), 4.0, jnp.float64))
    d = np.asarray(bptt_jax.per_loss_deltas(params, xs, ys))
    gamma = np.linalg.norm(U, 2) * 1.0
    assert gamma > 1
    t = 12
    norms = np.linalg.norm(d[t - 1, :t], axis=-1)  # ‖δ_k^(t)‖, k = 1..t
    assert norms[0] < 1e-6 * norms[-1]  # vanished over 11 steps
    bound = norms[-1] * gamma ** (t - np.arange(1, t + 1))  # the bound still holds
    assert np.all(norms <= bound * (1 + 1e-12))


def test_slip_5_softmax_gradient_keeps_the_j_equals_i_term(x64):
    z = jax.random.normal(jax.random.key(0), (5,), jnp.float64)
    y = jax.nn.softmax(jax.random.normal(jax.random.key(1), (5,), jnp.float64))  # soft label
    a = jax.nn.softmax(z)
    ref = jax.grad(lambda z: -jnp.sum(y * jax.nn.log_softmax(z)))(z)
    corrected = a * jnp.sum(y) - y  # a_i Σ_j y_j − y_i
    printed = a * (jnp.sum(y) - y) - y  # a_i Σ_{j≠i} y_j − y_i
    assert max_rel_error(corrected, ref) <= 1e-14
    assert max_rel_error(bptt_jax.softmax_cross_entropy_grad(z, y), ref) <= 1e-14
    assert _far(printed, ref)


def test_slip_6_tanh_derivative_is_one_minus_tanh_squared(x64):
    s = jnp.linspace(-5, 5, 101, dtype=jnp.float64)
    from_h = 1 - jnp.tanh(s) ** 2
    quotient_rule = 4 / (jnp.exp(s) + jnp.exp(-s)) ** 2  # d/ds (eˢ − e⁻ˢ)/(eˢ + e⁻ˢ)
    # 1 − h² loses relative digits to cancellation as |h| → 1, so compare to
    # the absolute round-off of a float64 subtraction from 1 (eps = 2.2e-16).
    np.testing.assert_allclose(from_h, jax.vmap(jax.grad(jnp.tanh))(s), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(from_h, quotient_rule, rtol=1e-12, atol=1e-15)


def test_slip_7_steps_run_from_1_to_T_with_h0_given(seq):
    d, h, g = seq["d"], seq["h"], seq["grads"]
    delta = d.sum(axis=0)  # δ_k for k = 1..T
    # Σ_{k=1}^{T} δ_k ⊗ h_{k−1}: the k = 1 term pairs δ_1 with the given h_0.
    dU = sum(np.outer(delta[k - 1], h[k - 1]) for k in range(1, T + 1))
    assert max_rel_error(dU, g.U) <= 1e-10
    # Starting the sum one step late (indices read as 0-based, no h_0 term) is wrong
    # whenever h_0 ≠ 0 ...
    dU_no_h0 = sum(np.outer(delta[k - 1], h[k - 1]) for k in range(2, T + 1))
    assert np.any(h[0] != 0) and _far(dU_no_h0, g.U)
    # ... and there is no s_0, so no δ_0: the seed's Σ_{k=0} has one term too many.
    assert d.shape[:2] == (T, T)
