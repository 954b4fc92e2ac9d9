"""The sweep behind the per-backend defaults of ``chunk``, ``unroll`` and recompute chunking.

    python benchmarks/sweep_defaults.py                       # this backend, the grid below
    python benchmarks/sweep_defaults.py --grid 65,256,32,64 --repeats 5 --json sweep.json
    python benchmarks/sweep_defaults.py --quick               # one small point, 2 repeats

``bptt_jax.core.schedule.SCHEDULES`` holds, per backend, the rows of a backward chunk
(``chunk_rows``), ``lax.scan``'s ``unroll`` and the recompute chunk as a multiple of
⌈√T⌉; the api picks the row of ``jax.default_backend()``. For every (K, H, B, T)
this times the jitted hand BPTT (``bptt_core``, float32, the default precision)
over each knob, the others at this backend's defaults:

- ``unroll``      1, 2, 4, 8, 16 (at the default chunk);
- ``chunk_rows``  256 ... 16384 rows of ``chunk·B`` (steps = ⌈rows/B⌉, at most
                  ⌈T/4⌉, a divisor of T preferred, as ``default_chunk``);
- ``recompute``   ``recompute=True`` with chunk = 1, 2, 4 × ⌈√T⌉.

Each knob's values are compiled ahead, then called round-robin ``--repeats``
times (``block_until_ready`` each) and the median kept. Prints one table per
knob (ms, and the best value) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform

import jax
import jax.numpy as jnp

import bptt_jax
from bptt_jax.app.measure.bench import compiled, round_robin
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.options import Options
from bptt_jax.core.schedule import default_chunk, prefer_divisor, schedule

GRID = [
    (65, 256, 32, 64),
    (65, 512, 64, 128),
    (10000, 256, 32, 35),
    (10000, 512, 64, 128),
    (65, 64, 1, 1000),
    (65, 256, 32, 1024),
    (65, 1024, 256, 256),
    (10000, 1024, 128, 128),
]
QUICK_GRID = [(65, 64, 8, 32)]
UNROLLS = (1, 2, 4, 8, 16)
ROWS = (256, 512, 1024, 2048, 4096, 8192, 16384)
RECOMPUTE_FACTORS = (1, 2, 4)
KNOBS = ("unroll", "chunk_rows", "recompute")


def chunk_for_rows(T: int, B: int, rows: int) -> int:
    """The steps per chunk ``default_chunk`` picks for ``chunk_rows = rows``."""
    return prefer_divisor(T, min(-(-rows // max(B, 1)), -(-T // 4)))


def knob_settings(B: int, T: int, backend: str) -> dict:
    """``{knob: {label: bptt_core keywords}}`` for one grid point."""
    s = schedule(backend)
    chunk = default_chunk(T, B, False, backend)
    by_rows = {}
    for rows in ROWS:  # several row counts can give the same chunk: keep the first
        by_rows.setdefault(chunk_for_rows(T, B, rows), rows)
    root = math.isqrt(max(T - 1, 0)) + 1
    return {
        "unroll": {str(u): dict(chunk=chunk, unroll=u) for u in UNROLLS},
        "chunk_rows": {
            f"{rows} ({c} steps)": dict(chunk=c, unroll=s.unroll) for c, rows in by_rows.items()
        },
        "recompute": {
            f"{f}x sqrtT ({min(f * root, T)} steps)": dict(
                chunk=min(f * root, T), unroll=s.unroll, recompute=True
            )
            for f in RECOMPUTE_FACTORS
        },
    }


def sweep_point(K, H, B, T, repeats, backend, knobs=KNOBS):
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = bptt_jax.init_params(kp, K, H)
    xs = jax.random.randint(kx, (B, T), 0, K)
    ys = jax.random.randint(ky, (B, T), 0, K)
    args = (params, xs, ys, jnp.zeros((B, H)))
    out = {}
    for knob, settings in knob_settings(B, T, backend).items():
        if knob not in knobs:
            continue
        calls, compile_s = {}, {}
        for label, kw in settings.items():
            options = Options(**kw)
            fn = lambda p, x, y, h, o=options: bptt_core(p, x, y, h, options=o)[:2]  # noqa: E731
            exe, compile_s[label], _ = compiled(fn, args)
            calls[label] = lambda exe=exe: jax.block_until_ready(exe(*args))
        medians = round_robin(calls, repeats)
        out[knob] = {
            label: {"median_s": medians[label], "compile_s": compile_s[label]}
            for label in settings
        }
    return {"K": K, "H": H, "B": B, "T": T, "sweeps": out}


def print_tables(results):
    for knob in [k for k in KNOBS if k in results[0]["sweeps"]]:
        print(f"\n{knob}: median ms of the hand BPTT (best marked *)")
        for r in results:
            sweep = r["sweeps"][knob]
            best = min(sweep, key=lambda k: sweep[k]["median_s"])
            cells = [f"{k}: {v['median_s'] * 1e3:.2f}{'*' if k == best else ''}"
                     for k, v in sweep.items()]  # fmt: skip
            print(f"  ({r['K']}, {r['H']}, {r['B']}, {r['T']})  " + "  ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", action="append", metavar="K,H,B,T", help="repeatable")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per setting")
    parser.add_argument("--quick", action="store_true", help="one small point, 2 repeats")
    parser.add_argument("--json", default="sweep_defaults.json", metavar="FILE")
    parser.add_argument(
        "--knobs", default=",".join(KNOBS), help=f"comma-separated, of {', '.join(KNOBS)}"
    )
    args = parser.parse_args(argv)
    grid = [tuple(int(v) for v in g.split(",")) for g in args.grid] if args.grid else GRID
    if args.quick:
        grid, args.repeats = QUICK_GRID, 2
    backend = jax.default_backend()
    machine = {
        "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
        "backend": backend, "jax": jax.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "repeats": args.repeats,
        "defaults": schedule(backend)._asdict(),
    }  # fmt: skip
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    results = []
    for K, H, B, T in grid:
        results.append(sweep_point(K, H, B, T, args.repeats, backend, args.knobs.split(",")))
        print(f"  ({K}, {H}, {B}, {T}) done", flush=True)
        machine["load_avg_end"] = os.getloadavg()
        with open(args.json, "w") as f:  # after every point: a run cut short keeps its points
            json.dump({"machine": machine, "results": results}, f, indent=2)
    print_tables(results)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
