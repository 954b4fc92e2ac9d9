"""init_params(init=..., spectral_radius=...): each scheme, and clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bptt_jax
from bptt_jax.core.init import spectral_radius_of


def test_default_is_the_previous_pytorch_uniform_draw_bit_for_bit():
    # The draws init_params made before init= existed: same keys, same calls.
    key, K, H, C = jax.random.key(7), 5, 8, 4
    kU, kV, kW = jax.random.split(key, 3)
    a = 1 / math.sqrt(H)
    expected = (
        jax.random.uniform(kU, (H, H), jnp.float32, minval=-a, maxval=a),
        jax.random.uniform(kV, (C, H), jnp.float32, minval=-a, maxval=a),
        jax.random.uniform(kW, (H, K), jnp.float32, minval=-a, maxval=a),
    )
    for p in (bptt_jax.init_params(key, K, H, num_classes=C),
              bptt_jax.init_params(key, K, H, num_classes=C, init="uniform")):  # fmt: skip
        for got, want in zip((p.U, p.V, p.W), expected, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # draws at a shape of its own
def test_normal_is_the_seeds_small_random_weights():
    p = bptt_jax.init_params(jax.random.key(0), 40, 64, init="normal")
    for m in (p.U, p.V, p.W):
        assert abs(float(jnp.std(m)) - 0.01) < 0.001  # 0.01 · N(0, 1), thousands of draws
        assert abs(float(jnp.mean(m))) < 0.001
    assert not np.any(np.asarray(p.b)) and not np.any(np.asarray(p.c))


@pytest.mark.slow  # draws at shapes of its own
def test_orthogonal_U_has_orthonormal_columns(x64):
    p = bptt_jax.init_params(jax.random.key(1), 5, 8, init="orthogonal", dtype=jnp.float64)
    U = np.asarray(p.U)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-13)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(U)), np.ones(8), atol=1e-12)
    other = bptt_jax.init_params(jax.random.key(2), 5, 8, init="orthogonal", dtype=jnp.float64)
    assert not np.allclose(U, other.U)  # random, not a fixed rotation


def test_identity_U_for_irnn():
    p = bptt_jax.init_params(jax.random.key(0), 5, 8, init="identity")
    np.testing.assert_array_equal(p.U, np.eye(8, dtype=np.float32))
    assert float(jnp.max(jnp.abs(p.W))) <= 1 / math.sqrt(8)


@pytest.mark.parametrize("init", ["spectral", "normal", "uniform", "orthogonal", "identity"])
@pytest.mark.parametrize("rho", [0.5, 1.0, 2.5])
def test_spectral_radius_is_the_one_asked_for(init, rho, x64):
    p = bptt_jax.init_params(
        jax.random.key(3), 5, 8, init=init, spectral_radius=rho, dtype=jnp.float64
    )
    assert abs(spectral_radius_of(p.U) - rho) <= 1e-12 * rho
    if init in ("orthogonal", "identity"):  # equal singular values: ‖U‖₂ = ρ(U) too
        assert abs(np.linalg.norm(np.asarray(p.U), 2) - rho) <= 1e-12 * rho


def test_spectral_radius_rescales_the_same_draw(x64):
    a = bptt_jax.init_params(jax.random.key(4), 5, 8, init="uniform", dtype=jnp.float64)
    b = bptt_jax.init_params(
        jax.random.key(4), 5, 8, init="uniform", spectral_radius=2.0, dtype=jnp.float64
    )
    ratio = np.asarray(b.U) / np.asarray(a.U)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-12)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.V, b.V)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(init="xavier"), ValueError, "unknown init 'xavier'; expected one of 'normal', "
                                          "'uniform', 'orthogonal', 'identity', 'spectral'"),
        (dict(init=None), ValueError, "unknown init None"),
        (dict(init="spectral"), ValueError, "init='spectral' needs spectral_radius"),
        (dict(spectral_radius=0), ValueError, "spectral_radius must be a finite number > 0"),
        (dict(spectral_radius=-1.5), ValueError, "got -1.5"),
        (dict(spectral_radius=float("nan")), ValueError, "got nan"),
        (dict(spectral_radius=float("inf")), ValueError, "got inf"),
        (dict(spectral_radius="1"), TypeError, "spectral_radius must be a finite number > 0"),
        (dict(spectral_radius=True), TypeError, "got True"),
    ],
    ids=["unknown", "None", "spectral_without_radius", "radius_0", "radius_negative",
         "radius_nan", "radius_inf", "radius_str", "radius_bool"],
)  # fmt: skip
def test_bad_init_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        bptt_jax.init_params(jax.random.key(0), 5, 8, **kwargs)


@pytest.mark.slow  # draws every scheme at a shape of its own
def test_inits_lists_the_names():
    assert bptt_jax.inits == ("normal", "uniform", "orthogonal", "identity", "spectral")
    for name in bptt_jax.inits:
        radius = 1.0 if name == "spectral" else None
        p = bptt_jax.init_params(
            jax.random.key(0), 5, 8, num_classes=4, init=name, spectral_radius=radius
        )
        assert [x.shape for x in p] == [(8, 8), (4, 8), (8, 5), (8,), (4,)]
        assert all(x.dtype == jnp.float32 for x in p)
