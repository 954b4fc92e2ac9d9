"""Run in a subprocess by tests/test_parallel.py, with 8 simulated CPU devices.

XLA_FLAGS must be set before JAX is imported, so this runs in its own process
and prints one JSON object of measured errors for the test to assert on.
"""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bptt_jax  # noqa: E402
from bptt_jax.app.training.parallel import check_batch_divides, data_parallel_bptt, make_mesh  # noqa: E402
from bptt_jax.core.bptt import bptt_core  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


out = {"devices": len(jax.devices())}
with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    K, H, B, T = 7, 5, 16, 9
    params = bptt_jax.init_params(jax.random.key(0), K, H, dtype=jnp.float64)
    params = jax.tree.map(lambda a: 2 * a + 0.1 * rng.standard_normal(a.shape), params)
    xs = jnp.asarray(rng.integers(0, K, (B, T)))
    ys = jnp.asarray(rng.integers(0, K, (B, T)))
    h0 = jnp.asarray(0.3 * rng.standard_normal((B, H)))
    mesh = make_mesh(8)
    E8, g8, h_last8 = data_parallel_bptt(mesh)(params, xs, ys, h0)
    E1, g1, _, h_last1 = bptt_core(params, xs, ys, h0)
    E_ad, g_ad = jax.value_and_grad(bptt_jax.loss)(params, xs, ys, h0)
    out["E_vs_single"] = rel(E8, E1)
    out["grads_vs_single"] = max(rel(a, b) for a, b in zip(g8, g1, strict=True))
    out["grads_vs_jax_grad"] = max(rel(a, b) for a, b in zip(g8, g_ad, strict=True))
    out["h_T_vs_single"] = rel(h_last8, h_last1)
    out["grads_replicated"] = all(g.sharding.is_fully_replicated for g in g8)
    out["h_T_sharded_over"] = len(h_last8.sharding.device_set)

    # N SGD steps on 8 devices and on 1 give the same parameters.
    step8, step1 = data_parallel_bptt(mesh), data_parallel_bptt(make_mesh(1))
    p8 = p1 = params
    for _ in range(5):
        _, g, _ = step8(p8, xs, ys, h0)
        p8 = jax.tree.map(lambda p, g: p - 0.01 * g, p8, g)
        _, g, _ = step1(p1, xs, ys, h0)
        p1 = jax.tree.map(lambda p, g: p - 0.01 * g, p1, g)
    out["params_after_5_steps"] = max(rel(a, b) for a, b in zip(p8, p1, strict=True))

    try:
        check_batch_divides(12, mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    try:
        make_mesh(9)
        out["too_many_devices_error"] = None
    except ValueError as e:
        out["too_many_devices_error"] = str(e)

json.dump(out, sys.stdout)
