"""gradient_flow against jax.grad of each E_t w.r.t. every s_k, and the §6 bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, make_problem, max_rel_error, slow_except

import bptt_jax
from bptt_jax.lab.diagnostics import classify_rate, format_sweep, gamma_verdict, spectral_sweep

F = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}


def reference_flow(params, xs, ys, h0, activation):
    """∂E_t/∂s_k for all t, k by jax.jacrev of the per-step losses with respect
    to additive offsets e_k on s_k (the s-perturbation construction), and
    max|f'(s_k)| by jax.grad of f at the s_k of the same forward.

    Returns ``(deltas (T, T, B, H), max_slopes (T,))``.
    """
    U, V, W, b, c = params
    f = F[activation]
    B, T = xs.shape
    H = U.shape[0]

    def losses(e):  # e: (T, B, H) -> (T,): E_t summed over the batch
        h, out = h0, []
        for k in range(T):
            s = h @ U.T + W.T[xs[:, k]] + b + e[k]
            h = f(s)
            log_p = jax.nn.log_softmax(h @ V.T + c)
            out.append(-jnp.sum(jnp.take_along_axis(log_p, ys[:, k, None], axis=1)))
        return jnp.stack(out)

    deltas = jax.jacrev(losses)(jnp.zeros((T, B, H), U.dtype))  # (T, T, B, H)
    ss, h = [], h0
    for k in range(T):
        s = h @ U.T + W.T[xs[:, k]] + b
        ss.append(s)
        h = f(s)
    fprime = jax.vmap(jax.grad(lambda s: f(s)))(jnp.stack(ss).reshape(-1)).reshape(T, B, H)
    return np.asarray(deltas), np.max(np.abs(np.asarray(fprime)), axis=(1, 2))


def _problem(activation, scale, *, B=3, T=7, seed=0):
    params, xs, ys, h0 = make_problem(K=5, H=4, B=B, T=T, h0=True, seed=seed)
    return params._replace(U=scale * params.U), xs, ys, h0


@pytest.mark.parametrize("activation", slow_except(["tanh", "sigmoid", "relu"], fast=["tanh"]))
def test_gradient_flow_matches_autodiff_of_each_Et_wrt_each_sk(activation, x64):
    params, xs, ys, h0 = _problem(activation, 1.5)
    flow = bptt_jax.gradient_flow(params, xs, ys, h0, activation=activation)
    deltas, slopes = reference_flow(params, xs, ys, h0, activation)
    T = xs.shape[1]

    ref_norms = np.mean(np.linalg.norm(deltas, axis=-1), axis=-1)  # (T, T)
    assert max_rel_error(flow.delta_norms, ref_norms) <= RTOL["float64"]
    assert not np.any(np.asarray(flow.delta_norms)[np.triu_indices(T, 1)])
    assert max_rel_error(flow.max_slopes, slopes) <= RTOL["float64"]
    U_norm = np.linalg.norm(np.asarray(params.U), 2)
    assert abs(float(flow.U_norm) - U_norm) <= 1e-12 * U_norm
    max_slope = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}[activation]
    assert abs(float(flow.gamma) - U_norm * max_slope) <= 1e-12 * U_norm

    # The bound's factors, written out with plain loops from the referee's numbers.
    bound = np.zeros((T, T))
    for t in range(T):
        for k in range(t + 1):
            bound[t, k] = ref_norms[t, t] * np.prod(U_norm * slopes[k:t])
    assert max_rel_error(flow.bound, bound) <= RTOL["float64"]
    decay = [
        sum(ref_norms[t, t - d] for t in range(d, T)) / sum(ref_norms[t, t] for t in range(d, T))
        for d in range(T)
    ]
    assert max_rel_error(flow.decay, decay) <= RTOL["float64"]
    d = np.arange(T)
    rate = np.exp(np.sum(d * np.log(decay)) / np.sum(d * d))
    assert abs(float(flow.decay_rate) - rate) <= 1e-10 * rate


@pytest.mark.slow  # shapes of its own
def test_gradient_flow_of_one_sequence_equals_the_batch_of_one(x64):
    params, xs, ys, h0 = make_problem(K=5, H=4, T=6, h0=True)
    one = bptt_jax.gradient_flow(params, xs, ys, h0)
    batch = bptt_jax.gradient_flow(params, xs[None], ys[None], h0[None])
    for a, b in zip(one, batch, strict=True):
        np.testing.assert_array_equal(a, b)
    deltas = np.asarray(bptt_jax.per_loss_deltas(params, xs, ys, h0))  # independent path
    assert max_rel_error(one.delta_norms, np.linalg.norm(deltas, axis=-1)) <= 1e-14


# Every (activation, batch) is a compilation: the fast tier checks the bound
# on a tanh batch at every scale (one compilation), .ci/run all of them.
@pytest.mark.parametrize("scale", [0.3, 1.0, 6.0], ids=lambda s: f"U_times_{s}")
@pytest.mark.parametrize("activation", slow_except(["tanh", "sigmoid", "relu"], fast=["tanh"]))
@pytest.mark.parametrize("batch", slow_except([None, 4], [4], ["one_sequence", "batch"]))
def test_the_bound_holds_on_every_measured_trajectory(activation, scale, batch, x64):
    # ‖δ_k^(t)‖ ≤ ‖δ_t^(t)‖ Π_{i=k}^{t−1} ‖U‖₂ max|f′(s_i)| ≤ ‖δ_t^(t)‖ γ^(t−k)
    params, xs, ys, h0 = make_problem(K=6, H=5, B=batch, T=12, h0=True, seed=3)
    params = params._replace(U=scale * params.U)
    flow = bptt_jax.gradient_flow(params, xs, ys, h0, activation=activation)
    n, bound = np.asarray(flow.delta_norms), np.asarray(flow.bound)
    gamma_bound = np.asarray(flow.gamma_bound)
    assert np.all(n <= bound * (1 + 1e-12) + 1e-300)
    assert np.all(bound <= gamma_bound * (1 + 1e-12) + 1e-300)
    assert np.all(flow.decay <= flow.bound_decay * (1 + 1e-12) + 1e-300)
    assert np.all(flow.bound_decay <= flow.gamma_decay * (1 + 1e-12) + 1e-300)
    np.testing.assert_array_equal(np.diagonal(bound), np.diagonal(n))  # tight at t = k
    assert np.max(n) > 0  # a trajectory that carries signal


@pytest.mark.slow  # a shape of its own
def test_the_bound_is_tighter_than_gamma_when_units_saturate(x64):
    # Large biases saturate tanh: max|f'(s_k)| ≪ 1 on the trajectory, so the
    # trajectory bound is far below γ^(t−k) although γ > 1 -- and so are the deltas.
    params, xs, ys, h0 = make_problem(K=5, H=6, B=2, T=10, seed=1)
    params = params._replace(U=3 * params.U, b=jnp.full((6,), 4.0, jnp.float64))
    flow = bptt_jax.gradient_flow(params, xs, ys, h0)
    assert float(flow.gamma) > 1
    assert float(flow.decay[-1]) < 1e-3 and float(flow.gamma_decay[-1]) > 1
    assert float(flow.bound_decay[-1]) < 1e-3 * float(flow.gamma_decay[-1])
    assert float(flow.decay_rate) < 1


@pytest.mark.slow  # compiles both dtypes
def test_gradient_flow_float32_agrees_with_float64():
    params, xs, ys, h0 = make_problem(K=5, H=4, B=2, T=6, dtype="float32", h0=True)
    flow32 = bptt_jax.gradient_flow(params, xs, ys, h0)
    assert flow32.delta_norms.dtype == jnp.float32
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        flow64 = bptt_jax.gradient_flow(p64, xs, ys, h0.astype(jnp.float64))
        for name in ("delta_norms", "bound", "max_slopes", "decay"):
            err = max_rel_error(getattr(flow32, name), getattr(flow64, name))
            assert err <= RTOL["float32"], name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [(dict(activation="softplus"), ValueError, "unknown activation 'softplus'"),
     (dict(ys=None), TypeError, "ys is required")],
    ids=["unknown_activation", "no_labels"],
)  # fmt: skip
def test_gradient_flow_rejects_bad_input(kwargs, error, match):
    params, xs, ys, _ = make_problem(K=5, H=4, T=3, dtype="float32")
    kwargs = {"ys": ys, **kwargs}
    with pytest.raises(error, match=match):
        bptt_jax.gradient_flow(params, xs, **kwargs)


@pytest.mark.parametrize(
    ("rate", "verdict"), [(0.5, "vanishes"), (0.97, "flat"), (1.03, "flat"), (1.2, "explodes")]
)
def test_classify_rate(rate, verdict):
    assert classify_rate(rate) == verdict


@pytest.mark.slow  # nine gradient flows, three compilations
def test_spectral_sweep_rows_and_what_gamma_guarantees(x64):
    rows = spectral_sweep(
        jax.random.key(0), scales=(0.5, 1.0, 3.0), hidden_size=6, batch=2, steps=10
    )
    assert [(r.activation, r.scale) for r in rows] == [
        (a, s) for a in ("tanh", "sigmoid", "relu") for s in (0.5, 1.0, 3.0)
    ]
    for r in rows:
        slope = 0.25 if r.activation == "sigmoid" else 1.0
        assert r.U_norm == pytest.approx(r.scale, rel=1e-10)  # σQ: ‖U‖₂ = ρ(U) = σ
        assert r.gamma == pytest.approx(r.scale * slope, rel=1e-10)
        assert r.predicted == gamma_verdict(r.gamma)
        if r.gamma < 1:  # sufficient: the measured decay can only vanish
            assert r.decay_rate <= r.gamma * (1 + 1e-12) and r.measured == "vanishes"
    table = format_sweep(rows)
    assert len(table.splitlines()) == 1 + len(rows) and "γ predicts" in table


@pytest.mark.slow  # shapes of their own
@pytest.mark.parametrize("T", [0, 1], ids=["T=0", "T=1"])
def test_gradient_flow_of_an_empty_or_one_step_sequence(T, x64):
    params, xs, ys, h0 = make_problem(K=5, H=4, B=2, T=T, h0=True)
    flow = bptt_jax.gradient_flow(params, xs, ys, h0)
    assert flow.delta_norms.shape == flow.bound.shape == (T, T)
    assert flow.decay.shape == flow.max_slopes.shape == (T,)
    assert float(flow.decay_rate) == 1.0  # no distance to decay over
    if T == 1:  # δ_1^(1) = (Vᵀ r_1) ⊙ f'(h_1): the bound is the measurement itself
        d = np.asarray(bptt_jax.per_loss_deltas(params, xs, ys, h0))[0, 0]  # (B, H)
        expected = np.mean(np.linalg.norm(d, axis=-1))
        assert max_rel_error(flow.delta_norms[0, 0], expected) <= RTOL["float64"]
        assert float(flow.bound[0, 0]) == float(flow.delta_norms[0, 0])
