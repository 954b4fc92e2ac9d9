"""Bad input raises a clear error at the public entry points; tracing still works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_tree_close, make_problem

import bptt_jax
from bptt_jax import Params

K, H, C, B, T = 6, 4, 3, 2, 5


@pytest.fixture
def problem(x64):
    return make_problem(K=K, H=H, C=C, B=B, T=T, h0=True)


def _bad_values(xs, ys):
    """name -> (xs, ys, message): bad *values*. In a NumPy array they are refused
    on the host with the message; in a jax.Array they make the call NaN."""
    soft = jnp.full((B, T, C), 1 / C)
    return {
        "xs_id_too_large": (xs.at[1, 3].set(K), ys,
                            r"xs contains 6 at index \(1, 3\); valid input ids .* are 0..5"),
        "xs_id_negative": (xs.at[0, 0].set(-1), ys, r"xs contains -1 at index \(0, 0\)"),
        "ys_id_too_large": (xs, ys.at[0, 2].set(C),
                            r"ys contains 3 at index \(0, 2\); valid class ids .*= 3"),
        "ys_id_negative": (xs, ys.at[1, 4].set(-7), r"ys contains -7"),
        "soft_ys_not_summing_to_1": (xs, jnp.full((B, T, C), 0.3),
                                     r"must sum to 1 .* index \(0, 0\) is off by 0.1"),
        "soft_ys_negative": (xs, jnp.full((B, T, C), 1.0).at[..., 0].set(-1.0),
                             "probabilities >= 0, found -1"),
        "soft_ys_nan": (xs, soft.at[0, 1, 2].set(jnp.nan),
                        r"finite probabilities; the row at index \(0, 1\) holds nan"),
        "soft_ys_inf": (xs, soft.at[1, 0, 0].set(jnp.inf), r"index \(1, 0\) holds inf"),
    }  # fmt: skip


def _bad_inputs(params, xs, ys, h0):
    """name -> (args, error type, message pattern)."""
    return {
        "ys_float_ids": ((params, xs, ys.astype(jnp.float64), h0), ValueError,
                         r"soft labels ys have shape \(2, 5\), expected \(2, 5, 3\)"),
        "ys_bool": ((params, xs, ys > 0, h0), TypeError,
                    "ys must be integer class ids or floating probability vectors"),
        "ys_shape": ((params, xs, ys[:, :-1], h0), ValueError,
                     r"ys has shape \(2, 4\), expected \(2, 5\)"),
        "ys_single_for_batch": ((params, xs, ys[0], h0), ValueError, "ys has shape"),
        "xs_rank3_ids": ((params, xs[None], ys, h0), ValueError,
                         r"integer xs must be token ids of shape \(T,\) or \(B, T\)"),
        "xs_rank1_dense": ((params, jnp.ones(T), ys, h0), ValueError,
                           r"floating xs must be input vectors"),
        "xs_dense_wrong_K": ((params, jnp.ones((B, T, K + 1)), ys, h0), ValueError,
                             r"size 7 in their last axis, expected K = W.shape\[1\] = 6"),
        "xs_bool": ((params, xs > 2, ys, h0), TypeError, "xs must be integer token ids"),
        "h0_single_for_batch": ((params, xs, ys, h0[0]), ValueError,
                                r"h0 has shape \(4,\), expected \(2, 4\)"),
        "h0_wrong_H": ((params, xs, ys, jnp.zeros((B, H + 1))), ValueError, "h0 has shape"),
        "h0_int": ((params, xs, ys, jnp.zeros((B, H), jnp.int32)), TypeError,
                   "h0 must be floating"),
        "params_V_wrong_H": ((params._replace(V=jnp.zeros((C, H + 1))), xs, ys, h0), ValueError,
                             r"params.V has shape \(3, 5\), expected \(3, 4\)"),
        "params_U_not_square": ((params._replace(U=jnp.zeros((H, H + 1))), xs, ys, h0),
                                ValueError, r"params.U has shape"),
        "params_b_rank": ((params._replace(b=jnp.zeros((H, 1))), xs, ys, h0), ValueError,
                          r"params.b must have 1 dimensions"),
        "params_mixed_dtype": ((params._replace(c=params.c.astype(jnp.float32)), xs, ys, h0),
                               TypeError, "params must share one floating dtype"),
        "params_int": ((params._replace(U=jnp.zeros((H, H), jnp.int32)), xs, ys, h0), TypeError,
                       "params.U must be floating point"),
        "params_dict": ((dict(params._asdict()), xs, ys, h0), TypeError,
                        "params must be a bptt_jax.Params"),
    }  # fmt: skip


with jax.enable_x64(True):  # only the names are kept
    BAD = list(_bad_inputs(*make_problem(K=K, H=H, C=C, B=B, T=T, h0=True)))
    BAD_VALUES = list(_bad_values(*make_problem(K=K, H=H, C=C, B=B, T=T)[1:3]))


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("fn", ["bptt", "loss", "autodiff_bptt"])
def test_bad_input_raises_clear_error(problem, name, fn):
    args, error, match = _bad_inputs(*problem)[name]
    with pytest.raises(error, match=match):
        getattr(bptt_jax, fn)(*args)


@pytest.mark.parametrize("name", BAD_VALUES)
@pytest.mark.parametrize("fn", ["bptt", "loss", "autodiff_bptt"])
def test_bad_host_value_raises_clear_error(problem, name, fn):
    params, _, _, h0 = problem
    xs, ys, match = _bad_values(*problem[1:3])[name]
    with pytest.raises(ValueError, match=match):
        getattr(bptt_jax, fn)(params, np.asarray(xs), np.asarray(ys), h0)


def _all_nan(tree) -> bool:
    """NaN in every array of ``tree``, and nothing but NaN (or 0: dW's columns of ids
    that never occur, which the scatter-add of the NaN deltas leaves at zero)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    return all(np.isnan(a).any() and (np.isnan(a) | (a == 0)).all() for a in leaves)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", BAD_VALUES)
