"""Run in a subprocess by tests/api/test_shard_map.py, with 4 simulated CPU devices.

The public functions called inside ``jax.shard_map`` with its defaults
(``check_vma=True``), data-parallel over the batch; the parameters replicated.
XLA_FLAGS must be set before JAX is imported, so this runs in its own process and
prints one JSON object: per check, the largest relative error (max-norm, per leaf)
against the same call on one device, or the error message when the call failed.
"""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=4" in os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import bptt_jax  # noqa: E402

REP, SH = P(), P("b")  # replicated; split over the batch


def rel(actual, expected) -> float:
    """The largest relative error of any leaf (max-norm), float64 on the host."""
    errs = []
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape, (a.shape, e.shape)
        errs.append(float(np.max(np.abs(a - e), initial=0) / max(np.max(np.abs(e)), 1e-300)))
    return max(errs)


def sharded(fn, in_specs, out_specs, **kw):
    """``fn`` under ``jax.shard_map`` over the 4 devices (defaults: ``check_vma=True``)."""
    return jax.jit(jax.shard_map(fn, mesh=MESH, in_specs=in_specs, out_specs=out_specs, **kw))


def check(name, run):
    """``out[name]``: ``run()``'s error, or the failure's first line."""
    try:
        out[name] = run()
    except Exception as e:  # reported, so the test names what failed
        out[name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"


def psum(tree):
    return jax.lax.psum(tree, "b")


def seed_bptt():  # the seed's path: bptt_core, h0 defaulted (zeros) on every device
    E4, g4 = sharded(lambda p, x, y: psum(bptt_jax.bptt(p, x, y)), (REP, SH, SH), REP)(
        params, xs, ys
    )
    return rel((E4, g4), bptt_jax.bptt(params, xs, ys))


def chunk_with_states():  # sharded h0 and dh_T in, per-sequence dh0 and h_T out
    def local(p, x, y, h, d):
        E, g, dh0, h_T = bptt_jax.bptt_chunk(p, x, y, h, dh_T=d)
        return psum(E), psum(g), dh0, h_T

    got = sharded(local, (REP, SH, SH, SH, SH), (REP, REP, SH, SH))(params, xs, ys, h0, d_final)
    return rel(got, bptt_jax.bptt_chunk(params, xs, ys, h0, dh_T=d_final))


def deep_bptt():  # the deep path (bidirectional, 2 layers) with lengths, h0 defaulted
    def local(p, x, y, n):
        return psum(bptt_jax.bptt(p, x, y, lengths=n))

    got = sharded(local, (REP, SH, SH, SH), REP)(deep, xs, ys, lengths)
    return rel(got, bptt_jax.bptt(deep, xs, ys, lengths=lengths))


def unchecked_bptt():  # check_vma=False still works
    run = sharded(lambda p, x, y: psum(bptt_jax.bptt(p, x, y)), (REP, SH, SH), REP,
                  check_vma=False)  # fmt: skip
    return rel(run(params, xs, ys), bptt_jax.bptt(params, xs, ys))


def hand_loss_grad():  # jax.grad wrt replicated params: JAX sums over the devices
    grad = jax.value_and_grad(bptt_jax.hand_loss)
    E4, g4 = sharded(lambda p, x, y: (psum(grad(p, x, y)[0]), grad(p, x, y)[1]),
                     (REP, SH, SH), REP)(params, xs, ys)  # fmt: skip
    return rel((E4, g4), grad(params, xs, ys))


def hand_loss_h0_deep():  # varying h0 (its gradient per sequence), DeepParams, resets
    def f(p, x, y, h, r):
        return bptt_jax.hand_loss(p, x, y, h, resets=r, reduction="sum")

    grad = jax.grad(f, argnums=(0, 3))
    got = sharded(grad, (REP, SH, SH, P(None, "b"), SH), (REP, P(None, "b")))(
        deep, xs, ys, deep_h0, resets
    )
    return rel(got, grad(deep, xs, ys, deep_h0, resets))


def recurrence_objective(p, x, h):
    hs, h_T = bptt_jax.recurrence(p, x, h)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(h_T**2)


def recurrence_grad():  # a user's loss around recurrence, h0 defaulted and given
    grad = jax.grad(lambda p, x: recurrence_objective(p, x, None))
    got = sharded(grad, (REP, SH), REP)(params, xs)
    grad_h0 = jax.grad(recurrence_objective, argnums=(0, 2))
    got_h0 = sharded(grad_h0, (REP, SH, SH), (REP, SH))(params, xs, h0)
    return max(rel(got, grad(params, xs)), rel(got_h0, grad_h0(params, xs, h0)))


def recurrence_psum():  # params made varying by the user: per-device gradients, psummed
    def local(p, x):
        p = jax.lax.pcast(p, "b", to="varying")
        return psum(jax.grad(lambda p: recurrence_objective(p, x, None))(p))

    got = sharded(local, (REP, SH), REP)(params, xs)
    return rel(got, jax.grad(lambda p: recurrence_objective(p, xs, None))(params))


def recurrence_vs_autodiff():  # the same loss written with forward (autodiff) under shard_map
    def referee(p, x):
        hs, _, h_T = bptt_jax.forward(p, x, return_state=True)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(h_T**2)

    hand = sharded(jax.grad(lambda p, x: recurrence_objective(p, x, None)), (REP, SH), REP)
    auto = sharded(jax.grad(referee), (REP, SH), REP)
    return rel(hand(params, xs), auto(params, xs))


def loss_grad():  # jax.grad of the autodiff loss, dense inputs, mean
    def f(p, x, y):
        return bptt_jax.loss(p, x, y, reduction="mean")

    # each device's mean is over its own steps: the sum of the 4 means / 4 is the mean
    got = sharded(jax.grad(f), (REP, SH, SH), REP)(params, dense, ys)
    return rel(jax.tree.map(lambda g: g / 4, got), jax.grad(f)(params, dense, ys))


CHECKS = (seed_bptt, chunk_with_states, deep_bptt, unchecked_bptt, hand_loss_grad,
          hand_loss_h0_deep, recurrence_grad, recurrence_psum, recurrence_vs_autodiff,
          loss_grad)  # fmt: skip

out = {"devices": len(jax.devices())}
with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
    MESH = jax.make_mesh((4,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    K, H, B, T = 6, 4, 8, 7
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    params = bptt_jax.init_params(jax.random.key(0), K, H, dtype=jnp.float64)
    params = jax.tree.map(lambda a: 2 * a + f64(0.3 * rng.standard_normal(a.shape)), params)
    deep = bptt_jax.init_params(jax.random.key(1), K, H, num_layers=2, bidirectional=True,
                                dtype=jnp.float64)  # fmt: skip
    deep = jax.tree.map(lambda a: 2 * a + f64(0.3 * rng.standard_normal(a.shape)), deep)
    xs = jnp.asarray(rng.integers(0, K, (B, T)))
    ys = jnp.asarray(rng.integers(0, K, (B, T)))
    dense = f64(rng.standard_normal((B, T, K)))
    h0, d_final = f64(rng.standard_normal((B, H))), f64(rng.standard_normal((B, H)))
    deep_h0 = f64(rng.standard_normal((4, B, H)))
    lengths = jnp.asarray(rng.integers(1, T + 1, B))
    resets = jnp.asarray(rng.random((B, T)) < 0.2)
    for run in CHECKS:
        check(run.__name__, run)

json.dump(out, sys.stdout)
