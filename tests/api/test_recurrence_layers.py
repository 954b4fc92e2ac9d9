"""``recurrence`` takes recurrent parameters without an output layer -- a ``Layer``, a
tuple or list of them (a unidirectional stack), a ``DeepParams`` whose ``V`` and ``c``
are ``None`` -- and ``jax.grad`` returns the gradients in that structure. Referee:
``jax.grad`` of the same program around ``forward`` (JAX's autodiff through a plain
``lax.scan``) on the same parameters given a zero output layer; float64, 1e-10."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import slow_except

import bptt_jax
from bptt_jax import DeepParams, Layer, Params, recurrence
from bptt_jax.referees.tolerances import AUTODIFF, max_relative_error

K, H, B, T = 4, 3, 2, 6
LENGTHS = jnp.array([6, 4])
RESETS = jnp.array([[0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], bool)


def _scaled(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: 2 * a + jnp.asarray(0.3 * rng.standard_normal(a.shape)), tree)


def _case(name):
    """``(recurrent params, xs, h0, options)``."""
    rng = np.random.default_rng(1)
    deep = name.startswith(("stack", "deep"))
    model = bptt_jax.init_params(jax.random.key(0), K, H, dtype="float64",
                                 num_layers=2 if deep else 1,
                                 bidirectional=name == "deep_none")  # fmt: skip
    model = _scaled(model, 2)
    if name == "layer_dense":  # one sequence of dense inputs: they get W^T delta
        params = Layer(U=model.U, W=model.W, b=model.b)
        return params, jnp.asarray(rng.standard_normal((T, K))), None, {}
    xs = jnp.asarray(rng.integers(0, K, (B, T)))
    if name == "layer_ids":
        h0 = jnp.asarray(rng.standard_normal((B, H)))
        return Layer(U=model.U, W=model.W, b=model.b), xs, h0, {"lengths": LENGTHS}
    h0 = jnp.asarray(rng.standard_normal((2 * (1 + (name == "deep_none")), B, H)))
    if name == "stack_tuple":
        return tuple(model.layers), xs, h0, {"resets": RESETS}
    if name == "stack_list":
        return list(model.layers), xs, None, {}
    return model._replace(V=None, c=None), xs, h0, {"resets": RESETS, "lengths": LENGTHS}


def _full(params):
    """The same recurrent parameters as a whole model, with a zero output layer."""
    if isinstance(params, Layer):
        return Params(U=params.U, V=jnp.zeros((1, H)), W=params.W, b=params.b, c=jnp.zeros(1))
    if isinstance(params, DeepParams):
        D = 2 if params.reverse_layers else 1
        return params._replace(V=jnp.zeros((1, D * H)), c=jnp.zeros(1))
    return DeepParams(tuple(params), (), jnp.zeros((1, H)), jnp.zeros(1))


def _objective(hs, h_T):
    return jnp.sum(jnp.sin(hs) * jnp.arange(hs.shape[-1], dtype=hs.dtype)) + jnp.sum(h_T**3)


def _hand(params, xs, h0, options):
    return _objective(*recurrence(params, xs, h0, **options))


def _referee(params, xs, h0, options):
    hs, _, h_T = bptt_jax.forward(_full(params), xs, h0, return_state=True, **options)
    return _objective(hs, h_T)


NAMES = ["layer_ids", "layer_dense", "stack_tuple", "stack_list", "deep_none"]


@pytest.mark.parametrize("name", slow_except(NAMES, fast={"layer_ids", "deep_none"}))
def test_gradients_come_back_in_the_structure_passed_in(name, x64):
    params, xs, h0, options = _case(name)
    wrt = (0, 1) if jnp.issubdtype(xs.dtype, jnp.floating) else (0,)
    wrt += (2,) if h0 is not None else ()
    hand = jax.grad(_hand, wrt)(params, xs, h0, options)
    referee = jax.grad(_referee, wrt)(params, xs, h0, options)
    assert jax.tree.structure(hand) == jax.tree.structure(referee)
    assert jax.tree.structure(hand[0]) == jax.tree.structure(params)  # Layer, tuple, list...
    assert type(hand[0]) is type(params)
    err = max_relative_error(hand, referee)
    assert err <= AUTODIFF["float64"], f"relative error {err:.3e}"


@pytest.mark.parametrize("name", ["layer_ids", "deep_none"])
def test_outputs_equal_those_of_the_whole_model(name, x64):
    params, xs, h0, options = _case(name)
    got = recurrence(params, xs, h0, **options)
    expected = recurrence(_full(params), xs, h0, **options)
    for a, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def test_hand_loss_without_an_output_layer_is_a_clear_error():
    layer = Layer(U=jnp.zeros((H, H)), W=jnp.zeros((H, K)), b=jnp.zeros(H))
    with pytest.raises(TypeError, match="hand_loss needs the output layer"):
        bptt_jax.hand_loss(layer, jnp.zeros(T, int), jnp.zeros(T, int))


def test_a_layer_of_wrong_shapes_is_a_clear_error():
    layer = Layer(U=jnp.zeros((H, H)), W=jnp.zeros((H, K)), b=jnp.zeros(H + 1))
    with pytest.raises(ValueError, match=r"params.b has shape \(4,\), expected \(3,\)"):
        recurrence(layer, jnp.zeros(T, int))
