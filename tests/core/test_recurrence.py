"""The composable recurrence and hand_loss: jax.grad of user programs, hand VJP vs autodiff.

Every gradient here is jax.grad of a user's program; the program runs once around
``recurrence`` (whose VJP is the hand recursion) and once around ``reference``, a plain
``lax.scan`` written below that JAX differentiates itself. They must agree to 1e-10
(float64, max-norm relative). Resets have a second referee: running each segment alone.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax  # noqa: F401  (the docs' example needs it; fail here, not inside exec)
import pytest
from helpers import slow_except
from jax import lax

import bptt_jax
from bptt_jax import DeepParams, hand_loss, recurrence
from bptt_jax.referees.tolerances import AUTODIFF, max_relative_error

K, H, C, B, T = 4, 3, 5, 2, 6
RTOL = AUTODIFF["float64"]
ACT = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "composing.md"


# --- the referee: the same recurrence as a plain lax.scan, differentiated by JAX ---------


def _reference_direction(U, W, b, X, h0, m, r, *, reverse, f):
    """One direction; X (T, B) ids or (T, B, D_in); m, r (T, B) bool (r: entry is h0)."""
    a = (W.T[X] if jnp.issubdtype(X.dtype, jnp.integer) else X @ W.T) + b

    def step(h, inputs):
        a_t, m_t, r_t = inputs
        h_in = jnp.where(r_t[:, None], h0, h)
        h_new = jnp.where(m_t[:, None], f(h_in @ U.T + a_t), h_in)
        return h_new, jnp.where(m_t[:, None], h_new, 0)

    return lax.scan(step, h0, (a, m, r), reverse=reverse)


def reference(params, xs, h0=None, *, activation="tanh", lengths=None, resets=None):
    """(hs ([B,] T, D*H), h_T ([B,] H) or (L*D, [B,] H)), as ``recurrence``."""
    if xs.ndim == (1 if jnp.issubdtype(xs.dtype, jnp.integer) else 2):  # one sequence
        deep = isinstance(params, DeepParams)
        h0 = None if h0 is None else h0[:, None] if deep else h0[None]
        hs, h_T = reference(params, xs[None], h0, activation=activation)
        return hs[0], h_T[:, 0] if deep else h_T[0]
    f = ACT[activation]
    Bx, Tx = xs.shape[:2]
    deep = isinstance(params, DeepParams)
    cells = params.cells() if deep else [((params.U, params.W, params.b),)]
    D = len(cells[0])
    Hx = cells[0][0][0].shape[0]
    if h0 is None:
        h0 = jnp.zeros((len(cells) * D, Bx, Hx), cells[0][0][0].dtype)
    elif not deep:
        h0 = h0[None]
    m = jnp.ones((Tx, Bx), bool) if lengths is None else (jnp.arange(Tx)[:, None] < lengths)
    r = jnp.zeros((Tx, Bx), bool) if resets is None else resets.T
    r_rev = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])])  # a reset at t: h0 enters t - 1
    X = jnp.swapaxes(xs, 0, 1)
    if X.ndim == 2:
        X = jnp.where(m, X, 0)
    finals = []
    for l, cell in enumerate(cells):
        outs = []
        for d, (U, W, b) in enumerate(cell):
            h_T, out = _reference_direction(
                U, W, b, X, h0[l * D + d], m, r_rev if d else r, reverse=d == 1, f=f
            )
            finals.append(h_T)
            outs.append(out)
        X = jnp.concatenate(outs, axis=-1)
    finals = jnp.stack(finals)
    return jnp.swapaxes(X, 0, 1), finals if deep else finals[0]


# --- problems ----------------------------------------------------------------------------


def scaled(p, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: 2.0 * a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), p
    )


def make_params(*, L=1, bidirectional=False, seed=0):
    p = bptt_jax.init_params(
        jax.random.key(seed), K, H, num_classes=C, num_layers=L, bidirectional=bidirectional,
        dtype="float64",
    )  # fmt: skip
    return scaled(p, seed)


def ids(shape, n=K, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, n, shape), jnp.int32)


def normal(shape, seed=2):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float64)


def assert_close(actual, expected, rtol=RTOL):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
    err = max_relative_error(actual, expected)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


RESETS = np.array([[0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], bool)  # (B, T)
LENGTHS = np.array([6, 4])


# --- user programs: jax.grad of each, around recurrence vs around the reference ---------


def prog_embedding(rec):
    """An embedding table before the recurrence (dense inputs), a sum-of-states loss."""
    p, E, w = make_params(), normal((7, K)), normal((B, T, H), seed=3)

    def loss(args, tokens):
        p, E = args
        hs, h_T = rec(p, E[tokens])
        return jnp.sum(w * hs) + jnp.sum(h_T**2)

    return loss, (p, E), ids((B, T), n=7)


def prog_mse_head(rec):
    """A mean-squared-error regression head on the states (readout A, a)."""
    p, A, a = make_params(), normal((2, H)), normal((2,), seed=4)
    target = normal((B, T, 2), seed=5)

    def loss(args, xs):
        p, A, a = args
        hs, _ = rec(p, xs)
        return jnp.mean((hs @ A.T + a - target) ** 2)

    return loss, (p, A, a), ids((B, T))


def prog_l2_hidden(rec):
    """An L2 penalty on the hidden states plus a readout of the final state, h0 learned."""
    p, h0, u = make_params(), normal((B, H), seed=6), normal((H,), seed=7)

    def loss(args, xs):
        p, h0 = args
        hs, h_T = rec(p, xs, h0, activation="sigmoid")
        return 0.1 * jnp.sum(hs**2) + jnp.sum(h_T @ u)

    return loss, (p, h0), normal((B, T, K))


def prog_stacked(rec):
    """Two recurrences stacked by the user: the second reads the first's states."""
    p1 = make_params(seed=0)
    p2 = scaled(bptt_jax.init_params(jax.random.key(1), H, H, dtype="float64"), 1)
    w = normal((B, T, H), seed=3)

    def loss(args, xs):
        p1, p2 = args
        hs1, _ = rec(p1, xs)
        hs2, h_T2 = rec(p2, hs1, activation="relu")
        return jnp.sum(w * hs2) + jnp.sum(jnp.tanh(h_T2))

    return loss, (p1, p2), ids((B, T))


