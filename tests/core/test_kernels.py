"""The Pallas recurrence kernels (issue 17) against the ``lax.scan`` path, in interpret mode.

On the CPU every kernel runs in Pallas interpret mode, which is slow: the shapes are
tiny (T = 6, H = 5 padded to 16, B = 3 padded to the block of 16) and each compiled
function is shared by the tests that use it. The scan steps of
:mod:`bptt_jax.core.backward` are the reference (same conventions: resets, padding,
truncation, ``clip_delta``); the public functions are checked end to end, and against
``jax.grad`` of the loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, loss_value_and_grad, make_problem, max_rel_error
from jax import export

import bptt_jax
from bptt_jax.api.options import check_kernel, resolve_kernel
from bptt_jax.core import kernels
from bptt_jax.core.backward import _scan_step, make_ctx, run_cell
from bptt_jax.core.cell import RNNCell
from bptt_jax.core.options import Options
from bptt_jax.core.params import Layer

T, H, K, C = 6, 5, 4, 5
#: The kernels against the scan: the hand gradient's two recursions evaluated two ways,
#: which may differ in the order and contraction (FMA or not) of their sums (the GPU's
#: compiled kernels do): the table's bound for two such evaluations, RTOL (1e-4 in
#: float32, 1e-10 in float64), not a count of ulps measured on one CPU. A wrong flag,
#: mask or reset moves them by O(1).
KERNEL_RTOL = RTOL
ACTIVATIONS = ("tanh", "sigmoid", "relu")


def _case(B, dtype, seed=0):
    """A cell, its inputs and the masks of a ragged batch with resets and truncation."""
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(0.7 * rng.standard_normal(s), dtype)  # noqa: E731
    layer = Layer(U=arr(H, H), W=arr(H, K), b=arr(H))
    lengths = np.minimum(np.arange(B) % T + 3, T)  # ragged: 3, 4, 5, ... steps
    m = jnp.asarray(np.arange(T)[:, None] < lengths[None], bool)[..., None]  # (T, B, 1)
    e = jnp.asarray(rng.random((T, B, 1)) < 0.25) & m  # resets on real steps
    k = jnp.asarray((np.arange(1, T + 1) % 4 != 0)[:, None, None])  # truncation every 4
    return layer, arr(T, B, K), arr(B, H), arr(B, H), m, e, k, arr(T, B, H), arr(B, H)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _scan_reference(activation, dtype, B, clip_delta, masks):
    """The scan path's two recursions (``core/backward.py``) for :func:`_case`."""
    layer, X, h_start, h0, m, e, k, G, g = _case(B, dtype)
    m, e, k = (m, e, k) if masks else (None, None, None)
    ctx = make_ctx(Options(cell=RNNCell(activation), clip_delta=clip_delta), jnp.dtype(dtype))
    h_end, hs = run_cell(ctx, layer, X, h_start, h0, m, e)
    acc = None if e is None else jnp.zeros_like(g)
    (g, acc), deltas = jax.lax.scan(
        _scan_step(ctx, layer.U), (g, acc), (G, hs, None, m, e, k), reverse=True
    )
    return hs, h_end, deltas, g, acc


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _kernel_result(activation, dtype, B, clip_delta, masks):
    layer, X, h_start, h0, m, e, k, G, g = _case(B, dtype)
    flags = kernels.step_flags(T, B, m, e, k) if masks else None
    a = X @ layer.W.T + layer.b
    options = Options(cell=RNNCell(activation), clip_delta=clip_delta)
    hs = kernels.forward_recursion(a, h_start, layer.U.T, h0, flags, options=options)
    deltas, g, acc = kernels.backward_recursion(G, hs, g, layer.U, flags, options=options)
    return hs, hs[-1], deltas, g, acc


def _assert_match(activation, dtype, B, clip_delta=None, masks=True):
    """The kernels' outputs within :data:`KERNEL_RTOL` of the scan path's."""
    got = _kernel_result(activation, dtype, B, clip_delta, masks)
    want = _scan_reference(activation, dtype, B, clip_delta, masks)
    names = ("hs", "h_end", "deltas", "g_out", "dh0 from resets")
    for name, a, b in zip(names, got, want, strict=True):
        if b is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = max_rel_error(a, b)
        assert err <= KERNEL_RTOL[dtype], f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("activation", ("tanh", "sigmoid"))
def test_kernels_match_scan_with_resets_padding_truncation_float32(activation):
    _assert_match(activation, "float32", B=3)


def test_kernels_match_scan_relu_batch_over_one_block_with_clip_delta():
    # B = 19: two programs, the second one 13 rows of padding; δ clipped at some steps.
    _assert_match("relu", "float32", B=19, clip_delta=0.5)


@pytest.mark.parametrize(
    "activation", ["tanh", *(pytest.param(a, marks=pytest.mark.slow) for a in ACTIVATIONS[1:])]
)
def test_kernels_match_scan_float64(activation, x64):
    _assert_match(activation, "float64", B=3)


