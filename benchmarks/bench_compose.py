"""Issue 13: ``jax.grad`` through the hand VJP (``hand_loss``) against ``bptt`` itself.

    python benchmarks/bench_compose.py [--repeats N]

The target: the composed gradient costs at most 1.1x calling :func:`bptt_jax.bptt`
directly on the same problem. Both are timed as a user calls them, jitted once
(``lower().compile()``, compile time apart), float32, round-robin, medians:

- ``bptt``      ``jax.jit(lambda p, x, y: bptt_jax.bptt(p, x, y))``;
- ``grad``      ``jax.jit(jax.value_and_grad(bptt_jax.hand_loss))`` -- what a user's
                optax step does (the custom VJP; no autodiff of the recurrence);
- ``grad eager`` ``jax.value_and_grad(bptt_jax.hand_loss)`` unjitted (value checks,
                then one compiled call), for reference.

Wall and process-CPU medians (all threads; a shared machine disturbs the latter less).
Points: the seed's ``Params`` and a 2-layer ``DeepParams`` at the issue's sizes.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
from bench_deep import round_robin  # a sibling script: wall and CPU medians

import bptt_jax
from bptt_jax.app.measure.bench import compiled

# (K, H, B, T, layers, bidirectional); layers 0: the seed's Params
POINTS = [
    (65, 256, 32, 64, 0, False),
    (10000, 256, 32, 35, 0, False),
    (65, 256, 32, 64, 2, False),
    (10000, 256, 32, 35, 2, False),
    (65, 256, 32, 128, 2, True),
]


def _model(K, H, L, bi):
    key = jax.random.key(0)
    if L == 0:
        return bptt_jax.init_params(key, K, H)
    return bptt_jax.init_params(key, K, H, num_layers=L, bidirectional=bi)


def run_point(K, H, B, T, L, bi, repeats):
    """``{method: (median wall s, median CPU s)}`` and the largest relative difference."""
    params = _model(K, H, L, bi)
    xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
    ys = jax.random.randint(jax.random.key(2), (B, T), 0, K)
    args = (params, xs, ys)

    def direct(p, x, y):
        return bptt_jax.bptt(p, x, y)

    composed = jax.value_and_grad(bptt_jax.hand_loss)
    exe_d = compiled(direct, args)[0]
    exe_c = compiled(composed, args)[0]
    (E_d, g_d), (E_c, g_c) = exe_d(*args), exe_c(*args)
    diff = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
        for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_c), strict=True)
    )
    times = round_robin(
        {
            "bptt": lambda: jax.block_until_ready(exe_d(*args)),
            "grad": lambda: jax.block_until_ready(exe_c(*args)),
            "grad eager": lambda: jax.block_until_ready(composed(*args)),
        },
        repeats,
    )
    return times, max(diff, abs(float(E_d - E_c)) / abs(float(E_d)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    repeats = parser.parse_args().repeats
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    print(f"{'model':>10} {'K':>6} {'H':>4} {'B':>3} {'T':>4} | {'bptt ms':>8} {'grad ms':>8} "
          f"{'eager ms':>8} {'grad/bptt':>9} | {'bptt cpu':>8} {'grad cpu':>8} {'grad/bptt':>9} "
          f"| rel diff")  # fmt: skip
    for K, H, B, T, L, bi in POINTS:
        times, diff = run_point(K, H, B, T, L, bi, repeats)
        name = "Params" if L == 0 else f"{L}-layer{' bi' if bi else ''}"
        ms = {k: 1e3 * v[0] for k, v in times.items()}
        cpu = {k: 1e3 * v[1] for k, v in times.items()}
        print(f"{name:>10} {K:>6} {H:>4} {B:>3} {T:>4} | {ms['bptt']:8.2f} {ms['grad']:8.2f} "
              f"{ms['grad eager']:8.2f} {ms['grad'] / ms['bptt']:9.2f} | {cpu['bptt']:8.2f} "
              f"{cpu['grad']:8.2f} {cpu['grad'] / cpu['bptt']:9.2f} | {diff:.1e}",
              flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