def prog_vmap(rec):
    """The recurrence on one sequence (T,), vmapped over the batch by the user."""
    p, w = make_params(), normal((B, T, H), seed=3)

    def loss(args, xs):
        (p,) = args
        hs, h_T = jax.vmap(lambda x: rec(p, x))(xs)
        return jnp.sum(w * hs) + jnp.sum(h_T)

    return loss, (p,), ids((B, T))


def prog_jit_inside(rec):
    """The user jits the forward; jax.grad (eager) of the jitted function."""
    p, w = make_params(), normal((B, T, H), seed=3)

    @jax.jit
    def loss(args, xs):
        hs, h_T = rec(args[0], xs)
        return jnp.sum(w * hs) + jnp.sum(h_T**2)

    return loss, (p,), ids((B, T))


def prog_inputs_only(rec):
    """A gradient with respect to the inputs only (saliency), parameters held fixed."""
    p, w = make_params(), normal((B, T, H), seed=3)

    def loss(args, _):
        (xs,) = args
        hs, _ = rec(p, xs)
        return jnp.sum(w * hs)

    return loss, (normal((B, T, K), seed=8),), None


PROGRAMS = {
    "embedding": prog_embedding,
    "mse_head": prog_mse_head,
    "l2_hidden": prog_l2_hidden,
    "stacked": prog_stacked,
    "vmap": prog_vmap,
    "jit_inside": prog_jit_inside,
    "inputs_only": prog_inputs_only,
}