def test_bfloat16_products_accumulate_in_float32():
    layer, X, h_start = _case(3, "float32")[:3]
    ctx = make_ctx(Options(matmul_dtype=jnp.dtype(jnp.bfloat16)), jnp.dtype("float32"))
    a = RNNCell().project(layer, X, ctx.mm, ctx.cast)  # W x_t + b as the scan path has it
    hs = kernels.forward_recursion(a, h_start, layer.U.T.astype(jnp.bfloat16))
    assert hs.dtype == jnp.float32
    want = run_cell(ctx, layer, X, h_start, h_start, None, None)[1]
    # bf16 products of bf16 operands are exact in float32; the sums then differ only
    # in order (RTOL), while bf16 accumulation would round each to 2**-8 = 3.9e-3.
    assert max_rel_error(hs, want) <= KERNEL_RTOL["float32"] < 2.0**-8 / 10


@pytest.mark.parametrize(
    "activation", ["tanh", *(pytest.param(a, marks=pytest.mark.slow) for a in ACTIVATIONS[1:])]
)
def test_triton_lowering_builds_without_a_gpu(activation):
    # jax.export lowers for CUDA on the CPU: the kernels become Triton IR (not PTX, which
    # needs the GPU's compiler); float32 at H = 5 (padded) and bfloat16 at H = 256.
    skip = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for Hc, dt in ((H, jnp.float32), (256, jnp.bfloat16)):
        a, h = (
            jax.ShapeDtypeStruct((T, 3, Hc), jnp.float32),
            jax.ShapeDtypeStruct((3, Hc), jnp.float32),
        )
        U, fl = jax.ShapeDtypeStruct((Hc, Hc), dt), jax.ShapeDtypeStruct((T, 3), jnp.int32)
        options = Options(cell=RNNCell(activation), clip_delta=1.0)
        fwd = functools.partial(
            kernels.forward_recursion, options=options, launch=kernels.Launch(interpret=False)
        )
        bwd = functools.partial(
            kernels.backward_recursion, options=options, launch=kernels.Launch(interpret=False)
        )
        for fn, args in ((fwd, (a, h, U, h, fl)), (bwd, (a, a, h, U, fl, h))):
            text = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=skip)(*args)
            assert text.mlir_module().count("xla.gpu.triton") == 1


def test_kernel_supported_sizes():
    assert kernels.kernel_supported(128, 1, "float32", "gpu")
    assert not kernels.kernel_supported(129, 1, "float32", "gpu")  # padded to 256: 256 KiB
    assert kernels.kernel_supported(256, 32, "bfloat16", "gpu")
    assert not kernels.kernel_supported(257, 32, "bfloat16", "gpu")
    assert not kernels.kernel_supported(64, 1, "float64", "gpu")  # interpret mode only
    assert kernels.kernel_supported(64, 1, "float64", "cpu")
    assert kernels.padded_size(5) == 16 and kernels.padded_size(100) == 128


def test_auto_is_the_scan_until_measured_and_bad_kernel_names_are_refused():
    assert resolve_kernel("auto", 64, 1, "float32", "bptt", backend="gpu") == "scan"
    assert resolve_kernel("auto", 64, 1, "float32", "bptt", backend="cpu") == "scan"
    assert resolve_kernel("pallas", 64, 1, "float32", "bptt", backend="gpu") == "pallas"
    with pytest.raises(ValueError, match="kernel must be 'scan', 'pallas' or 'auto'"):
        check_kernel("triton")


def test_forced_pallas_outside_the_supported_sizes_is_a_clear_error():
    params, xs, ys, _ = make_problem(K=3, H=130, B=2, T=2, dtype="float32")
    with pytest.raises(ValueError, match=r"bptt: kernel='pallas' does not support H=130"):
        bptt_jax.bptt(params, xs, ys, kernel="pallas")
    with pytest.raises(ValueError, match=r"forward: kernel='pallas'.*float32: H <= 128"):
        bptt_jax.forward(params, xs, kernel="pallas")


def _grads(params, xs, ys, h0, kernel, **options):
    return bptt_jax.bptt_chunk(params, xs, ys, h0, kernel=kernel, **options)


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="sigmoid", truncate=3, clip_delta=2.0, chunk=4),
        pytest.param(dict(activation="relu", recompute=True, chunk=2), marks=pytest.mark.slow),
        pytest.param(dict(matmul_dtype="bfloat16"), marks=pytest.mark.slow),
    ],
    ids=["sigmoid-truncate-clip-chunk", "relu-recompute", "bfloat16"],
)
def test_bptt_pallas_equals_scan_seed(options):
    params, xs, ys, h0 = make_problem(K=K, H=H, B=1, T=T, h0=True, dtype="float32")
    got = _grads(params, xs, ys, h0, "pallas", **options)
    want = _grads(params, xs, ys, h0, "scan", **options)
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float32"])


@pytest.mark.slow
def test_bptt_pallas_equals_jax_grad():
    params, xs, ys, _ = make_problem(K=K, H=H, B=3, T=T, dtype="float32")
    E, grads = bptt_jax.bptt(params, xs, ys, kernel="pallas")
    E_ref, grads_ref = loss_value_and_grad(params, xs, ys)
    assert_tree_close((E, grads), (E_ref, grads_ref), rtol=RTOL["float32"])


