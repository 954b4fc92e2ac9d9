"""One hand backward for every model (issue 13, item 1), refereed by jax.grad.

Hypothesis draws combinations of layers, direction, activation, padding, resets and one
option; the referee is ``jax.grad`` of a plain-JAX loss written here (truncation as
``stop_gradient`` of the carried state at window boundaries, in both time directions).
Shapes are fixed per tier so that compiles are shared.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, max_rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bptt_options import equations

import bptt_jax
from bptt_jax import DeepParams, Layer
from bptt_jax.core.activations import get_activation
from bptt_jax.core.deep import deep_bptt_core
from bptt_jax.core.options import Options

K, H, C, B, T = 5, 4, 6, 3, 7


def deep_params(L, bidirectional, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8 * L + 2))
    D = 2 if bidirectional else 1

    def layer(d_in):
        n = lambda shape, s: (s * jax.random.normal(next(keys), shape)).astype(dtype)  # noqa: E731
        return Layer(U=n((H, H), 0.6), W=n((H, d_in), 0.6), b=n((H,), 0.2))

    layers = tuple(layer(K if l == 0 else D * H) for l in range(L))
    reverse = tuple(layer(K if l == 0 else D * H) for l in range(L)) if bidirectional else ()
    V = (0.6 * jax.random.normal(next(keys), (C, D * H))).astype(dtype)
    c = (0.2 * jax.random.normal(next(keys), (C,))).astype(dtype)
    return DeepParams(layers=layers, reverse_layers=reverse, V=V, c=c)


def reference_loss(p, xs, ys, h0, mask, resets, truncate, reduction, activation, dh_T=None):
    """Plain JAX, a Python loop over steps; ``jax.grad`` of it is the referee.

    ``dh_T`` (like ``h0``): adds ``Σ dh_T ⊙ h_T`` of the final states (each sequence's own
    end), whose gradient is what ``bptt_chunk(dh_T=...)`` carries in.
    """
    f = get_activation(activation).f
    X = jax.nn.one_hot(xs.T, K, dtype=p.V.dtype) if xs.ndim == 2 else jnp.swapaxes(xs, 0, 1)
    m = jnp.ones((T, B, 1), bool) if mask is None else mask.T[..., None]
    r = jnp.zeros((T, B, 1), bool) if resets is None else resets.T[..., None] & m
    D = p.num_directions
    extra = 0.0
    for l, cell in enumerate(p.cells()):
        outs = []
        for d, layer in enumerate(cell):
            h, hs = h0[l * D + d], [None] * T
            for i, t in enumerate(range(T) if d == 0 else reversed(range(T))):
                prev = t - 1 if d == 0 else t + 1
                reset = r[t] if d == 0 else (r[t + 1] if t + 1 < T else jnp.zeros_like(r[t]))
                cut = truncate is not None and i > 0 and (t if d == 0 else t + 1) % truncate == 0
                if cut:
                    h = jnp.where(m[t] & m[prev], jax.lax.stop_gradient(h), h)
                h_in = jnp.where(reset, h0[l * D + d], h)
                h_new = f(h_in @ layer.U.T + X[t] @ layer.W.T + layer.b)
                h = jnp.where(m[t], h_new, h_in)
                hs[t] = jnp.where(m[t], h_new, 0)
            if dh_T is not None:
                extra = extra + jnp.sum(dh_T[l * D + d] * h)
            outs.append(jnp.stack(hs))
        X = jnp.concatenate(outs, axis=-1)
    log_yhat = jax.nn.log_softmax(X @ p.V.T + p.c)
    Y = jnp.swapaxes(ys, 0, 1)
    if Y.ndim == 2:
        Y = jax.nn.one_hot(Y, C, dtype=log_yhat.dtype)
    e = jnp.where(m[..., 0], -jnp.sum(Y * log_yhat, axis=-1), 0)
    n = jnp.sum(m) if reduction == "mean" else 1
    return jnp.sum(e) / jnp.asarray(n, e.dtype) + extra


def problem(dtype, ragged, with_resets, dense, soft, seed=1):
    k = jax.random.split(jax.random.key(seed), 4)
    xs = jax.random.randint(k[0], (B, T), 0, K)
    if dense:
        xs = jax.random.normal(k[0], (B, T, K)).astype(dtype)
    ys = jax.random.randint(k[1], (B, T), 0, C)
    if soft:
        ys = (0.7 * jax.nn.one_hot(ys, C) + 0.3 / C).astype(dtype)
    lengths = jnp.array([T, 4, 2]) if ragged else None
    resets = None
    if with_resets:
        resets = jnp.zeros((B, T), bool).at[0, 3].set(True).at[0, 5].set(True).at[1, 1].set(True)
    return xs, ys, lengths, resets


OPTIONS = {
    "none": {},
    "chunk3": dict(chunk=3),  # T = 7: a first chunk of 1 step
    "truncate3": dict(truncate=3),
    "truncate2_chunk3": dict(truncate=2, chunk=3),
    "recompute": dict(recompute=True, chunk=2),
    "mean": {},
    "soft": {},
    "dense_unroll": dict(unroll=2, chunk=4),
}

combos = st.tuples(
    st.sampled_from([1, 2, 3]),  # L
    st.booleans(),  # bidirectional
    st.sampled_from(["tanh", "sigmoid", "relu"]),
    st.booleans(),  # ragged lengths
    st.booleans(),  # resets
    st.sampled_from(list(OPTIONS)),
)


def check_combo(combo, dtype):
    L, bi, activation, ragged, with_resets, option = combo
    kwargs = dict(OPTIONS[option])
    reduction = "mean" if option == "mean" else "sum"
    xs, ys, lengths, resets = problem(dtype, ragged, with_resets, option == "dense_unroll",
                                      option == "soft")  # fmt: skip
    p = deep_params(L, bi, dtype)
    D = 2 if bi else 1
    h0 = (0.3 * jax.random.normal(jax.random.key(5), (L * D, B, H))).astype(dtype)
    mask = None if lengths is None else jnp.arange(T)[None] < lengths[:, None]
    ref = jax.value_and_grad(reference_loss)(
        p, xs, ys, h0, mask, resets, kwargs.get("truncate"), reduction, activation
    )
    if kwargs.get("truncate") is None:  # the referee's loss is bptt_jax.loss
        E = bptt_jax.loss(p, xs, ys, h0, lengths=lengths, resets=resets, reduction=reduction,
                          activation=activation)  # fmt: skip
        assert max_rel_error(E, ref[0]) <= RTOL[dtype]
    got = bptt_jax.bptt(p, xs, ys, h0, lengths=lengths, resets=resets, reduction=reduction,
                        activation=activation, **kwargs)  # fmt: skip
    assert_tree_close(got, ref, rtol=RTOL[dtype])


@pytest.mark.slow  # every example compiles a new model; tests/core/test_resets.py and
# test_deep.py keep deep models with options in the fast tier
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(combos)
def test_every_model_and_option_matches_jax_grad_float64(x64, combo):
    check_combo(combo, "float64")


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(combos, st.sampled_from(["float64", "float32"]))
def test_every_model_and_option_matches_jax_grad_many(combo, dtype):
    with jax.enable_x64(True):
        check_combo(combo, dtype)


@pytest.mark.slow  # compiles two bf16 and two float32 deep backwards
@pytest.mark.parametrize("bi", [False, True], ids=["stacked", "bidirectional"])
def test_bf16_products_are_close_to_the_float32_gradient(bi):
    # bf16 operands, float32 accumulation: O(u) from the float32 gradient, u = 2**-8.
    p = deep_params(2, bi, "float32")
    xs, ys, lengths, resets = problem("float32", True, True, False, False)
    exact = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets)
    half = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets, matmul_dtype="bfloat16")
    pairs = zip(jax.tree.leaves(half), jax.tree.leaves(exact), strict=True)
    errors = [max_rel_error(a, e) for a, e in pairs]
    assert 0 < max(errors) <= 16 * 2.0**-8, errors


@pytest.mark.slow  # three compilations of a deep backward
def test_clip_delta_acts_on_deep_models_and_is_exact_when_never_reached(x64):
    p = deep_params(2, True, "float64")
    xs, ys, lengths, resets = problem("float64", True, True, False, False)
    exact = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets)
    loose = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets, clip_delta=1e6)
    assert_tree_close(loose, exact, rtol=1e-12)
    tight = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets, clip_delta=1e-2)
    assert max_rel_error(tight[1].layers[0].U, exact[1].layers[0].U) > 1e-3


@pytest.mark.slow  # four compilations of a deep backward
def test_bptt_chunk_carries_dh_T_and_h0_through_deep_models(x64):
    # Two halves processed backwards in time add up to the whole sequence.
    p = deep_params(2, False, "float64")
    xs, ys, _, resets = problem("float64", False, True, False, False)
    resets = resets.at[:, 4:].set(False)  # a reset restarts from the h0 passed in
    whole = bptt_jax.bptt(p, xs, ys, resets=resets, chunk=2)
    h0 = jnp.zeros((2, B, H))
    _, _, _, h_mid = bptt_jax.bptt_chunk(p, xs[:, :4], ys[:, :4], h0, resets=resets[:, :4])
    E2, g2, dh_mid, _ = bptt_jax.bptt_chunk(p, xs[:, 4:], ys[:, 4:], h_mid, resets=resets[:, 4:])
    E1, g1, _, _ = bptt_jax.bptt_chunk(
        p, xs[:, :4], ys[:, :4], h0, dh_T=dh_mid, resets=resets[:, :4], recompute=True
    )
    assert_tree_close((E1 + E2, jax.tree.map(jnp.add, g1, g2)), whole, rtol=1e-10)


@pytest.mark.parametrize(
    "bi", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["stacked", "bidirectional"]
)
def test_bptt_chunk_with_truncate_lengths_and_dh_T_matches_jax_grad(x64, bi):
    # dh_T enters at each sequence's own last real step, uncut by the truncation windows
    # (T = 7, τ = 3: windows 1-3, 4-6, 7; lengths 7, 4, 2 end inside and at window ends).
    p = deep_params(2, bi, "float64")
    xs, ys, lengths, _ = problem("float64", True, False, False, False)
    mask = jnp.arange(T)[None] < lengths[:, None]
    shape = (2 * p.num_directions, B, H)
    h0 = 0.3 * jax.random.normal(jax.random.key(5), shape, "float64")
    dh_T = 0.5 * jax.random.normal(jax.random.key(6), shape, "float64")
    referee = jax.jit(jax.value_and_grad(reference_loss, argnums=(0, 3)), static_argnums=(6, 7, 8))
    E_ref, (g_ref, dh0_ref) = referee(p, xs, ys, h0, mask, None, 3, "sum", "tanh", dh_T)
    E, g, dh0, h_T = bptt_jax.bptt_chunk(p, xs, ys, h0, dh_T=dh_T, lengths=lengths, truncate=3)
    assert max_rel_error(E + jnp.sum(dh_T * h_T), E_ref) <= 1e-10  # E without Σ dh_T ⊙ h_T
    assert_tree_close((g, dh0), (g_ref, dh0_ref), rtol=1e-10)


def test_an_empty_sequence_gives_zero_loss_and_gradients_in_a_bidirectional_model():
    p = deep_params(1, True, "float32")
    xs, ys = jnp.zeros((B, 0), int), jnp.zeros((B, 0), int)
    dh_T = jnp.ones((2, B, H))
    E, g, dh0, h_T = bptt_jax.bptt_chunk(p, xs, ys, 0.5 * dh_T, dh_T=dh_T)
    E2, g2 = jax.value_and_grad(bptt_jax.hand_loss)(p, xs, ys)
    assert float(E) == float(E2) == 0.0
    assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in jax.tree.leaves((g, g2)))
    assert_tree_close((dh0, h_T), (dh_T, 0.5 * dh_T), rtol=0)


@pytest.mark.slow  # compiles a 3-layer bidirectional backward twice
def test_recompute_in_a_three_layer_bidirectional_model_matches_jax_grad(x64):
    # L = 3: the middle layer's input is run again from xs when its sweeps begin
    # (the top layer keeps its input); chunk 3 of T = 7 leaves a first chunk of 1 step.
    p = deep_params(3, True, "float64")
    xs, ys, lengths, resets = problem("float64", True, True, False, False)
    h0 = (0.3 * jax.random.normal(jax.random.key(5), (6, B, H))).astype("float64")
    mask = jnp.arange(T)[None] < lengths[:, None]
    ref = jax.value_and_grad(reference_loss)(p, xs, ys, h0, mask, resets, None, "sum", "tanh")
    got = bptt_jax.bptt(p, xs, ys, h0, lengths=lengths, resets=resets, recompute=True, chunk=3)
    assert_tree_close(got, ref, rtol=1e-10)
    stored = bptt_jax.bptt(p, xs, ys, h0, lengths=lengths, resets=resets, chunk=3)
    assert_tree_close(got, stored, rtol=1e-12)


@pytest.mark.slow  # compiles two 3-layer bidirectional backwards at T = 256
def test_recompute_lowers_the_memory_of_a_bidirectional_model():
    # XLA's temp bytes: the cells' stored states go; the (T, B, 2H) gradient handed
    # down and the top layer's input and output stay (docs/performance.md).
    Tm, Bm, Hm, L = 256, 4, 32, 3
    p = bptt_jax.init_params(jax.random.key(0), 5, Hm, num_layers=L, bidirectional=True)
    xs = jnp.zeros((Bm, Tm), int)
    h0 = jnp.zeros((2 * L, Bm, Hm))

    def temp_bytes(recompute):
        fn = functools.partial(deep_bptt_core, options=Options(recompute=recompute, chunk=16))
        return jax.jit(fn).lower(p, xs, xs, h0).compile().memory_analysis().temp_size_in_bytes

    TBH = Tm * Bm * Hm * 4
    assert temp_bytes(True) <= temp_bytes(False) - 2 * TBH


@pytest.mark.parametrize("bi", [False, True], ids=["stacked", "bidirectional"])
def test_no_time_by_classes_array_in_deep_models(bi):
    Kb, Tb, Bb = 50, 40, 2
    p = deep_params(2, bi, "float32")
    p = p._replace(V=jnp.zeros((Kb, p.V.shape[1])), c=jnp.zeros((Kb,)))
    xs = jnp.zeros((Bb, Tb), int) % K
    ys = jnp.zeros((Bb, Tb), int)
    h0 = jnp.zeros((2 * (2 if bi else 1), Bb, H))
    mask = jnp.ones((Bb, Tb), bool)

    def largest(**kw):
        fn = lambda *a: deep_bptt_core(*a, options=Options(**kw))  # noqa: E731
        jaxpr = jax.make_jaxpr(fn)(p, xs, ys, h0, mask).jaxpr
        return max(int(np.prod(v.aval.shape)) for eqn in equations(jaxpr) for v in eqn.outvars)

    assert largest(chunk=5) < Tb * Bb * Kb
    assert largest(chunk=Tb) >= Tb * Bb * Kb  # the check sees it when it is there
