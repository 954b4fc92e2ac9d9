"""Hand BPTT against autodiff of the same model, timed in one process.

    python benchmarks/bench_bptt.py                # the default grid
    python benchmarks/bench_bptt.py --grid 65,256,32,64 --repeats 50
    python benchmarks/bench_bptt.py --json out.json

For every (K, H, B, T) it times, on the same parameters and the same token ids:

- ``bptt``        ``bptt_jax.bptt`` as a user calls it: input checks (a range
                  check of the ids, two host syncs) plus the jitted hand BPTT;
- ``jit(bptt)``   ``jax.jit(bptt_jax.bptt)``: the hand BPTT alone (value
                  checks are skipped under tracing);
- ``autodiff``    ``jax.jit(jax.value_and_grad(bptt_jax.loss))``: reverse-mode
                  autodiff of the same scan-based forward;
- ``naive AD``    autodiff of the formulation most users write: output layer
                  and loss inside the scan body, one step at a time.

Compile time (first call) is reported apart; each timing is the median of
``--repeats`` calls, each ended by ``jax.block_until_ready``. The ratio
columns are autodiff time / hand time (> 1: the hand gradient is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

import bptt_jax

DEFAULT_GRID = [
    (65, 256, 32, 64),
    (65, 512, 64, 128),
    (10000, 256, 32, 35),
    (10000, 512, 64, 128),
    (65, 64, 1, 1000),
]


def naive_loss(params, xs, ys, h0):
    """The seed's loss written step by step: gather, tanh, logits and loss per step."""
    U, V, W, b, c = params

    def step(carry, inputs):
        h_prev, E = carry
        x_t, y_t = inputs  # (B,), (B,)
        h = jnp.tanh(h_prev @ U.T + W.T[x_t] + b)
        z = h @ V.T + c
        log_yhat = jax.nn.log_softmax(z)
        E = E - jnp.sum(jnp.take_along_axis(log_yhat, y_t[:, None], axis=1))
        return (h, E), None

    (_, E), _ = lax.scan(step, (h0, jnp.zeros((), h0.dtype)), (xs.T, ys.T))
    return E


def time_fn(fn, args, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of ``repeats`` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def bench_point(K, H, B, T, repeats, dtype):
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = bptt_jax.init_params(kp, K, H, dtype=dtype)
    xs = jax.random.randint(kx, (B, T), 0, K)
    ys = jax.random.randint(ky, (B, T), 0, K)
    h0 = jnp.zeros((B, H), dtype)
    methods = {
        "bptt": bptt_jax.bptt,
        "jit(bptt)": jax.jit(bptt_jax.bptt),
        "autodiff": jax.jit(jax.value_and_grad(bptt_jax.loss)),
        "naive AD": jax.jit(jax.value_and_grad(naive_loss)),
    }
    out = {}
    for name, fn in methods.items():
        first, median = time_fn(fn, (params, xs, ys, h0), repeats)
        out[name] = {"first_call_s": first, "median_s": median}
    # Agreement, so a fast wrong answer cannot pass unnoticed.
    E, g = methods["jit(bptt)"](params, xs, ys, h0)
    E_ad, g_ad = methods["autodiff"](params, xs, ys, h0)
    err = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
        for a, b in zip((E, *g), (E_ad, *g_ad), strict=True)
    )
    return {"K": K, "H": H, "B": B, "T": T, "times": out, "max_rel_err_vs_autodiff": err}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--grid", action="append", metavar="K,H,B,T",
        help="a grid point (repeatable); default: the issue's five points",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    grid = [tuple(int(v) for v in g.split(",")) for g in args.grid] if args.grid else DEFAULT_GRID
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # a script, not a test: set once at start

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "dtype": args.dtype,
        "repeats": args.repeats,
    }
    print(" ".join(f"{k}={v}" for k, v in machine.items()))
    names = ["bptt", "jit(bptt)", "autodiff", "naive AD"]
    header = (
        f"{'K':>6}{'H':>5}{'B':>4}{'T':>6} |"
        + "".join(f"{n + ' ms':>13}" for n in names)
        + f" |{'AD/hand':>9}{'naiveAD/hand':>13} |{'compile s (hand/AD)':>20} |{'rel.err':>9}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for K, H, B, T in grid:
        r = bench_point(K, H, B, T, args.repeats, jnp.dtype(args.dtype))
        results.append(r)
        t = r["times"]
        hand = t["jit(bptt)"]["median_s"]
        print(
            f"{K:>6}{H:>5}{B:>4}{T:>6} |"
            + "".join(f"{t[n]['median_s'] * 1e3:>13.2f}" for n in names)
            + f" |{t['autodiff']['median_s'] / hand:>9.2f}"
            + f"{t['naive AD']['median_s'] / hand:>13.2f} |"
            + f"{t['jit(bptt)']['first_call_s']:>10.2f}/{t['autodiff']['first_call_s']:<9.2f} |"
            + f"{r['max_rel_err_vs_autodiff']:>9.1e}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