@pytest.mark.parametrize("name", slow_except(PROGRAMS, fast={"embedding", "vmap"}))
def test_user_program_gradient(x64, name):
    """jax.jit(jax.grad(program)) (eager jax.grad for "jit_inside"), hand VJP vs autodiff."""
    loss, args, data = PROGRAMS[name](recurrence)
    loss_ref, _, _ = PROGRAMS[name](lambda p, x, h0=None, **kw: reference(p, x, h0, **kw))
    wrap = (lambda f: f) if name == "jit_inside" else jax.jit
    assert_close(wrap(loss)(args, data), wrap(loss_ref)(args, data))
    assert_close(wrap(jax.grad(loss))(args, data), wrap(jax.grad(loss_ref))(args, data))


def test_output_layer_and_ids_get_zero_cotangents(x64):
    p, xs = make_params(), ids((B, T))
    g = jax.grad(lambda p: jnp.sum(recurrence(p, xs)[0]))(p)
    assert not np.any(g.V) and not np.any(g.c)
    dxs = jax.grad(lambda xs: jnp.sum(recurrence(p, xs)[0]), allow_int=True)(xs)
    assert dxs.dtype == jax.dtypes.float0 and dxs.shape == xs.shape


# --- DeepParams, lengths, resets: gradients of a generic program vs autodiff ------------

CASES = {
    # name: (L, bidirectional, inputs, lengths, resets, activation)
    "params-ids-resets": (1, False, "ids", False, True, "tanh"),
    "params-dense-lengths-resets": (1, False, "dense", True, True, "sigmoid"),
    "deep2-bi-ids": (2, True, "ids", False, False, "relu"),
    "deep2-bi-dense-lengths-resets": (2, True, "dense", True, True, "tanh"),
    "deep3-uni-ids-lengths-resets": (3, False, "ids", True, True, "sigmoid"),
}
#: The resets cases also checked against each segment run alone.
SEGMENT_CASES = ["params-dense-lengths-resets", "deep2-bi-dense-lengths-resets"]


def _case(name):
    """Params, data, and the program's arrays; ``arrays`` travel as jit arguments."""
    L, bi, inputs, use_len, use_res, act = CASES[name]
    p = make_params(L=L, bidirectional=bi)
    D = 2 if bi else 1
    h0 = normal((L * D, B, H) if isinstance(p, DeepParams) else (B, H), seed=9)
    arrays = {"xs": ids((B, T)) if inputs == "ids" else normal((B, T, K))}
    lengths = LENGTHS if use_len else np.full(B, T)
    if use_len:
        arrays["lengths"] = jnp.asarray(LENGTHS)
    if use_res:
        arrays["resets"] = jnp.asarray(RESETS & (np.arange(T) < lengths[:, None]))
    w_hs, w_T = normal((B, T, D * H), seed=10), normal(h0.shape, seed=11)
    return p, h0, arrays, act, lengths, w_hs, w_T


@pytest.mark.parametrize("name", slow_except(CASES, fast={"deep2-bi-dense-lengths-resets"}))
def test_gradient_vs_autodiff_of_reference(x64, name):
    p, h0, arrays, act, _, w_hs, w_T = _case(name)
    dense = jnp.issubdtype(arrays["xs"].dtype, jnp.floating)

    def program(rec):
        @jax.jit
        def value_and_grads(p, h0, arrays):
            def loss(p, h0, xs):
                kw = {k: v for k, v in arrays.items() if k != "xs"}
                hs, h_T = rec(p, xs, h0, activation=act, **kw)
                return jnp.sum(w_hs * hs) + jnp.sum(w_T * jnp.tanh(h_T)), (hs, h_T)

            argnums = (0, 1, 2) if dense else (0, 1)
            return jax.value_and_grad(loss, argnums, has_aux=True)(p, h0, arrays["xs"])

        return value_and_grads(p, h0, arrays)

    (_, states), grads = program(recurrence)
    (_, states_ref), grads_ref = program(reference)
    assert_close(states, states_ref)
    assert_close(grads, grads_ref)