@pytest.mark.parametrize("fn", ["bptt", "autodiff_bptt", "loss"])
def test_bad_device_value_makes_loss_and_gradients_nan(problem, name, fn, jit):
    # A jax.Array is not read back to the host to be checked: the bad value
    # is folded into the computation, NaN, eagerly and under jit alike.
    params, _, _, h0 = problem
    xs, ys, _ = _bad_values(*problem[1:3])[name]
    call = getattr(bptt_jax, fn)
    out = (jax.jit(call) if jit else call)(params, xs, ys, h0)
    assert _all_nan(out)


@pytest.mark.parametrize("name", ["xs_id_too_large", "xs_id_negative"])
def test_forward_validates_too(problem, name):
    params, _, _, h0 = problem
    xs, _, match = _bad_values(*problem[1:3])[name]
    with pytest.raises(ValueError, match=match):
        bptt_jax.forward(params, np.asarray(xs), h0)
    assert _all_nan(bptt_jax.forward(params, xs, h0))  # on the device: NaN outputs and state


@pytest.mark.parametrize("name", ["xs_dense_wrong_K", "h0_wrong_H", "params_dict"])
def test_forward_validates_shapes_too(problem, name):
    (params, xs, _, h0), error, match = _bad_inputs(*problem)[name]
    with pytest.raises(error, match=match):
        bptt_jax.forward(params, xs, h0)


def test_ys_is_required(problem):
    params, xs, _, _ = problem
    with pytest.raises(TypeError, match="ys is required"):
        bptt_jax.bptt(params, xs, None)


@pytest.mark.slow  # compiles every entry point
def test_numpy_and_list_inputs_are_accepted(problem):
    params, xs, ys, h0 = problem
    E, grads = bptt_jax.bptt(params, np.asarray(xs), np.asarray(ys).tolist(), np.asarray(h0))
    E_ref, grads_ref = bptt_jax.bptt(params, xs, ys, h0)
    assert float(E) == float(E_ref)
    assert_tree_close(grads, grads_ref, rtol=0.0)
    E_tuple, _ = bptt_jax.bptt(tuple(params), xs, ys, h0)  # a plain 5-tuple in Params order
    assert float(E_tuple) == float(E_ref)


# --- traced use: shape checks still run, value checks are skipped, nothing crashes ---


def test_jit_value_and_grad_of_loss_equals_bptt(problem):
    params, xs, ys, h0 = problem
    E, grads = jax.jit(jax.value_and_grad(bptt_jax.loss))(params, xs, ys, h0)
    E_hand, grads_hand = bptt_jax.bptt(params, xs, ys, h0)
    assert float(E) == pytest.approx(float(E_hand), rel=1e-14)
    assert_tree_close(grads_hand, grads, rtol=RTOL["float64"])


def test_vmap_of_bptt_over_sequences_sums_to_the_batch(problem):
    params, xs, ys, h0 = problem
    Es, grads = jax.vmap(bptt_jax.bptt, in_axes=(None, 0, 0, 0))(params, xs, ys, h0)
    assert Es.shape == (B,)
    E_batch, grads_batch = bptt_jax.bptt(params, xs, ys, h0)
    assert float(Es.sum()) == pytest.approx(float(E_batch), rel=1e-14)
    assert_tree_close(jax.tree.map(lambda g: g.sum(0), grads), grads_batch, rtol=1e-13)


