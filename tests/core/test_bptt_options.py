"""The performance options of the hand BPTT, each refereed by jax.grad.

Chunked output layer (``chunk``), recompute mode, ``unroll`` and bf16 matrix
products change how the gradient is computed, never what it is (bf16: up to
its rounding). Timings live in ``benchmarks/``, not here.
"""

import jax
import jax.extend
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
from jax import lax

import bptt_jax
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.options import Options
from bptt_jax.core.schedule import default_chunk

T = 11  # a prime: most chunk sizes leave a first, shorter chunk

# name -> (make_problem kwargs, bptt keyword arguments)
CASES = {
    "chunk1": (dict(), dict(chunk=1)),
    "chunk3_remainder": (dict(), dict(chunk=3)),
    "chunk_T": (dict(), dict(chunk=T)),
    "chunk_over_T": (dict(), dict(chunk=50)),
    "recompute_default": (dict(), dict(recompute=True)),
    "recompute_chunk4": (dict(), dict(recompute=True, chunk=4)),
    "recompute_dense_soft": (dict(inputs="dense", C=4), dict(recompute=True, chunk=5)),
    "dense_chunk2": (dict(inputs="dense"), dict(chunk=2)),
    "unroll3": (dict(), dict(unroll=3, chunk=4)),
    "unroll_recompute": (dict(), dict(unroll=2, recompute=True)),
    "single_sequence": (dict(B=None), dict(chunk=4, recompute=True)),
}


def soften(ys, C, dtype):
    """Soft labels: 0.8 on the class, the rest spread evenly."""
    return 0.8 * jax.nn.one_hot(ys, C, dtype=dtype) + jnp.asarray(0.2 / C, dtype)


# Each case compiles its own backward: the fast tier runs a chunked recompute
# with a remainder chunk on dense inputs and soft labels, in float64.
@pytest.mark.parametrize("case", slow_except(CASES, fast=["recompute_dense_soft"]))
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_fast_paths_match_jax_grad(case, dtype):
    problem, kwargs = CASES[case]
    problem = dict(dict(K=6, H=5, B=3, T=T, h0=True, dtype=dtype), **problem)
    with jax.enable_x64(True):
        params, xs, ys, h0 = make_problem(**problem)
        if problem.get("C"):
            ys = soften(ys, problem["C"], dtype)
        expected = loss_value_and_grad(params, xs, ys, h0)
        assert_tree_close(bptt_jax.bptt(params, xs, ys, h0, **kwargs), expected, rtol=RTOL[dtype])


@pytest.mark.slow  # three compilations of bptt_core
@pytest.mark.parametrize("recompute", [False, True], ids=["store_all", "recompute"])
def test_chunks_carry_dh_T_truncation_and_clipping(recompute, x64):
    # dh0, h_T, truncation cuts falling inside and between chunks, and δ
    # clipping (not a gradient of E, so refereed by the one-chunk run).
    params, xs, ys, h0 = make_problem(K=6, H=5, B=3, T=T, h0=True)
    dh_T = 0.3 * jnp.ones_like(h0)
    whole = bptt_core(
        params, xs, ys, h0, dh_T, options=Options(truncate=4, clip_delta=0.5, chunk=T)
    )
    options = Options(truncate=4, clip_delta=0.5, chunk=3, recompute=recompute)
    chunked = bptt_core(params, xs, ys, h0, dh_T, options=options)
    assert_tree_close(chunked, whole, rtol=RTOL["float64"])
    # And the clipping is active here, so that this compared something.
    unclipped = bptt_core(params, xs, ys, h0, dh_T, options=Options(truncate=4, chunk=T))
    assert max_rel_error(unclipped[1].U, whole[1].U) > 1e-3


