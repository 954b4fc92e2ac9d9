"""Deep points of issue 13: the hand BPTT of stacked / bidirectional models vs autodiff.

    python benchmarks/bench_deep.py [--repeats N] [--json PATH]

Float32, the same parameters and token ids for both methods, each compiled ahead
(``lower().compile()``, compile seconds apart), then called round-robin ``--repeats``
times with ``block_until_ready``; medians in one run:

- ``hand``      ``deep_bptt_core`` (the chunked hand backward of ``bptt_jax.bptt``,
                defaults), loss and gradients;
- ``autodiff``  ``jax.jit(jax.value_and_grad(loss))`` of the same model
                (``deep_loss_core``, the scan-based forward of ``bptt_jax.loss``).

Also the process CPU seconds per call (median; all threads), which a loaded machine
disturbs less than wall time, and XLA's temp bytes (``memory_analysis``). Targets: hand
at least 1.2x faster than autodiff at every point, temp bytes at K = 10000 at most 30%
of autodiff's. The load average is printed before and after: the machine is shared.
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

import bptt_jax
from bptt_jax.app.measure.bench import compiled
from bptt_jax.core.deep import deep_bptt_core, deep_loss_core

# (name, K, H, B, T, layers, bidirectional)
POINTS = [
    ("2-layer", 65, 256, 32, 64, 2, False),
    ("2-layer", 10000, 256, 32, 35, 2, False),
    ("2-layer bidir", 65, 256, 32, 128, 2, True),
]


def _hand(p, x, y, h):
    return deep_bptt_core(p, x, y, h)[:2]


_auto = jax.value_and_grad(lambda p, x, y, h: deep_loss_core(p, x, y, h))


def round_robin(fns: dict, repeats: int) -> dict:
    """``{name: (median wall s, median process CPU s)}``, all called in turn."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in fns}


def run_point(K, H, B, T, L, bi, repeats):
    params = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=L, bidirectional=bi)
    xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
    ys = jax.random.randint(jax.random.key(2), (B, T), 0, K)
    h0 = jnp.zeros((L * (2 if bi else 1), B, H))
    args = (params, xs, ys, h0)
    (exe_h, comp_h, temp_h), (exe_a, comp_a, temp_a) = compiled(_hand, args), compiled(_auto, args)
    E_h, g_h = exe_h(*args)
    E_a, g_a = exe_a(*args)
    err = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(jax.tree.leaves((E_h, g_h)), jax.tree.leaves((E_a, g_a)), strict=True)
    )
    times = round_robin(
        {"hand": lambda: jax.block_until_ready(exe_h(*args)),
         "autodiff": lambda: jax.block_until_ready(exe_a(*args))},
        repeats,
    )  # fmt: skip
    return dict(
        K=K, H=H, B=B, T=T, layers=L, bidirectional=bi,
        hand_ms=1e3 * times["hand"][0], autodiff_ms=1e3 * times["autodiff"][0],
        hand_cpu_ms=1e3 * times["hand"][1], autodiff_cpu_ms=1e3 * times["autodiff"][1],
        hand_temp_mib=temp_h / 2**20, autodiff_temp_mib=temp_a / 2**20,
        hand_compile_s=comp_h, autodiff_compile_s=comp_a, max_rel_err=err,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.devices()[0]}, {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cpus; load average before: {load_before}")  # fmt: skip
    print(f"{'model':>14} {'K':>6} {'H':>4} {'B':>3} {'T':>4} | {'hand ms':>8} {'AD ms':>8} "
          f"{'x AD':>5} | {'hand cpu':>8} {'AD cpu':>8} {'x AD':>5} | {'temp MiB hand':>13} "
          f"{'AD':>6} {'hand/AD':>7} | err")  # fmt: skip
    rows = []
    for name, K, H, B, T, L, bi in POINTS:
        r = run_point(K, H, B, T, L, bi, args.repeats)
        rows.append(dict(name=name, **r))
        print(f"{name:>14} {K:>6} {H:>4} {B:>3} {T:>4} | {r['hand_ms']:8.1f} "
              f"{r['autodiff_ms']:8.1f} {r['autodiff_ms'] / r['hand_ms']:5.2f} | "
              f"{r['hand_cpu_ms']:8.1f} {r['autodiff_cpu_ms']:8.1f} "
              f"{r['autodiff_cpu_ms'] / r['hand_cpu_ms']:5.2f} | {r['hand_temp_mib']:13.1f} "
              f"{r['autodiff_temp_mib']:6.1f} "
              f"{r['hand_temp_mib'] / r['autodiff_temp_mib']:7.1%} | "
              f"{r['max_rel_err']:.1e}", flush=True)  # fmt: skip
    load_after = os.getloadavg()
    print(f"load average after: {load_after}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, load_before=load_before, load_after=load_after,
                           repeats=args.repeats, jax=jax.__version__), fh, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