def test_bptt_inside_a_users_jitted_training_step(problem):
    params, xs, ys, h0 = problem

    @jax.jit
    def sgd_step(params, xs, ys, h0):
        E, grads = bptt_jax.bptt(params, xs, ys, h0)
        return E, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)

    E0, params1 = sgd_step(params, xs, ys, h0)
    E1, _ = sgd_step(params1, xs, ys, h0)
    assert isinstance(params1, Params)
    assert float(E1) < float(E0)  # a small step downhill lowers the loss
    E_eager, _ = bptt_jax.bptt(params, xs, ys, h0)
    assert float(E0) == pytest.approx(float(E_eager), rel=1e-14)


def test_shape_errors_still_raise_under_jit(problem):
    params, xs, ys, h0 = problem
    with pytest.raises(ValueError, match="ys has shape"):
        jax.jit(bptt_jax.bptt)(params, xs, ys[:, :-1], h0)


@pytest.mark.parametrize("where", ["xs", "ys"])
@pytest.mark.parametrize("bad", [-1, -K - 5, K, K + 3])
def test_out_of_range_id_under_jit_poisons_the_loss_instead_of_wrapping(problem, where, bad):
    # Negative ids included: JAX's gathers read -1 as the last id, so the
    # public layer maps every out-of-range id away before the core sees it.
    params, xs, ys, h0 = problem
    xs, ys = (xs.at[0, 0].set(bad), ys) if where == "xs" else (xs, ys.at[0, 0].set(bad))
    E, grads = jax.jit(bptt_jax.bptt)(params, xs, ys, h0)
    assert np.isnan(float(E)) and _all_nan(grads)
    assert np.isnan(float(jax.jit(bptt_jax.loss)(params, xs, ys, h0)))


def test_out_of_range_ids_at_padding_are_still_ignored(problem):
    params, xs, ys, h0 = problem
    lengths = jnp.array([T, 3])
    E, grads = bptt_jax.bptt(params, xs, ys, h0, lengths=lengths)
    for padded in [(xs.at[1, 3:].set(-1), ys.at[1, 4].set(99)), (xs.at[1, 4].set(K), ys)]:
        for host in (False, True):
            args = [np.asarray(a) for a in padded] if host else padded
            E2, grads2 = bptt_jax.bptt(params, *args, h0, lengths=lengths)
            assert float(E2) == float(E)
            assert_tree_close(grads2, grads, rtol=0.0)


def test_int64_host_ids_are_checked_before_they_could_wrap():
    # With 64-bit mode off a conversion to int32 would read 2**32 as 0.
    params, xs, ys = make_problem(K=K, H=H, C=C, B=B, T=T, dtype="float32")[:3]
    big = np.asarray(xs, np.int64)
    big[1, 2] = 2**32
    with pytest.raises(ValueError, match=r"xs contains 4294967296 at index \(1, 2\)"):
        bptt_jax.bptt(params, big, np.asarray(ys))
    labels = np.asarray(ys, np.int64)
    labels[0, 1] = -(2**32)
    with pytest.raises(ValueError, match=r"ys contains -4294967296 at index \(0, 1\)"):
        bptt_jax.loss(params, np.asarray(xs), labels)
    # With a device mask the host check cannot know the real steps: the id
    # is still never wrapped into range, it makes the loss NaN.
    E = bptt_jax.loss(params, big, np.asarray(ys), lengths=jnp.array([T, T]))
    assert np.isnan(float(E))


@pytest.mark.parametrize("host", [True, False], ids=["numpy", "jax"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lengths=[T + 1, 2]), r"lengths contains 6; lengths must be in 0..T = 0..5"),
        (dict(lengths=[-1, 2]), "lengths contains -1"),
        (dict(mask=[[True, False, True, False, False]] * 2), "must be a prefix mask"),
    ],
)
def test_bad_lengths_and_masks(problem, kwargs, match, host):
    params, xs, ys, h0 = problem
    kwargs = {k: (np.asarray(v) if host else jnp.asarray(v)) for k, v in kwargs.items()}
    if host:
        with pytest.raises(ValueError, match=match):
            bptt_jax.bptt(params, xs, ys, h0, **kwargs)
    else:  # on the device: NaN, not a host round trip
        assert _all_nan(bptt_jax.bptt(params, xs, ys, h0, **kwargs))