def equations(jaxpr):
    """Every equation of ``jaxpr``, those of scan bodies and other sub-jaxprs included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(sub)


def test_no_time_by_classes_array_is_built():
    # The chunked backward never materialises a (T, B, C) array: the largest
    # array of the whole computation (scan bodies included) is per chunk.
    K, H, B, T_ = 50, 4, 2, 40
    params, xs, ys, h0 = make_problem(K=K, H=H, B=B, T=T_, h0=True, dtype="float32")

    def largest(**kw):
        fn = lambda p, x, y, h: bptt_core(p, x, y, h, options=Options(**kw))  # noqa: E731
        jaxpr = jax.make_jaxpr(fn)(params, xs, ys, h0).jaxpr
        return max(int(np.prod(v.aval.shape)) for eqn in equations(jaxpr) for v in eqn.outvars)

    chunk = default_chunk(T_, B)
    assert largest() == chunk * B * K < T_ * B * K
    assert largest(chunk=T_) == T_ * B * K  # the check sees it when it is there


@pytest.mark.slow  # compiles at a vocabulary of 2000 and at T = 1024
def test_memory_of_the_fast_paths():
    # XLA's own account of the temporary buffers: the chunked backward needs
    # a small fraction of autodiff's at a large vocabulary (issue 7: <= 25 %),
    # and recompute mode less than storing every h_t on a long sequence.
    def temp_bytes(fn, *args):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    params, xs, ys, h0 = make_problem(K=2000, H=32, B=4, T=64, h0=True, dtype="float32")
    autodiff = temp_bytes(jax.value_and_grad(bptt_jax.loss), params, xs, ys, h0)
    hand = temp_bytes(lambda *a: bptt_core(*a)[:2], params, xs, ys, h0)
    assert hand <= 0.25 * autodiff, (hand, autodiff)

    params, xs, ys, h0 = make_problem(K=5, H=64, B=4, T=1024, h0=True, dtype="float32")
    store_all = temp_bytes(lambda *a: bptt_core(*a)[:2], params, xs, ys, h0)
    recompute = temp_bytes(
        lambda *a: bptt_core(*a, options=Options(recompute=True))[:2], params, xs, ys, h0
    )
    TBH = 1024 * 4 * 64 * 4  # the bytes of all h_t
    assert store_all >= TBH > 4 * recompute, (store_all, recompute)


# bf16: unit roundoff u = 2**-8. The hand backward rounds r_t and δ_t to bf16
# before each product; autodiff of the same bf16 forward rounds the products'
# results instead. Both are O(u) from the exact gradient, so they must agree
# to a few u, and both must differ from the float32 gradient by about u (or
# the option did nothing).
BF16_U = 2.0**-8


def bf16_loss(params, xs, ys, h0):
    """The seed's loss with every matrix product in bf16, accumulated in float32."""
    U, V, W, b, c = params

    def mm(a, m):
        bf16 = jnp.bfloat16
        return jnp.matmul(a.astype(bf16), m.astype(bf16), preferred_element_type=a.dtype)

    def step(h, a_t):
        h = jnp.tanh(mm(h, U.T) + a_t)
        return h, h

    _, hs = lax.scan(step, h0, W.T[xs.T] + b)  # (T, B, H)
    log_yhat = jax.nn.log_softmax(mm(hs, V.T) + c)
    return -jnp.sum(jnp.take_along_axis(log_yhat, ys.T[..., None], axis=-1))


@pytest.mark.slow  # compiles bf16 hand and autodiff paths
@pytest.mark.parametrize("recompute", [False, True], ids=["store_all", "recompute"])
def test_bf16_matches_jax_grad_at_matching_precision(recompute):
    params, xs, ys, h0 = make_problem(K=30, H=24, B=4, T=T, h0=True, dtype="float32")
    kwargs = dict(matmul_dtype="bfloat16", recompute=recompute, chunk=4)
    E, grads = bptt_jax.bptt(params, xs, ys, h0, **kwargs)
    E_ad, grads_ad = jax.value_and_grad(bf16_loss)(params, xs, ys, h0)
    _, grads_32 = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, h0)
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, params)
    assert max_rel_error(E, E_ad) <= 4 * BF16_U
    for name, g, g_ad, g_32 in zip(Params_fields(), grads, grads_ad, grads_32, strict=True):
        assert max_rel_error(g, g_ad) <= 4 * BF16_U, name
        assert max_rel_error(g, g_32) >= BF16_U / 64, f"{name}: bf16 made no difference"


def Params_fields():
    return bptt_jax.Params._fields


def test_bf16_products_are_bf16():
    params, xs, ys, h0 = make_problem(K=6, H=5, B=2, T=4, h0=True, dtype="float32")
    fn = lambda *a: bptt_core(*a, options=Options(matmul_dtype=jnp.bfloat16))  # noqa: E731
    dots = [
        eqn
        for eqn in equations(jax.make_jaxpr(fn)(params, xs, ys, h0).jaxpr)
        if eqn.primitive.name == "dot_general"
    ]
    # forward h, logits, dV, Vᵀr, Uᵀδ, dU: every product in bf16, float32 out
    assert len(dots) == 6
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


BAD = {
    "chunk_zero": (dict(chunk=0), ValueError, "chunk must be None"),
    "chunk_float": (dict(chunk=2.5), TypeError, "chunk must be None"),
    "unroll_zero": (dict(unroll=0), ValueError, "unroll must be None .* or a positive int, got 0"),
    "unroll_float": (dict(unroll=2.5), TypeError, "unroll must be None"),
    "recompute_str": (dict(recompute="yes"), TypeError, "recompute must be True or False"),
    "matmul_float16": (dict(matmul_dtype="float16"), ValueError, "matmul_dtype must be None"),
    "matmul_junk": (dict(matmul_dtype="fast"), ValueError, "matmul_dtype must be None"),
}


@pytest.mark.parametrize("name", BAD, ids=list(BAD))
def test_bad_option_is_a_clear_error(name):
    kwargs, error, match = BAD[name]
    params, xs, ys, _ = make_problem(K=4, H=3, B=2, T=3, dtype="float32")
    with pytest.raises(error, match=match):
        bptt_jax.bptt(params, xs, ys, **kwargs)
