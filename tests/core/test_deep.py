"""Issue 4: deep, bidirectional, variable-length RNNs -- hand BPTT vs jax.grad."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, loss_value_and_grad, max_rel_error

import bptt_jax
from bptt_jax import DeepParams, Params

K, H, C, T = 5, 3, 4, 6


def make_deep(L, bidirectional, *, dtype="float64", seed=0, K=K, H=H, C=C):
    """Parameters (scaled up from init_params, non-zero biases) as numpy-made arrays."""
    p = bptt_jax.init_params(
        jax.random.key(seed), K, H, num_classes=C, num_layers=L, bidirectional=bidirectional,
        dtype=dtype,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: 2.5 * a + 0.2 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), p
    )


def make_batch(B, T, *, seed=0, C=C, K=K):
    rng = np.random.default_rng(100 + seed)
    xs = jnp.asarray(rng.integers(0, K, (B, T)), jnp.int32)
    ys = jnp.asarray(rng.integers(0, C, (B, T)), jnp.int32)
    return xs, ys


def leaves_close(a, b, rtol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        err = max_rel_error(x, y)
        assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


MATRIX = list(itertools.product([1, 2, 3], [False, True], list(bptt_jax.activations)))
IDS = [f"L{L}-{'bi' if bi else 'uni'}-{act}" for L, bi, act in MATRIX]
# Every model is a compilation of its own: the fast tier checks the deepest
# bidirectional one; .ci/run the whole matrix.
FAST_MODEL = (2, True, "tanh")


def _check_against_jax_grad(params, xs, ys, lengths, activation, dtype):
    E, grads = bptt_jax.bptt(params, xs, ys, lengths=lengths, activation=activation)
    E_ref, grads_ref = loss_value_and_grad(params, xs, ys, lengths=lengths, activation=activation)
    assert abs(float(E) - float(E_ref)) <= RTOL[dtype] * abs(float(E_ref))
    leaves_close(grads, grads_ref, RTOL[dtype])


# float64 for every model; float32 for every model with tanh: the float32 run
# exercises the same code at another dtype (a compile of its own), and
# tests/core/test_backward.py draws float32 with every activation.
RAGGED_CASES = [(m, "float64") for m in MATRIX]
RAGGED_CASES += [(m, "float32") for m in MATRIX if m[2] == "tanh"]


@pytest.mark.parametrize(
    ("L", "bidirectional", "activation", "dtype"),
    [
        pytest.param(*m, dt, id=f"{dt}-{i}",
                     marks=() if (m, dt) == (FAST_MODEL, "float64") else pytest.mark.slow)
        for (m, dt), i in zip(RAGGED_CASES, [IDS[MATRIX.index(c[0])] for c in RAGGED_CASES],
                              strict=True)
    ],
)  # fmt: skip
def test_hand_gradients_match_jax_grad_ragged_and_not(L, bidirectional, activation, dtype, x64):
    # Ragged: a full-length sequence, a length-1 one and one in between; then the
    # same batch with every sequence at full length (same shapes: one compile).
    params = make_deep(L, bidirectional, dtype=dtype)
    xs, ys = make_batch(3, T)
    _check_against_jax_grad(params, xs, ys, jnp.array([T, 1, 4]), activation, dtype)
    _check_against_jax_grad(params, xs, ys, jnp.array([T, T, T]), activation, dtype)


@pytest.mark.slow  # a compilation per model and dtype
@pytest.mark.parametrize(
    ("L", "bidirectional", "dtype"),
    [(L, bi, "float64") for L, bi in itertools.product([1, 2, 3], [False, True])]
    + [(3, True, "float32")],  # float32: the deepest model (B = 1 is about shapes, not dtype)
    ids=["L1-uni", "L1-bi", "L2-uni", "L2-bi", "L3-uni", "L3-bi", "float32-L3-bi"],
)
def test_hand_gradients_match_jax_grad_batch_of_one(L, bidirectional, dtype, x64):
    params = make_deep(L, bidirectional, dtype=dtype)
    xs, ys = make_batch(1, T)
    _check_against_jax_grad(params, xs, ys, None, "tanh", dtype)


@pytest.mark.slow  # draws three models eagerly
def test_init_params_returns_seed_params_or_deep_params():
    p = bptt_jax.init_params(jax.random.key(0), K, H)
    assert isinstance(p, Params)
    d = bptt_jax.init_params(
        jax.random.key(0), K, H, num_classes=C, num_layers=3, bidirectional=True
    )
    assert isinstance(d, DeepParams) and d.num_layers == 3 and d.num_directions == 2
    assert [layer.W.shape for layer in d.layers] == [(H, K), (H, 2 * H), (H, 2 * H)]
    assert [layer.W.shape for layer in d.reverse_layers] == [(H, K), (H, 2 * H), (H, 2 * H)]
    assert d.V.shape == (C, 2 * H) and d.c.shape == (C,)
    u = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=2)
    assert u.reverse_layers == () and u.layers[1].W.shape == (H, H) and u.V.shape == (K, H)


@pytest.mark.slow  # compiles two sequence lengths and forward
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_padding_invariance(bidirectional, x64):
    params = make_deep(2, bidirectional)
    xs, ys = make_batch(3, T)
    lengths = jnp.array([T, 2, 5])
    E, grads = bptt_jax.bptt(params, xs, ys, lengths=lengths)
    hs, _, h_fin = bptt_jax.forward(params, xs, lengths=lengths, return_state=True)
    extra_x, extra_y = make_batch(3, 4, seed=7)  # any tokens
    xs2, ys2 = jnp.concatenate([xs, extra_x], 1), jnp.concatenate([ys, extra_y], 1)
    E2, grads2 = bptt_jax.bptt(params, xs2, ys2, lengths=lengths)
    hs2, z2, h_fin2 = bptt_jax.forward(params, xs2, lengths=lengths, return_state=True)
    assert float(E2) == pytest.approx(float(E), rel=1e-13)
    leaves_close(grads2, grads, 1e-12)
    np.testing.assert_allclose(hs2[:, :T], hs, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h_fin2, h_fin, rtol=1e-13, atol=1e-15)
    assert not np.any(np.asarray(hs2[:, T:])) and not np.any(np.asarray(z2[:, T:]))


@pytest.mark.slow  # a compilation per sequence length
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_padded_batch_equals_each_sequence_alone(bidirectional, x64):
    params = make_deep(2, bidirectional, seed=1)
    xs, ys = make_batch(3, T, seed=1)
    lengths = [T, 1, 4]
    E, grads = bptt_jax.bptt(params, xs, ys, lengths=jnp.array(lengths))
    _, _, h_fin = bptt_jax.forward(params, xs, lengths=jnp.array(lengths), return_state=True)
    E_sum, total = 0.0, None
    for i, n in enumerate(lengths):
        E_i, g_i = bptt_jax.bptt(params, xs[i, :n], ys[i, :n])  # one sequence, no padding
        _, _, h_i = bptt_jax.forward(params, xs[i, :n], return_state=True)
        np.testing.assert_allclose(h_fin[:, i], h_i, rtol=1e-13, atol=1e-15)
        E_sum += float(E_i)
        total = g_i if total is None else jax.tree.map(jnp.add, total, g_i)
    assert float(E) == pytest.approx(E_sum, rel=1e-13)
    leaves_close(grads, total, 1e-12)


@pytest.mark.slow  # shapes of its own
def test_backward_direction_starts_at_each_sequences_own_end(x64):
    # The reverse direction's output at step 1 of a sequence of length n must be
    # its state after reading x_n .. x_1 from h0 -- not after reading padding.
    params = make_deep(1, True, seed=2)
    xs, _ = make_batch(2, T, seed=2)
    hs, _ = bptt_jax.forward(params, xs, lengths=jnp.array([T, 3]))
    alone, _ = bptt_jax.forward(params, xs[1, :3])
    np.testing.assert_allclose(hs[1, :3], alone, rtol=1e-13, atol=1e-15)


@pytest.mark.slow  # compiles the mask path, both reductions and jax.grad
def test_mask_equals_lengths_and_mean_is_sum_over_real_steps(x64):
    params = make_deep(2, True, seed=3)
    xs, ys = make_batch(3, T, seed=3)
    lengths = jnp.array([4, T, 2])
    mask = jnp.arange(T) < lengths[:, None]
    E_l, g_l = bptt_jax.bptt(params, xs, ys, lengths=lengths)
    E_m, g_m = bptt_jax.bptt(params, xs, ys, mask=mask)
    assert float(E_l) == float(E_m)
    leaves_close(g_m, g_l, 0.0)
    E_mean, g_mean = bptt_jax.bptt(params, xs, ys, lengths=lengths, reduction="mean")
    n = int(lengths.sum())
    assert float(E_mean) == pytest.approx(float(E_l) / n, rel=1e-14)
    leaves_close(g_mean, jax.tree.map(lambda g: g / n, g_l), 1e-13)
    _, g_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, lengths=lengths, reduction="mean")
    leaves_close(g_mean, g_ref, 1e-10)


@pytest.mark.slow  # compiles the seed's and the deep path
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_seed_params_with_lengths_and_reduction(reduction, x64):
    from helpers import make_problem

    params, xs, ys, h0 = make_problem(K=K, H=H, C=C, B=3, T=T, h0=True)
    lengths = jnp.array([T, 2, 5])
    E, grads = bptt_jax.bptt(params, xs, ys, h0, lengths=lengths, reduction=reduction)
    E_ref, grads_ref = jax.value_and_grad(bptt_jax.loss)(
        params, xs, ys, h0, lengths=lengths, reduction=reduction
    )
    assert isinstance(grads, Params)
    assert float(E) == pytest.approx(float(E_ref), rel=1e-13)
    assert_tree_close(grads, grads_ref, rtol=1e-10)
    # Full lengths: the deep path and the seed's core agree.
    E_full, g_full = bptt_jax.bptt(params, xs, ys, h0, lengths=jnp.full((3,), T))
    E_seed, g_seed = bptt_jax.bptt(params, xs, ys, h0)
    assert float(E_full) == pytest.approx(float(E_seed), rel=1e-14)
    assert_tree_close(g_full, g_seed, rtol=1e-13)


@pytest.mark.slow  # compiles bptt_chunk and jax.grad with respect to h0
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_initial_state_gradient_and_final_state(bidirectional, x64):
    params = make_deep(2, bidirectional, seed=4)
    xs, ys = make_batch(2, T, seed=4)
    S = 2 * (2 if bidirectional else 1)
    h0 = 0.3 * jax.random.normal(jax.random.key(5), (S, 2, H), jnp.float64)
    lengths = jnp.array([T, 3])
    _, _, dh0, h_fin = bptt_jax.bptt_chunk(params, xs, ys, h0, lengths=lengths)
    dh0_ref = jax.grad(lambda h: bptt_jax.loss(params, xs, ys, h, lengths=lengths))(h0)
    assert dh0.shape == h_fin.shape == (S, 2, H)
    assert max_rel_error(dh0, dh0_ref) <= 1e-10
    _, _, h_fin_fwd = bptt_jax.forward(params, xs, h0, lengths=lengths, return_state=True)
    np.testing.assert_array_equal(h_fin, h_fin_fwd)


@pytest.mark.slow  # a compilation per chunk shape
def test_unidirectional_stream_in_chunks_carries_state_and_gradient(x64):
    params = make_deep(3, False, seed=6)
    xs, ys = make_batch(2, 10, seed=6)
    bounds = [(0, 4), (4, 10)]
    h = jnp.zeros((3, 2, H), jnp.float64)
    starts = []
    for lo, hi in bounds:
        starts.append(h)
        *_, h = bptt_jax.bptt_chunk(params, xs[:, lo:hi], ys[:, lo:hi], h)
    dh, total = None, None
    for (lo, hi), h_start in reversed(list(zip(bounds, starts, strict=True))):
        _, g, dh, _ = bptt_jax.bptt_chunk(params, xs[:, lo:hi], ys[:, lo:hi], h_start, dh_T=dh)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    _, full = bptt_jax.bptt(params, xs, ys)
    leaves_close(total, full, 1e-12)


@pytest.mark.slow  # shapes of its own
def test_single_sequence_deep_shapes(x64):
    params = make_deep(2, True, seed=8)
    xs, ys = make_batch(1, T, seed=8)
    hs, z, h_fin = bptt_jax.forward(params, xs[0], return_state=True)
    assert hs.shape == (T, 2 * H) and z.shape == (T, C) and h_fin.shape == (4, H)
    E, grads, dh0, _ = bptt_jax.bptt_chunk(params, xs[0], ys[0], lengths=4)
    assert dh0.shape == (4, H)
    E_b, grads_b = bptt_jax.bptt(params, xs, ys, lengths=jnp.array([4]))
    assert float(E) == float(E_b)
    leaves_close(grads, grads_b, 0.0)


@pytest.mark.slow  # shapes of its own
def test_dense_inputs_and_soft_labels_deep(x64):
    params = make_deep(2, True, seed=9)
    xs = jax.random.normal(jax.random.key(1), (2, T, K), jnp.float64)
    ys = jax.nn.softmax(jax.random.normal(jax.random.key(2), (2, T, C), jnp.float64))
    lengths = jnp.array([T, 3])
    E, grads = bptt_jax.bptt(params, xs, ys, lengths=lengths)
    E_ref, grads_ref = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, lengths=lengths)
    assert float(E) == pytest.approx(float(E_ref), rel=1e-13)
    leaves_close(grads, grads_ref, 1e-10)


@pytest.mark.slow  # a model of its own
def test_padding_ids_and_labels_are_not_checked_or_read(x64):
    # Out-of-range values at padded steps are ignored, not errors.
    params = make_deep(2, False, seed=10)
    xs, ys = make_batch(2, T, seed=10)
    lengths = jnp.array([T, 3])
    E, grads = bptt_jax.bptt(params, xs, ys, lengths=lengths)
    E2, grads2 = bptt_jax.bptt(params, xs.at[1, 3:].set(-1), ys.at[1, 3:].set(99), lengths=lengths)
    assert float(E2) == float(E)
    leaves_close(grads2, grads, 0.0)


NOT_PREFIX = np.array([[True, False, True, False, False, False]] * 2)
BAD = {
    # bad values in host arrays (in a jax.Array they make the call NaN: test_values_on_device)
    "lengths_too_long": (dict(lengths=np.array([T + 1, 2])), ValueError,
                         r"lengths contains 7; .* 0..6"),
    "lengths_negative": (dict(lengths=np.array([-1, 2])), ValueError, "lengths contains -1"),
    "lengths_float": (dict(lengths=jnp.array([2.0, 3.0])), TypeError,
                      "lengths must be integers"),
    "lengths_shape": (dict(lengths=jnp.array([2, 3, 4])), ValueError,
                      r"lengths has shape \(3,\), expected \(2,\)"),
    "mask_not_prefix": (dict(mask=NOT_PREFIX), ValueError, "prefix mask"),
    "mask_int": (dict(mask=jnp.ones((2, T), jnp.int32)), TypeError, "mask must be boolean"),
    "mask_and_lengths": (dict(mask=jnp.ones((2, T), bool), lengths=jnp.array([1, 2])),
                         ValueError, "not both"),
    "h0_wrong_stack": (dict(h0=jnp.zeros((3, 2, H))), ValueError,
                       r"h0 has shape \(3, 2, 3\), expected \(4, 2, 3\)"),
    "h0_seed_shape": (dict(h0=jnp.zeros((2, H))), ValueError,
                      r"expected \(4, 2, 3\) \(\(L\*D, B, H\)"),
    "dh_T_wrong": (dict(dh_T=jnp.zeros((4, 3, H))), ValueError, "dh_T has shape"),
    "reduction": (dict(reduction="avg"), ValueError, "reduction must be 'sum' or 'mean'"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_a_clear_error(name, x64):
    kwargs, error, match = BAD[name]
    params = make_deep(2, True)
    xs, ys = make_batch(2, T)
    with pytest.raises(error, match=match):
        bptt_jax.bptt_chunk(params, xs, ys, **kwargs)


@pytest.mark.slow  # draws a model eagerly
def test_bad_layer_counts_and_shapes():
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        bptt_jax.init_params(jax.random.key(0), K, H, num_layers=0)
    d = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=2, bidirectional=True)
    xs, ys = make_batch(1, T)
    with pytest.raises(ValueError, match="at least one layer"):
        bptt_jax.bptt(d._replace(layers=(), reverse_layers=()), xs, ys)
    with pytest.raises(ValueError, match="one reverse layer per layer"):
        bptt_jax.bptt(d._replace(reverse_layers=d.reverse_layers[:1]), xs, ys)
    bad = d.layers[1]._replace(W=jnp.zeros((H, H)))  # reads 2H when bidirectional
    with pytest.raises(ValueError, match=r"layers\[1\].W has shape \(3, 3\), expected \(3, 6\)"):
        bptt_jax.bptt(d._replace(layers=(d.layers[0], bad)), xs, ys)
    with pytest.raises(ValueError, match=r"V has shape \(5, 3\), expected \(C, 6\)"):
        bptt_jax.bptt(d._replace(V=jnp.zeros((K, H))), xs, ys)