def _segments(reset_row, length):
    """[(start, stop), ...] of the real steps of one sequence, split at its resets."""
    starts = [0] + [t for t in range(1, length) if reset_row[t]]
    return list(zip(starts, [*starts[1:], length], strict=True))


@pytest.mark.parametrize("name", slow_except(SEGMENT_CASES, fast={"params-dense-lengths-resets"}))
def test_resets_equal_segments_run_alone(x64, name):
    """With resets, the loss and its gradients equal those of each segment run alone, summed.

    The forward-in-time final state is the last segment's; the backward-in-time one (a
    bidirectional layer) the first segment's.
    """
    p, h0, arrays, act, lengths, w_hs, w_T = _case(name)
    resets = np.asarray(arrays["resets"])
    deep = isinstance(p, DeepParams)
    D = p.num_directions if deep else 1

    def with_resets(p, h0, arrays):
        kw = {k: v for k, v in arrays.items() if k != "xs"}
        hs, h_T = recurrence(p, arrays["xs"], h0, activation=act, **kw)
        return jnp.sum(w_hs * hs) + jnp.sum(w_T * jnp.tanh(h_T))

    def segment_by_segment(p, h0, arrays):
        total = jnp.zeros((), jnp.float64)
        for b in range(B):
            segs = _segments(resets[b], int(lengths[b]))
            h0_b = h0[:, b] if deep else h0[b]
            wT = w_T[:, b] if deep else w_T[b][None]
            for k, (s, e) in enumerate(segs):
                hs, h_T = recurrence(p, arrays["xs"][b, s:e], h0_b, activation=act)  # alone
                total = total + jnp.sum(w_hs[b, s:e] * hs)
                hT = jnp.tanh(h_T) if deep else jnp.tanh(h_T)[None]
                for i in range(wT.shape[0]):  # forward finals: last segment; reverse: first
                    if (i % D == 0 and k == len(segs) - 1) or (i % D == 1 and k == 0):
                        total = total + jnp.sum(wT[i] * hT[i])
        return total

    got = jax.jit(jax.value_and_grad(with_resets, (0, 1)))(p, h0, arrays)
    want = jax.jit(jax.value_and_grad(segment_by_segment, (0, 1)))(p, h0, arrays)
    assert_close(got, want)


def test_reset_on_padding_is_an_error(x64):
    p, xs = make_params(), ids((B, T))
    resets = jnp.zeros((B, T), bool).at[1, 5].set(True)
    with pytest.raises(ValueError, match=r"resets\[1, 5\].*padded"):
        recurrence(p, xs, lengths=jnp.asarray(LENGTHS), resets=resets)


# --- hand_loss: jax.grad of it is the hand BPTT of the full model ----------------------

LOSS_CASES = {
    # name: (L, bidirectional, inputs, labels, lengths, reduction)
    "params-ids-sum-fast": (1, False, "ids", "ids", False, "sum"),
    "params-ids-mean-lengths": (1, False, "ids", "ids", True, "mean"),
    "params-dense-soft": (1, False, "dense", "soft", False, "sum"),
    "deep2-bi-dense-soft-mean-lengths": (2, True, "dense", "soft", True, "mean"),
}


