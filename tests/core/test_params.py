"""init_params: shapes, dtypes, scale, and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bptt_jax


@pytest.mark.parametrize(
    ("K", "H", "C"),
    [
        (65, 32, None),
        # each shape compiles the random draws anew
        pytest.param(10, 4, 3, marks=pytest.mark.slow),
        pytest.param(3, 17, 12, marks=pytest.mark.slow),
    ],
    ids=["C=K", "C<K", "C>K"],
)
def test_init_params_shapes_and_scale(K, H, C):
    p = bptt_jax.init_params(jax.random.key(0), K, H, num_classes=C)
    C = K if C is None else C
    assert isinstance(p, bptt_jax.Params)
    assert [x.shape for x in p] == [(H, H), (C, H), (H, K), (H,), (C,)]
    assert all(x.dtype == jnp.float32 for x in p)
    bound = 1 / np.sqrt(H)
    for m in (p.U, p.V, p.W):
        assert float(jnp.max(jnp.abs(m))) <= bound
        assert float(jnp.std(m)) > 0.4 * bound  # uniform(±a) has std a/sqrt(3)
    assert not np.any(np.asarray(p.b)) and not np.any(np.asarray(p.c))


def test_init_params_dtype_and_determinism(x64):
    a = bptt_jax.init_params(jax.random.key(3), 5, 4, dtype=jnp.float64)
    b = bptt_jax.init_params(jax.random.key(3), 5, 4, dtype=jnp.float64)
    c = bptt_jax.init_params(jax.random.key(4), 5, 4, dtype=jnp.float64)
    assert all(x.dtype == jnp.float64 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a.U, c.U)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(vocab_size=0, hidden_size=4), ValueError, "vocab_size must be an integer >= 1"),
        (dict(vocab_size=5, hidden_size=-2), ValueError, "hidden_size must be an integer >= 1"),
        (dict(vocab_size=5, hidden_size=4, num_classes=0), ValueError, "num_classes"),
        (dict(vocab_size=5.5, hidden_size=4), TypeError, "vocab_size must be an integer"),
        (dict(vocab_size=5, hidden_size=4, dtype=jnp.int32), TypeError, "floating dtype"),
    ],
    ids=["K0", "H_negative", "C0", "K_float", "int_dtype"],
)
def test_init_params_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bptt_jax.init_params(jax.random.key(0), **kwargs)
