"""Deep points of issue 13: hand BPTT vs jax.jit(jax.value_and_grad(loss)), float32.

Usage: python benchmarks/bench_deep.py [--repeats N]. Prints median seconds and XLA
temp bytes (``.lower(...).compile().memory_analysis()``) per point, and the machine load.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp

import bptt_jax
from bptt_jax.core.deep import deep_bptt_core, deep_loss_core

# (name, K, H, B, T, layers, bidirectional)
POINTS = [
    ("2-layer", 65, 256, 32, 64, 2, False),
    ("2-layer", 10000, 256, 32, 35, 2, False),
    ("2-layer bidirectional", 65, 256, 32, 128, 2, True),
]


def median_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def temp_bytes(fn, args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    for name, K, H, B, T, L, bi in POINTS:
        params = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=L, bidirectional=bi)
        xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
        ys = jax.random.randint(jax.random.key(2), (B, T), 0, K)
        h0 = jnp.zeros((L * (2 if bi else 1), B, H))
        args = (params, xs, ys, h0)
        hand = jax.jit(lambda p, x, y, h: deep_bptt_core(p, x, y, h)[:2])
        auto = jax.jit(jax.value_and_grad(lambda p, x, y, h: deep_loss_core(p, x, y, h)))
        t_hand, t_auto = median_time(hand, args, repeats), median_time(auto, args, repeats)
        b_hand, b_auto = temp_bytes(hand, args), temp_bytes(auto, args)
        print(f"{name} (K,H,B,T)=({K},{H},{B},{T}): hand {t_hand * 1e3:.1f} ms, autodiff "
              f"{t_auto * 1e3:.1f} ms, speedup {t_auto / t_hand:.2f}x; temp bytes hand "
              f"{b_hand / 2**20:.1f} MiB, autodiff {b_auto / 2**20:.1f} MiB "
              f"({b_hand / b_auto:.0%})", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