@pytest.mark.parametrize(
    "name",
    slow_except(LOSS_CASES, fast={"params-ids-sum-fast", "deep2-bi-dense-soft-mean-lengths"}),
)
def test_hand_loss_gradient_equals_autodiff_of_loss(x64, name):
    L, bi, inputs, labels, use_len, reduction = LOSS_CASES[name]
    p = make_params(L=L, bidirectional=bi)
    xs = ids((B, T)) if inputs == "ids" else normal((B, T, K))
    if labels == "ids":
        ys = ids((B, T), n=C, seed=12)
    else:
        ys = jax.nn.softmax(normal((B, T, C), seed=12))
    D = 2 if bi else 1
    h0 = normal((L * D, B, H) if isinstance(p, DeepParams) else (B, H), seed=9)
    lengths = jnp.asarray(LENGTHS) if use_len else None
    argnums = (0, 1, 3) if inputs == "dense" else (0, 3)

    def run(f):
        def g(p, xs, ys, h0, lengths):
            return f(p, xs, ys, h0, lengths=lengths, reduction=reduction)

        return jax.jit(jax.value_and_grad(g, argnums))(p, xs, ys, h0, lengths)

    assert_close(run(hand_loss), run(bptt_jax.loss))


@pytest.mark.slow  # its own shapes
def test_hand_loss_with_resets_equals_autodiff_of_reference_loss(x64):
    p, xs, ys = make_params(), ids((B, T)), ids((B, T), n=C, seed=12)
    real = np.arange(T) < LENGTHS[:, None]
    resets, lengths = jnp.asarray(RESETS & real), jnp.asarray(LENGTHS)

    def reference_loss(p, xs, ys, lengths, resets):
        hs, _ = reference(p, xs, lengths=lengths, resets=resets)
        log_yhat = jax.nn.log_softmax(hs @ p.V.T + p.c)
        nll = -jnp.take_along_axis(log_yhat, ys[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(real, nll, 0))

    def loss(p, xs, ys, lengths, resets):
        return hand_loss(p, xs, ys, lengths=lengths, resets=resets)

    args = (p, xs, ys, lengths, resets)
    assert_close(
        jax.jit(jax.value_and_grad(loss))(*args),
        jax.jit(jax.value_and_grad(reference_loss))(*args),
    )


def test_hand_loss_in_an_optax_step(x64):
    """The gradient a user's optax step sees is the hand gradient, scaled by the cotangent."""
    p, xs, ys = make_params(), ids((B, T)), ids((B, T), n=C, seed=12)
    got = jax.jit(jax.grad(lambda p, xs, ys: 3.0 * hand_loss(p, xs, ys)))(p, xs, ys)
    want = jax.tree.map(lambda g: 3.0 * g, bptt_jax.bptt(p, xs, ys)[1])
    assert_close(got, want)


# --- forward mode ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["jvp", "jacfwd"])
def test_forward_mode_names_the_reason(x64, mode):
    """Forward mode on the recurrence itself fails with JAX's message naming custom_vjp."""
    p, xs = make_params(), ids((B, T))

    def f(p):
        return jnp.sum(recurrence(p, xs)[0])

    run = {"jvp": lambda: jax.jvp(f, (p,), (p,)), "jacfwd": lambda: jax.jacfwd(f)(p)}[mode]
    message = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"
    with pytest.raises(TypeError, match=re.escape(message)):
        run()


@pytest.mark.slow  # a Hessian of a scan: compiles forward-over-reverse
def test_hessian_is_forward_over_the_hand_backward(x64):
    """jax.hessian (forward over reverse) differentiates the hand VJP rule: it works."""
    p, w = make_params(), normal((B, T, H), seed=3)

    def program(rec):
        def f(U, xs):
            hs, _ = rec(p._replace(U=U), xs)
            return jnp.sum(w * hs)

        return jax.jit(jax.hessian(f))(p.U, ids((B, T)))

    assert_close(program(recurrence), program(reference))


# --- docs/composing.md runs -------------------------------------------------------------


@pytest.mark.slow  # an optax training loop; the README's examples are in the fast tier
def test_composing_md_code_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/composing.md has no python blocks"
    namespace: dict = {}
    # A user's code under JAX's default promotion (optax's adam mixes int32 step counts
    # with floats, which the suite's strict mode rejects); the library code is tested
    # under strict promotion everywhere else in this file.
    with jax.numpy_dtype_promotion("standard"):
        for block in blocks:
            exec(compile(block, str(DOCS), "exec"), namespace)
