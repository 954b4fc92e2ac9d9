"""Asking for float64 while JAX's x64 is off is a one-line error saying how to enable
it (JAX alone would silently give float32); with x64 on, float64 is what comes back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bptt_jax

K, H = 4, 3


def _state_dicts():
    rng = np.random.default_rng(0)
    rnn = {
        "weight_ih_l0": rng.standard_normal((H, K)),
        "weight_hh_l0": rng.standard_normal((H, H)),
    }
    return rnn, {"weight": rng.standard_normal((K, H))}  # float64 numpy weights


REQUESTS = {
    "init_params": lambda dtype: bptt_jax.init_params(jax.random.key(0), K, H, dtype=dtype),
    "init_params_deep": lambda dtype: bptt_jax.init_params(
        jax.random.key(0), K, H, num_layers=2, bidirectional=True, dtype=dtype
    ),
    "delay_task": lambda dtype: bptt_jax.delay_task(
        jax.random.key(0), batch=2, steps=5, delay=1, vocab_size=K, dtype=dtype
    ),
    "from_torch": lambda dtype: bptt_jax.from_torch(*_state_dicts(), dtype=dtype),
}


@pytest.mark.parametrize("dtype", [jnp.float64, "float64", np.float64], ids=["jnp", "str", "np"])
@pytest.mark.parametrize("fn", list(REQUESTS))
def test_float64_without_x64_is_a_one_line_error(fn, dtype):
    with jax.enable_x64(False), pytest.raises(ValueError) as info:
        REQUESTS[fn](dtype)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dtype=float64 needs 64-bit floats, which JAX has disabled")
    assert "jax.config.update('jax_enable_x64', True)" in message


@pytest.mark.parametrize("fn", list(REQUESTS))
def test_float64_with_x64_is_float64(fn):
    with jax.enable_x64(True):
        out = REQUESTS[fn](jnp.float64)
        dtypes = {
            leaf.dtype for leaf in jax.tree.leaves(out) if jnp.issubdtype(leaf.dtype, jnp.floating)
        }
    assert dtypes == {jnp.dtype(jnp.float64)}


def test_from_torch_defaults_to_what_jax_gives_for_float64_weights():
    # by default the weights' dtype, as JAX gives it: float32 while x64 is off (documented)
    with jax.enable_x64(False):
        params = bptt_jax.from_torch(*_state_dicts())
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_a_non_floating_dtype_is_still_a_type_error():
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype .* got int32"):
        bptt_jax.init_params(jax.random.key(0), K, H, dtype=jnp.int32)
