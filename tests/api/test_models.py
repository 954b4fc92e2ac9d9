"""Every public function with every model: the seed's Params, a stacked and a
bidirectional DeepParams, and Params on ragged sequences.

Each case either matches its referee in float64 (``jax.grad`` of
``bptt_jax.loss``, or a plain-loop transcription of ``docs/math.md`` §2, §7
differentiated by ``jax.jacobian`` for the per-loss deltas) to 1e-10 relative,
or raises a ValueError naming the unsupported combination.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import slow_except

import bptt_jax
from bptt_jax import Layer, Params
from bptt_jax.referees.tolerances import max_relative_error

K, H, B, T = 5, 4, 3, 6
RTOL = 1e-10
MODELS = ("seed", "deep", "bidirectional", "ragged")


def _model(name):
    """``(params, xs, ys, h0, extra kwargs)`` in float64 (call under the x64 fixture)."""
    rng = np.random.default_rng(0)
    L, bidir = {"deep": (2, False), "bidirectional": (2, True)}.get(name, (1, False))
    params = bptt_jax.init_params(
        jax.random.key(1), K, H, num_layers=L, bidirectional=bidir, dtype=jnp.float64
    )
    # Larger weights and random biases: tanh in its curved range.
    params = jax.tree.map(lambda a: 2.0 * a + 0.2 * rng.standard_normal(a.shape), params)
    stack = 1 if isinstance(params, Params) else L * (2 if bidir else 1)
    xs = jnp.asarray(rng.integers(0, K, (B, T)), jnp.int32)
    ys = jnp.asarray(rng.integers(0, K, (B, T)), jnp.int32)
    h0 = jnp.asarray(0.5 * rng.standard_normal((B, H) if stack == 1 else (stack, B, H)))
    kwargs = dict(lengths=jnp.array([T, 4, 1])) if name == "ragged" else {}
    return params, xs, ys, h0, kwargs


def _cells(params):
    if isinstance(params, Params):
        return [(Layer(U=params.U, W=params.W, b=params.b),)]
    return params.cells()


@jax.jit
def _reference(params, xs, ys, h0, offsets, lengths=None):
    r"""Per-step losses ``(T,)`` (summed over the batch) and logits ``(B, T, C)``,
    the equations as written (a scan per layer and direction, one-hot inputs),
    with ``offsets`` ``(L*D, T, B, H)`` added to every :math:`s_t` (so their
    gradient is :math:`\delta_t`)."""
    h0 = h0[None] if h0.ndim == 2 else h0  # (L*D, B, H)
    X = jax.nn.one_hot(xs, K, dtype=jnp.float64)  # (B, T, K)
    cells = _cells(params)
    D = len(cells[0])
    for l, cell in enumerate(cells):
        outs = []
        for d, layer in enumerate(cell):

            def step(h, inputs, layer=layer):  # s_t = U h_{t∓1} + W x_t + b (+ offset)
                x_t, o_t = inputs
                h = jnp.tanh(h @ layer.U.T + x_t @ layer.W.T + layer.b + o_t)
                return h, h

            inputs = (jnp.swapaxes(X, 0, 1), offsets[l * D + d])  # (T, B, ·), (T, B, H)
            _, hs = jax.lax.scan(step, h0[l * D + d], inputs, reverse=d == 1)
            outs.append(jnp.swapaxes(hs, 0, 1))  # (B, T, H)
        X = jnp.concatenate(outs, axis=-1)
    z = X @ params.V.T + params.c  # (B, T, C)
    e = -jnp.take_along_axis(jax.nn.log_softmax(z), ys[..., None], axis=-1)[..., 0]  # (B, T)
    if lengths is not None:  # unidirectional: padding never reaches a real step's loss
        e = jnp.where(jnp.arange(T) < lengths[:, None], e, 0)
    return jnp.sum(e, axis=0), z


@jax.jit
def _reference_deltas(params, xs, ys, h0, lengths=None):
    """``(T_t, T_k, L*D, B, H)``: ∂E_t/∂s_k by ``jax.jacobian`` of :func:`_reference`."""
    stack = 1 if isinstance(params, Params) else h0.shape[0]
    zeros = jnp.zeros((stack, T, B, H), jnp.float64)
    J = jax.jacobian(lambda o: _reference(params, xs, ys, h0, o, lengths)[0])(zeros)
    return jnp.moveaxis(J, 2, 1)  # (T_t, L*D, T_k, B, H) -> (T_t, T_k, L*D, B, H)


@jax.jit
def _reference_grads(params, xs, ys, h0, lengths):
    def E(p):
        return jnp.sum(_reference(p, xs, ys, h0, jnp.zeros((4, T, B, H)), lengths)[0])

    return jax.value_and_grad(E)(params)


def _grads(params, xs, ys, h0, kwargs):
    """``(E, grads, dh0)`` by ``jax.grad`` of ``bptt_jax.loss``: the referee."""
    E, grads = jax.value_and_grad(lambda p: bptt_jax.loss(p, xs, ys, h0, **kwargs))(params)
    dh0 = jax.grad(lambda h: bptt_jax.loss(params, xs, ys, h, **kwargs))(h0)
    return E, grads, dh0


def _close(actual, expected):
    err = max_relative_error(actual, expected)
    assert err <= RTOL, f"relative error {err:.3e} > {RTOL:.0e}"


def _check_forward(params, xs, ys, h0, kwargs):
    _, logits = bptt_jax.forward(params, xs, h0, **kwargs)
    _, z = _reference(params, xs, ys, h0, jnp.zeros((4, T, B, H)))
    if "lengths" in kwargs:
        real = jnp.arange(T) < kwargs["lengths"][:, None]
        assert not np.any(np.asarray(logits)[~np.asarray(real)])  # zero at padding
        z = jnp.where(real[..., None], z, logits)
    _close(logits, z)


def _check_loss(params, xs, ys, h0, kwargs):
    E_ref, grads_ref = _reference_grads(params, xs, ys, h0, kwargs.get("lengths"))
    E, grads, _ = _grads(params, xs, ys, h0, kwargs)
    _close(E, E_ref)
    _close(grads, grads_ref)


def _check_gradient(fn, params, xs, ys, h0, kwargs):
    E, grads = getattr(bptt_jax, fn)(params, xs, ys, h0, **kwargs)
    E_ref, grads_ref, _ = _grads(params, xs, ys, h0, kwargs)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
    _close(E, E_ref)
    _close(grads, grads_ref)


def _check_bptt_chunk(params, xs, ys, h0, kwargs):
    E, grads, dh0, _ = bptt_jax.bptt_chunk(params, xs, ys, h0, **kwargs)
    E_ref, grads_ref, dh0_ref = _grads(params, xs, ys, h0, kwargs)
    _close((E, grads, dh0), (E_ref, grads_ref, dh0_ref))


def _check_autodiff_dh0(params, xs, ys, h0, kwargs):
    dh0 = bptt_jax.autodiff_dh0(params, xs, ys, h0, **kwargs)
    assert dh0.shape == h0.shape
    _close(dh0, _grads(params, xs, ys, h0, kwargs)[2])


def _check_per_loss_deltas(params, xs, ys, h0, kwargs):
    deltas = bptt_jax.per_loss_deltas(params, xs, ys, h0, **kwargs)
    ref = _reference_deltas(params, xs, ys, h0, kwargs.get("lengths"))
    if isinstance(params, Params):
        ref = ref[:, :, 0]  # no layer axis for the seed's model
    assert deltas.shape == ref.shape
    _close(deltas, ref)
    # Σ_t Σ_k δ_k^(t) over the batch is ∂E/∂b of jax.grad(loss), per cell.
    _, grads, _ = _grads(params, xs, ys, h0, kwargs)
    db = jnp.sum(deltas, axis=(0, 1, -2))  # (H,) or (L*D, H)
    db_ref = [layer.b for cell in _cells(grads) for layer in cell]
    _close(db, db_ref[0] if isinstance(params, Params) else jnp.stack(db_ref))


def _check_gradient_flow(params, xs, ys, h0, kwargs):
    flow = bptt_jax.gradient_flow(params, xs, ys, h0, **kwargs)
    ref = _reference_deltas(params, xs, ys, h0, kwargs.get("lengths"))
    norms = jnp.moveaxis(jnp.mean(jnp.linalg.norm(ref, axis=-1), axis=-1), -1, 0)  # (L*D,T,T)
    if isinstance(params, Params):
        norms = norms[0]
        assert flow.delta_norms.shape == (T, T)
    _close(flow.delta_norms, norms)
    # The §6 bound holds along the top layer's own recurrence (every cell for the seed).
    top = (
        flow
        if isinstance(params, Params)
        else jax.tree.map(lambda a: a[-len(_cells(params)[0]) :], flow)
    )
    assert np.all(np.asarray(top.delta_norms) <= np.asarray(top.bound) * (1 + 1e-12) + 1e-300)
    assert np.all(np.asarray(top.bound) <= np.asarray(top.gamma_bound) * (1 + 1e-12) + 1e-300)


CHECKS = {
    "forward": _check_forward,
    "loss": _check_loss,
    "bptt": lambda *a: _check_gradient("bptt", *a),
    "bptt_chunk": _check_bptt_chunk,
    "bptt_per_loss": lambda *a: _check_gradient("bptt_per_loss", *a),
    "per_loss_deltas": _check_per_loss_deltas,
    "gradient_flow": _check_gradient_flow,
    "autodiff_bptt": lambda *a: _check_gradient("autodiff_bptt", *a),
    "autodiff_bptt_per_loss": lambda *a: _check_gradient("autodiff_bptt_per_loss", *a),
    "autodiff_dh0": _check_autodiff_dh0,
    "finite_difference_bptt": lambda *a: _check_gradient("finite_difference_bptt", *a),
}


# The fast tier runs every function on the richest model; .ci/run every model.
@pytest.mark.parametrize("model", slow_except(MODELS, fast={"bidirectional"}))
@pytest.mark.parametrize("fn", list(CHECKS))
def test_public_function_matches_its_referee(fn, model, x64):
    CHECKS[fn](*_model(model))


# Combinations that make no sense or are not implemented: a ValueError naming them.
REFUSED = {
    "bptt_per_loss-truncate": ("bptt_per_loss", dict(truncate=2), "bptt_per_loss: truncate"),
    "per_loss_deltas-truncate": ("per_loss_deltas", dict(truncate=2), "per_loss_deltas: trunc"),
    "autodiff_bptt-truncate": ("autodiff_bptt", dict(truncate=2), "autodiff_bptt: truncate"),
    "autodiff_bptt_per_loss-truncate": (
        "autodiff_bptt_per_loss", dict(truncate=2), "autodiff_bptt_per_loss: truncate"),
    "autodiff_dh0-truncate": ("autodiff_dh0", dict(truncate=2), "autodiff_dh0: truncate"),
}  # fmt: skip


@pytest.mark.parametrize(
    "model", slow_except(["deep", "bidirectional", "ragged"], fast={"ragged"})
)
@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_combination_is_a_value_error(case, model, x64):
    fn, options, match = REFUSED[case]
    params, xs, ys, h0, kwargs = _model(model)
    named = "DeepParams" if model != "ragged" else "lengths/mask"
    with pytest.raises(ValueError, match=match) as info:
        getattr(bptt_jax, fn)(params, xs, ys, h0, **kwargs, **options)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(hidden_size=True), "hidden_size must be an integer >= 1, got True"),
     (dict(num_layers=False), "num_layers must be an integer >= 1, got False")],
    ids=["hidden_size_True", "num_layers_False"],
)  # fmt: skip
def test_init_params_refuses_bools(kwargs, match):
    with pytest.raises(TypeError, match=match):
        bptt_jax.init_params(jax.random.key(0), **{"vocab_size": K, "hidden_size": H, **kwargs})


def test_name_lists_are_public_and_defined_once():
    from bptt_jax.core import activations, checks, clipping, init

    assert bptt_jax.activations == tuple(activations.ACTIVATIONS)
    assert bptt_jax.inits is init.INITS
    assert bptt_jax.clippers is clipping.CLIPPERS
    assert bptt_jax.matmul_dtypes is checks.MATMUL_DTYPES


def test_every_public_function_is_typed():
    # The redesign's rule: every public function's parameters and return value
    # carry type hints, and the package ships py.typed for type checkers.
    import inspect
    import pathlib

    untyped = []
    for name in bptt_jax.__all__:
        obj = getattr(bptt_jax, name)
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            missing = [p for p, v in sig.parameters.items() if v.annotation is inspect._empty]
            if missing or sig.return_annotation is inspect._empty:
                untyped.append((name, missing))
    assert not untyped
    assert (pathlib.Path(bptt_jax.__file__).parent / "py.typed").is_file()
