"""The gated cells (LSTM, GRU; ``docs/math.md`` §10-§12) through every driver and option,
refereed by ``jax.grad`` of a plain-JAX loss whose equations are written here again,
from PyTorch's definitions (not imported from ``bptt_jax.core.lstm``/``gru``).

Hypothesis draws cell × layers (1-3) × direction × padding × resets × one option;
truncation is ``stop_gradient`` of the carried state pair at window boundaries, in
both time directions, as in ``test_backward.py`` for the vanilla cell.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, max_rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_backward import OPTIONS, problem
from test_bptt_options import equations

import bptt_jax
from bptt_jax import DeepParams, Layer
from bptt_jax.core.cell import ROWS_FIRST_MAX_K, rows_first

K, H, C, B, T = 5, 4, 6, 3, 7
GATES = {"lstm": 4, "gru": 3}


def gated_params(cell, L, bidirectional, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8 * L + 2))
    D, G = (2 if bidirectional else 1), GATES[cell]
    n_b = 4 * H  # the LSTM's 4H; the GRU's [b_r; b_z; b_in; b_hn]

    def layer(d_in):
        n = lambda shape, s: (s * jax.random.normal(next(keys), shape)).astype(dtype)  # noqa: E731
        return Layer(U=n((G * H, H), 0.6), W=n((G * H, d_in), 0.6), b=n((n_b,), 0.3))

    layers = tuple(layer(K if l == 0 else D * H) for l in range(L))
    reverse = tuple(layer(K if l == 0 else D * H) for l in range(L)) if bidirectional else ()
    V = (0.6 * jax.random.normal(next(keys), (C, D * H))).astype(dtype)
    c = (0.2 * jax.random.normal(next(keys), (C,))).astype(dtype)
    return DeepParams(layers=layers, reverse_layers=reverse, V=V, c=c)


def lstm_step(layer, state, x):
    """PyTorch's nn.LSTM step: gates i, f, g, o."""
    h, c = state
    s = h @ layer.U.T + x @ layer.W.T + layer.b
    i, f, g, o = jnp.split(s, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru_step(layer, h, x):
    """PyTorch's nn.GRU step: gates r, z, n, with b_hn inside r ⊙ (·)."""
    gi = x @ layer.W.T + layer.b[: 3 * H]
    gh = h @ layer.U.T
    r = jax.nn.sigmoid(gi[..., :H] + gh[..., :H])
    z = jax.nn.sigmoid(gi[..., H : 2 * H] + gh[..., H : 2 * H])
    n = jnp.tanh(gi[..., 2 * H :] + r * (gh[..., 2 * H :] + layer.b[3 * H :]))
    return (1 - z) * n + z * h


def where(flag, a, b):
    return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def reference_loss(cell, p, xs, ys, h0, mask, resets, truncate, reduction):
    """Plain JAX, a Python loop over steps; ``jax.grad`` of it is the referee."""
    step = lstm_step if cell == "lstm" else gru_step
    out = (lambda s: s[0]) if cell == "lstm" else (lambda s: s)
    X = jax.nn.one_hot(xs.T, K, dtype=p.V.dtype) if xs.ndim == 2 else jnp.swapaxes(xs, 0, 1)
    m = jnp.ones((T, B, 1), bool) if mask is None else mask.T[..., None]
    r = jnp.zeros((T, B, 1), bool) if resets is None else resets.T[..., None] & m
    D = p.num_directions
    for l, layers in enumerate(p.cells()):
        outs = []
        for d, layer in enumerate(layers):
            s0 = jax.tree.map(lambda a, i=l * D + d: a[i], h0)
            s, hs = s0, [None] * T
            for i, t in enumerate(range(T) if d == 0 else reversed(range(T))):
                prev = t - 1 if d == 0 else t + 1
                reset = r[t] if d == 0 else (r[t + 1] if t + 1 < T else jnp.zeros_like(r[t]))
                cut = truncate is not None and i > 0 and (t if d == 0 else t + 1) % truncate == 0
                if cut:
                    s = where(m[t] & m[prev], jax.lax.stop_gradient(s), s)
                s_in = where(reset, s0, s)
                s_new = step(layer, s_in, X[t])
                s = where(m[t], s_new, s_in)
                hs[t] = jnp.where(m[t], out(s_new), 0)
            outs.append(jnp.stack(hs))
        X = jnp.concatenate(outs, axis=-1)
    log_yhat = jax.nn.log_softmax(X @ p.V.T + p.c)
    Y = jnp.swapaxes(ys, 0, 1)
    if Y.ndim == 2:
        Y = jax.nn.one_hot(Y, C, dtype=log_yhat.dtype)
    e = jnp.where(m[..., 0], -jnp.sum(Y * log_yhat, axis=-1), 0)
    n = jnp.sum(m) if reduction == "mean" else 1
    return jnp.sum(e) / jnp.asarray(n, e.dtype)


def initial_state(cell, L, D, dtype):
    h = (0.3 * jax.random.normal(jax.random.key(5), (L * D, B, H))).astype(dtype)
    return (h, (0.5 * h[::-1]).astype(dtype)) if cell == "lstm" else h


def check_combo(combo, dtype):
    cell, L, bi, ragged, with_resets, option = combo
    kwargs = dict(OPTIONS[option])
    reduction = "mean" if option == "mean" else "sum"
    xs, ys, lengths, resets = problem(dtype, ragged, with_resets, option == "dense_unroll",
                                      option == "soft")  # fmt: skip
    p = gated_params(cell, L, bi, dtype)
    h0 = initial_state(cell, L, 2 if bi else 1, dtype)
    mask = None if lengths is None else jnp.arange(T)[None] < lengths[:, None]
    args = (cell, p, xs, ys, h0, mask, resets, kwargs.get("truncate"), reduction)
    E_ref, (g_ref, dh0_ref) = jax.value_and_grad(
        lambda p, h0: reference_loss(*args[:1], p, *args[2:4], h0, *args[5:]), argnums=(0, 1)
    )(p, h0)
    if kwargs.get("truncate") is None:  # the referee's loss is bptt_jax.loss
        E = bptt_jax.loss(p, xs, ys, h0, lengths=lengths, resets=resets, reduction=reduction)
        assert max_rel_error(E, E_ref) <= RTOL[dtype]
    E, g, dh0, _ = bptt_jax.bptt_chunk(p, xs, ys, h0, lengths=lengths, resets=resets,
                                       reduction=reduction, **kwargs)  # fmt: skip
    assert_tree_close((E, g, dh0), (E_ref, g_ref, dh0_ref), rtol=RTOL[dtype])


combos = st.tuples(
    st.sampled_from(["lstm", "gru"]),
    st.sampled_from([1, 2, 3]),  # L
    st.booleans(),  # bidirectional
    st.booleans(),  # ragged lengths
    st.booleans(),  # resets
    st.sampled_from(list(OPTIONS)),
)


FAST_COMBOS = [("lstm", "none"), ("gru", "truncate2_chunk3")]  # the rest: slow tier


@pytest.mark.parametrize(
    ("cell", "option"),
    [
        (c, o) if (c, o) in FAST_COMBOS else pytest.param(c, o, marks=pytest.mark.slow)
        for c in ("lstm", "gru")
        for o in ("none", "truncate2_chunk3", "recompute")
    ],
)
def test_a_stacked_bidirectional_gated_model_matches_jax_grad(cell, option, x64):
    check_combo((cell, 2, True, True, True, option), "float64")


@pytest.mark.slow  # every example compiles a new model
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(combos)
def test_every_gated_model_and_option_matches_jax_grad_float64(x64, combo):
    check_combo(combo, "float64")


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(combos)
def test_every_gated_model_and_option_matches_jax_grad_float32(combo):
    with jax.default_matmul_precision("highest"):
        check_combo(combo, "float32")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_seed_layout_and_one_sequence_take_a_gated_cell(cell, x64):
    # Params (one layer, one direction) and an unbatched sequence: states (H,) / pairs.
    p = bptt_jax.init_params(jax.random.key(0), K, H, num_classes=C, cell=cell, dtype="float64")
    xs, ys = jnp.arange(T) % K, (jnp.arange(T) + 1) % C
    h = 0.1 * jnp.arange(H, dtype=jnp.float64)
    h0 = (h, -h) if cell == "lstm" else h
    E, g, dh0, h_T = bptt_jax.bptt_chunk(p, xs, ys, h0)
    assert jax.tree.map(jnp.shape, h_T) == jax.tree.map(jnp.shape, h0)
    E_ad, (g_ad, dh0_ad) = jax.value_and_grad(bptt_jax.loss, argnums=(0, 3))(p, xs, ys, h0)
    assert_tree_close((E, g, dh0), (E_ad, g_ad, dh0_ad), rtol=RTOL["float64"])
    assert isinstance(g, bptt_jax.Params)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_reference_derivation_states_the_gated_cells_too(cell, x64):
    # core/reference.py runs any cell's equations unchunked: the drivers agree with it.
    from bptt_jax.core.cells import cell_named
    from bptt_jax.core.options import Options
    from bptt_jax.core.reference import reference_bptt

    p = bptt_jax.init_params(jax.random.key(3), K, H, num_classes=C, cell=cell, dtype="float64")
    p = p._replace(b=0.3 * jnp.sin(jnp.arange(p.b.shape[0], dtype=jnp.float64)))
    xs, ys, _, _ = problem("float64", False, False, False, False)
    h0 = jax.tree.map(lambda a: a[0], initial_state(cell, 1, 1, "float64"))
    want = reference_bptt(p, xs, ys, h0, options=Options(cell=cell_named(cell)))
    got = bptt_jax.bptt_chunk(p, xs, ys, h0, chunk=3)
    assert_tree_close(got, want, rtol=RTOL["float64"])


def _clipped_reference(cell, p, xs, ys, theta):
    """The clipped backward of one layer as a numpy loop (``docs/math.md`` §12): the
    state gradient entering each step's gates (the LSTM's pair (h̄, c̄)) rescaled to
    norm ≤ θ per sequence; returns every step's gate δ, ``(B, T, ·)``."""
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for n in range(B):
        h, c, trace = np.zeros(H), np.zeros(H), []
        for t in range(T):
            x = P.W[:, int(xs[n, t])]
            if cell == "lstm":
                s = P.U @ h + x + P.b
                i, f, o = sig(s[:H]), sig(s[H : 2 * H]), sig(s[3 * H :])
                g = np.tanh(s[2 * H : 3 * H])
                c_prev, c = c, f * c + i * g
                h = o * np.tanh(c)
                trace.append((h, c, c_prev, i, f, g, o))
            else:
                gh = P.U @ h
                r = sig(x[:H] + P.b[:H] + gh[:H])
                z = sig(x[H : 2 * H] + P.b[H : 2 * H] + gh[H : 2 * H])
                q = gh[2 * H :] + P.b[3 * H :]
                nn = np.tanh(x[2 * H :] + P.b[2 * H : 3 * H] + r * q)
                trace.append((h, r, z, q, nn))
                h = (1 - z) * nn + z * h
        gh_, gc_, deltas = np.zeros(H), np.zeros(H), [None] * T
        for t in reversed(range(T)):
            if cell == "lstm":
                h_out = trace[t][0]
            else:  # h_t = (1 - z) n + z h_{t-1}
                h_prev, _, z, _, nn = trace[t]
                h_out = (1 - z) * nn + z * h_prev
            zt = P.V @ h_out + P.c
            y = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
            y[int(ys[n, t])] -= 1
            dh = P.V.T @ y + gh_
            if cell == "lstm":
                _, c_t, c_prev, i, f, g, o = trace[t]
                tc = np.tanh(c_t)
                dc = gc_ + dh * o * (1 - tc**2)
                norm = np.sqrt(np.sum(dh**2) + np.sum(dc**2))
                if norm > theta:
                    dh, dc = dh * theta / norm, dc * theta / norm
                d = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                    dc * i * (1 - g**2), dh * tc * o * (1 - o)])  # fmt: skip
                gh_, gc_ = P.U.T @ d, dc * f
            else:
                h_prev, r, z, q, nn = trace[t]
                norm = np.linalg.norm(dh)
                if norm > theta:
                    dh = dh * theta / norm
                dn = dh * (1 - z) * (1 - nn**2)
                dz = dh * (h_prev - nn) * z * (1 - z)
                dr = dn * q * r * (1 - r)
                d = np.concatenate([dr, dz, dn, dn * r])
                gh_ = dh * z + P.U.T @ np.concatenate([dr, dz, dn * r])
            deltas[t] = d
        out.append(np.stack(deltas))
    return np.stack(out)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_clip_delta_rescales_the_gated_state_gradient(cell, x64):
    # Ids b*T + t all distinct: column x of dW is that step's δ (the W rows: the LSTM's
    # whole δ, the GRU's [δr, δz, δn]), so every clipped δ can be read off dW.
    p = bptt_jax.init_params(jax.random.key(1), B * T, H, num_classes=C, cell=cell,
                             dtype="float64")  # fmt: skip
    p = p._replace(U=2.0 * p.U, V=4.0 * p.V)
    xs = jnp.arange(B * T).reshape(B, T)
    ys = jax.random.randint(jax.random.key(2), (B, T), 0, C)
    want = _clipped_reference(cell, p, xs, ys, theta=0.05)
    _, g = bptt_jax.bptt(p, xs, ys, clip_delta=0.05)
    rows = 4 * H if cell == "lstm" else 3 * H
    got = np.asarray(g.W).T.reshape(B, T, rows)
    np.testing.assert_allclose(got, want[..., :rows], rtol=1e-10, atol=1e-14)
    _, exact = bptt_jax.bptt(p, xs, ys)
    assert max_rel_error(g.W, exact.W) > 1e-2  # the clipping acted


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    "bi", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["stacked", "bidirectional"]
)
def test_bf16_products_are_close_to_the_float32_gradient_gated(cell, bi):
    # bf16 operands, float32 accumulation: O(u) from the float32 gradient, u = 2**-8,
    # with the same 16·u allowance as the vanilla cell's test (test_backward.py).
    p = gated_params(cell, 2, bi, "float32")
    xs, ys, lengths, resets = problem("float32", True, True, False, False)
    with jax.default_matmul_precision("highest"):
        exact = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets)
        half = bptt_jax.bptt(p, xs, ys, lengths=lengths, resets=resets, matmul_dtype="bfloat16")
    pairs = zip(jax.tree.leaves(half), jax.tree.leaves(exact), strict=True)
    errors = [max_rel_error(a, e) for a, e in pairs]
    assert 0 < max(errors) <= 16 * 2.0**-8, errors


