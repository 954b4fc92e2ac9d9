"""This checkout's public hand BPTT against another checkout's, paired in one process.

    python benchmarks/bench_trees.py --base ../other-checkout [--repeats 21] [--json F]

For a change that must not cost speed (issue 22's redesign): the other checkout's
``bptt_jax`` is imported under another name (its imports are relative), and both
versions' public calls run round robin on the same arrays, so a loaded machine slows
both alike. Each point times three entries: ``base``, ``new`` and ``base again`` (the
other checkout imported a second time under a third name, so compiled apart: the same
code run twice); the gap between the two base entries is the noise of the measurement
(timing jitter and what a compilation's placement in memory changes), against which
``new / base`` is read. Wall and process
CPU medians (``bench_deep.round_robin``); every call compiled before timing; float32.

Points: the seed's model on the issue-7 grid points that the README's tables use, and
the deep points of ``bench_deep.py`` and ``bench_compose.py`` (``bptt`` and
``jax.grad(hand_loss)``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
from bench_deep import round_robin  # a sibling script

import bptt_jax

# (label, K, H, B, T, layers, bidirectional, what): what = "bptt" or "hand_loss"
POINTS = [
    ("seed", 65, 256, 32, 64, 1, False, "bptt"),
    ("seed", 10000, 256, 32, 35, 1, False, "bptt"),
    ("seed", 65, 64, 1, 1000, 1, False, "bptt"),
    ("seed", 65, 128, 16, 256, 1, False, "bptt"),
    ("2-layer", 65, 256, 32, 64, 2, False, "bptt"),
    ("2-layer", 10000, 256, 32, 35, 2, False, "bptt"),
    ("2-layer bidir", 65, 256, 32, 128, 2, True, "bptt"),
    ("2-layer grad(hand_loss)", 65, 256, 32, 64, 2, False, "hand_loss"),
    ("seed grad(hand_loss)", 65, 64, 1, 1000, 1, False, "hand_loss"),
]


def load_base(checkout: str, name: str = "bptt_jax_base"):
    """The other checkout's package, imported as ``name``."""
    root = pathlib.Path(checkout, "bptt_jax").resolve()
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _call(pkg, what, args):
    if what == "bptt":
        return lambda: jax.block_until_ready(pkg.bptt(*args))
    grad = jax.jit(jax.grad(pkg.hand_loss))
    return lambda: jax.block_until_ready(grad(*args))


def _as_base(base, params):
    """``params`` as the other checkout's types (NamedTuples of the same fields)."""
    if isinstance(params, bptt_jax.Params):
        return base.Params(*params)
    return base.DeepParams(
        layers=tuple(base.Layer(*layer) for layer in params.layers),
        reverse_layers=tuple(base.Layer(*layer) for layer in params.reverse_layers),
        V=params.V, c=params.c,
    )  # fmt: skip


def run_point(bases, point, repeats):
    label, K, H, B, T, L, bi, what = point
    params = bptt_jax.init_params(jax.random.key(0), K, H, num_layers=L, bidirectional=bi)
    xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
    ys = jax.random.randint(jax.random.key(2), (B, T), 0, K)
    base, again = bases
    fns = {
        "base": _call(base, what, (_as_base(base, params), xs, ys)),
        "new": _call(bptt_jax, what, (params, xs, ys)),
        "base again": _call(again, what, (_as_base(again, params), xs, ys)),
    }
    times = round_robin(fns, repeats)
    ms = {name: (1e3 * w, 1e3 * c) for name, (w, c) in times.items()}
    return dict(
        label=label, K=K, H=H, B=B, T=T, what=what,
        base_ms=ms["base"][0], new_ms=ms["new"][0], base_again_ms=ms["base again"][0],
        base_cpu_ms=ms["base"][1], new_cpu_ms=ms["new"][1],
        base_again_cpu_ms=ms["base again"][1],
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout (its root folder)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    bases = (load_base(args.base), load_base(args.base, "bptt_jax_base_again"))
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'point':34s} {'base':>9s} {'new':>9s} {'again':>9s} {'new/base':>9s} "
          f"{'noise':>7s}   (wall ms; cpu ratio)")  # fmt: skip
    rows = []
    for point in POINTS:
        r = run_point(bases, point, args.repeats)
        rows.append(r)
        name = f"{r['label']} ({r['K']}, {r['H']}, {r['B']}, {r['T']})"
        noise = abs(r["base_again_ms"] / r["base_ms"] - 1)
        print(f"{name:34s} {r['base_ms']:9.2f} {r['new_ms']:9.2f} {r['base_again_ms']:9.2f} "
              f"{r['new_ms'] / r['base_ms']:9.3f} {noise:7.3f}   "
              f"{r['new_cpu_ms'] / r['base_cpu_ms']:.3f}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before the first timing
    main()