@pytest.mark.parametrize("num_layers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bptt_pallas_equals_scan_deep_bidirectional_ragged_resets_truncated(num_layers):
    params = bptt_jax.init_params(
        jax.random.key(1), K, H, num_classes=K, num_layers=num_layers, bidirectional=True
    )
    _, xs, ys, _ = make_problem(K=K, H=H, B=3, T=T, dtype="float32", seed=2)
    resets = jnp.zeros((3, T), bool).at[0, 2].set(True).at[2, 4].set(True)
    options = dict(lengths=jnp.array([T, 4, 5]), resets=resets, truncate=4, reduction="mean")
    got = _grads(params, xs, ys, None, "pallas", **options)
    want = _grads(params, xs, ys, None, "scan", **options)
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float32"])


def test_recurrence_pallas_equals_scan_ragged_resets():
    params, xs, _, h0 = make_problem(K=K, H=H, B=3, T=T, h0=True, dtype="float32")
    lengths, resets = jnp.array([T, 3, 5]), jnp.zeros((3, T), bool).at[1, 2].set(True)

    def objective(p, kernel):
        hs, h_T = bptt_jax.recurrence(p, xs, h0, lengths=lengths, resets=resets, kernel=kernel)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(h_T**2)

    got = jax.value_and_grad(objective)(params, "pallas")
    want = jax.value_and_grad(objective)(params, "scan")
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float32"])


@pytest.mark.slow
def test_hand_loss_pallas_equals_scan():
    params, xs, ys, h0 = make_problem(K=K, H=H, B=3, T=T, h0=True, dtype="float32")
    got = jax.grad(bptt_jax.hand_loss)(params, xs, ys, h0, kernel="pallas")
    want = jax.grad(bptt_jax.hand_loss)(params, xs, ys, h0, kernel="scan")
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float32"])


@pytest.mark.slow
def test_forward_and_loss_pallas_equal_scan():
    params, xs, ys, h0 = make_problem(K=K, H=H, B=3, T=T, h0=True, dtype="float32")
    got = bptt_jax.forward(params, xs, h0, kernel="pallas", return_state=True)
    want = bptt_jax.forward(params, xs, h0, kernel="scan", return_state=True)
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float32"])
    E = bptt_jax.loss(params, xs, ys, h0, kernel="pallas")
    assert max_rel_error(E, bptt_jax.loss(params, xs, ys, h0)) <= KERNEL_RTOL["float32"]


@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.slow), "gru"])
def test_gated_kernels_match_the_scan_with_every_option(cell, x64):
    # The LSTM's (h, c) carry, the GRU's b_hn and both cells' gate blocks padded per
    # gate (H = 5 -> 16 units in each block), through the public call: resets, ragged
    # lengths, truncation, clipping of the state gradient and chunks, stacked and
    # bidirectional. Interpret mode off the GPU (on a GPU the gated kernels are refused).
    if jax.default_backend() == "gpu":
        pytest.skip("the gated cells' kernels are refused on a GPU (interpret mode only)")
    p = bptt_jax.init_params(jax.random.key(1), K, H, num_classes=C, cell=cell, num_layers=2,
                             bidirectional=True, dtype="float64")  # fmt: skip
    p = jax.tree.map(lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), p)
    xs = jax.random.randint(jax.random.key(2), (3, T), 0, K)
    ys = jax.random.randint(jax.random.key(3), (3, T), 0, C)
    kw = dict(lengths=jnp.array([T, 4, 2]), resets=jnp.zeros((3, T), bool).at[0, 3].set(True),
              truncate=4, clip_delta=0.7, chunk=4)  # fmt: skip
    want = bptt_jax.bptt_chunk(p, xs, ys, **kw)
    got = bptt_jax.bptt_chunk(p, xs, ys, kernel="pallas", **kw)
    assert_tree_close(got, want, rtol=KERNEL_RTOL["float64"])
    assert max_rel_error(bptt_jax.forward(p, xs, kernel="pallas")[1],
                         bptt_jax.forward(p, xs)[1]) <= KERNEL_RTOL["float64"]  # fmt: skip


def test_gated_kernel_sizes_count_every_gate_block():
    assert kernels.kernel_supported(64, 1, "float32", "cpu", gates=4)  # 4·64² · 4 B = 64 KiB
    assert not kernels.kernel_supported(128, 1, "float32", "cpu", gates=4)  # 256 KiB
    assert kernels.kernel_supported(128, 1, "bfloat16", "cpu", gates=4)
    # on a GPU the gated kernels are refused: Triton lowers no slice of a value
    assert not kernels.kernel_supported(16, 1, "float32", "gpu", gates=3)
    assert "interpret mode only" in kernels.unsupported_reason(16, 1, "float32", "gpu", 3)
    p = bptt_jax.init_params(jax.random.key(0), K, 100, cell="lstm")
    xs = jnp.zeros((2, 3), int)
    with pytest.raises(ValueError, match=r"4 gate blocks: float32 H <= 64"):
        bptt_jax.bptt(p, xs, xs, kernel="pallas")