def _scatter_shapes(fn, *args):
    """The output shape of every scatter-add in ``fn``'s jaxpr, scan bodies included."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [tuple(e.outvars[0].aval.shape) for e in equations(jaxpr)
            if e.primitive.name == "scatter-add"]  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("K_", [50, ROWS_FIRST_MAX_K + 1], ids=["rows_first", "w_layout"])
def test_the_input_gradient_of_token_ids_is_scattered_in_one_layout(cell, K_, x64):
    # ∂E/∂W of ids: a small vocabulary accumulates (K, G·H) rows (transposed once at the
    # end), a large one scatters straight into W's (G·H, K), with no second W-sized
    # buffer (41 MB for the LSTM at K = 10000, H = 256); both are the same gradient.
    H_, G = 3, {"rnn": 1, **GATES}[cell]
    p = bptt_jax.init_params(jax.random.key(0), K_, H_, cell=cell, dtype="float64")
    xs = jax.random.randint(jax.random.key(1), (2, 5), 0, K_).at[0, :2].set(7)  # a repeat
    shapes = _scatter_shapes(lambda q: bptt_jax.bptt(q, xs, xs), p)
    want = (K_, G * H_) if rows_first(K_) else (G * H_, K_)
    assert shapes and set(shapes) == {want}
    _, grads = bptt_jax.bptt(p, xs, xs)
    assert_tree_close(grads, jax.grad(bptt_jax.loss)(p, xs, xs), rtol=RTOL["float64"])


@pytest.mark.slow  # compiles the hand and autodiff paths at a vocabulary of 4000
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_temp_memory_at_a_large_vocabulary_is_a_fraction_of_autodiffs(cell):
    # XLA's account of the temporary buffers (issue 23: at most 30 % of autodiff's at a
    # large vocabulary): the chunked backward keeps a chunk's logits, not all T steps'.
    def temp_bytes(fn, *args):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    p = bptt_jax.init_params(jax.random.key(0), 4000, 64, cell=cell)
    xs = jax.random.randint(jax.random.key(1), (8, 32), 0, 4000)
    hand = temp_bytes(lambda q: bptt_jax.bptt(q, xs, xs), p)
    autodiff = temp_bytes(jax.value_and_grad(lambda q: bptt_jax.loss(q, xs, xs)), p)
    assert hand <= 0.30 * autodiff, (hand, autodiff)
