"""The Pallas recurrence kernels on a GPU (issue 17): lowering, the tests, timings, one JSON.

One prepared run for a lent GPU machine (no network needed)::

    python benchmarks/gpu_kernels.py --out "$OUT"            # a few minutes on an H100/H200
    python benchmarks/gpu_kernels.py --quick --out /tmp/gk   # anywhere: interpret mode, tiny
                                                             # shapes, the script end to end

Sections (each one's failure is recorded in the JSON and the next one still runs):

1. ``environment``: JAX version, backend, device, torch/cuDNN versions when importable.
2. ``lowering``: both kernels compiled (``interpret=False`` on a GPU: the Triton lowering)
   for tanh/sigmoid/relu with float32 and bfloat16 products, compile seconds or the error.
3. ``tests``: ``pytest tests/core/test_kernels.py`` on the device (every tier), with
   ``JAX_DEFAULT_MATMUL_PRECISION=highest`` so that the kernels (Triton: IEEE float32)
   and the scan (XLA) both compute full float32 products and the 1e-5 tolerance holds.
4. ``recurrence``: the two recursions alone, kernel vs ``lax.scan`` (the scan steps of
   ``bptt_jax.core.backward``), µs per step, with the kernel's FLOP rate and the rate at
   which each program reads U (the bound the docs compare to an SM's 128 B/clock of
   shared memory).
5. ``full``: loss and gradient at the issue's points: ``bptt_core`` with
   ``kernel="scan"`` and ``"pallas"`` (bfloat16 products where float32 U does not fit),
   ``jax.jit(jax.value_and_grad(loss))`` (``scan_unroll8``: ``unroll=8``;
   ``pallas_one_chunk``: ``chunk=T``, one launch per recursion), and PyTorch
   ``nn.RNN`` (cuDNN on the GPU) when torch is importable; medians of ``--repeats``
   round-robin calls, µs per step, and the largest relative difference of the Pallas
   gradients from the scan's.

Timings are on whatever machine runs it: the JSON names the device; compare only
numbers from one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import bptt_jax
from bptt_jax.app.measure.bench import round_robin
from bptt_jax.core import kernels
from bptt_jax.core.backward import _scan_step, make_ctx
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.cell import RNNCell
from bptt_jax.core.options import Options
from bptt_jax.core.schedule import default_chunk
from bptt_jax.core.steps import forward_step
from bptt_jax.referees.tolerances import max_relative_error as tree_rel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_bptt import torch_method

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRID = [(65, 64, 1, 1000), (65, 128, 32, 1024), (65, 256, 32, 1024)]
QUICK_GRID = [(5, 8, 3, 12), (5, 16, 2, 8)]
ACTIVATIONS = ("tanh", "sigmoid", "relu")


def section(name, fn, results):
    """Runs one section, storing its result or its error; prints progress."""
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        results[name] = fn()
    except Exception as err:  # a failed section is a result: the next one still runs
        results[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:500],
                         "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        print(f"   failed: {results[name]['error']}", flush=True)
    print(f"   {time.perf_counter() - t0:.1f} s", flush=True)


def environment():
    dev = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": getattr(dev, "device_kind", str(dev)),
           "interpret": jax.default_backend() != "gpu"}  # fmt: skip
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["cudnn"] = torch.backends.cudnn.version()
            env["torch_device"] = torch.cuda.get_device_name()
    except ImportError:
        env["torch"] = None
    return env


def _arrays(T, B, H, seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[-1]), jnp.float32)  # noqa: E731
    return f32(T, B, H), f32(B, H), f32(H, H), f32(T, B, H), f32(B, H)


def lowering(quick):
    T, B = (4, 3) if quick else (16, 32)
    out = []
    for act in ACTIVATIONS:
        for dt, H in (("float32", 16 if quick else 128), ("bfloat16", 16 if quick else 256)):
            a, h, U, G, g = _arrays(T, B, H)
            Uc = U.astype(dt)
            fl = kernels.step_flags(T, B, keep=jnp.arange(T) % 3 != 0)
            cell = RNNCell(act)
            fwd = functools.partial(kernels.forward_recursion, options=Options(cell=cell))
            bwd = functools.partial(
                kernels.backward_recursion, options=Options(cell=cell, clip_delta=1.0)
            )
            for name, fn, args in (("forward", fwd, (a, h, Uc.T, h, fl)),
                                   ("backward", bwd, (G, a, g, Uc, fl, g))):  # fmt: skip
                row = {"kernel": name, "activation": act, "products": dt, "H": H}
                t0 = time.perf_counter()
                try:
                    exe = jax.jit(fn).lower(*args).compile()
                    jax.block_until_ready(exe(*args))
                    row["compile_s"] = round(time.perf_counter() - t0, 3)
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:400]
                out.append(row)
                print(f"   {row}", flush=True)
    return out


def device_tests(quick):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
           "tests/core/test_kernels.py"]  # fmt: skip
    if quick:
        cmd += ["-k", "supported or auto"]
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    tail = (proc.stdout + proc.stderr)[-4000:]
    print("   " + tail.strip().splitlines()[-1], flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "output_tail": tail}


def _recurrence_fns(dt, Uc):
    """``(scan, pallas, pallas forward only)`` jitted: the two recursions on ``a_t, G_t``
    (the vanilla tanh cell)."""
    options = Options(cell=RNNCell("tanh"), matmul_dtype=None if dt == "float32" else jnp.bfloat16)
    ctx = make_ctx(options, jnp.float32)

    @jax.jit
    def scan(a, h, G, g):  # the scan steps of bptt_jax.core.backward on the same a_t, G_t
        step = forward_step(options.cell, ctx.mm, Uc.T)

        def fwd(h_prev, a_t):
            h = step(h_prev, a_t)
            return h, h

        hs = jax.lax.scan(fwd, h, a)[1]
        # inputs (G_t, trace_t, s_in_t, m_t, e_t, k_t): no padding, resets nor truncation
        (g, _), d = jax.lax.scan(_scan_step(ctx, Uc), (g, None),
                                 (G, hs, None, None, None, None), reverse=True)  # fmt: skip
        return hs, d, g

    @jax.jit
    def pallas(a, h, G, g):
        hs = kernels.forward_recursion(a, h, Uc.T, options=options)
        d, g, _ = kernels.backward_recursion(G, hs, g, Uc, options=options)
        return hs, d, g

    fwd_only = jax.jit(lambda a, h: kernels.forward_recursion(a, h, Uc.T, options=options))
    return scan, pallas, fwd_only


def _call(fn, args):
    return jax.block_until_ready(fn(*args))


def recurrence(grid, repeats):
    """The two recursions alone, kernel vs the scan, float32 state."""
    out = []
    for _, H, B, T in grid:
        dt = "float32" if kernels.kernel_supported(H, B, "float32", "gpu") else "bfloat16"
        a, h, U, G, g = _arrays(T, B, H)
        scan, pallas, fwd_only = _recurrence_fns(dt, U.astype(dt))
        ref, got = scan(a, h, G, g), pallas(a, h, G, g)
        calls = {"scan": (scan, (a, h, G, g)), "pallas": (pallas, (a, h, G, g)),
                 "pallas_forward": (fwd_only, (a, h))}  # fmt: skip
        times = round_robin(
            {n: functools.partial(_call, fn, args) for n, (fn, args) in calls.items()}, repeats
        )
        programs = -(-B // kernels.BLOCK_B)
        Hp, item = kernels.padded_size(H), jnp.dtype(dt).itemsize
        t_step = times["pallas"] / (2 * T)  # one step of either recursion
        row = {"point": [65, H, B, T], "products": dt,
               "us_per_step": {k: v / T * 1e6 for k, v in times.items()},
               "max_rel_diff": tree_rel(got, ref), "programs": programs,
               "tflops": 2 * 2 * B * H * H * T / times["pallas"] / 1e12,
               "U_read_GBps_per_program": Hp * Hp * item / t_step / 1e9}  # fmt: skip
        out.append(row)
        print(f"   {row}", flush=True)
    return out


def _core(chunk, **fields):
    """``bptt_core`` with ``Options(chunk=chunk, **fields)``."""
    return functools.partial(bptt_core, options=Options(chunk=chunk, **fields))


def full(grid, repeats, use_torch):
    """Loss and gradient at each point: scan, pallas, autodiff, torch."""
    out = []
    for K, H, B, T in grid:
        params = bptt_jax.init_params(jax.random.key(0), K, H)
        rng = np.random.default_rng(1)
        xs = jnp.asarray(rng.integers(0, K, (B, T)), jnp.int32)
        ys = jnp.asarray(rng.integers(0, K, (B, T)), jnp.int32)
        h0 = jnp.zeros((B, H), jnp.float32)
        fits32 = kernels.kernel_supported(H, B, "float32", "gpu")
        md = None if fits32 else jnp.bfloat16
        # the backend's default chunk (as bptt_jax.bptt picks it), unroll 1 unless named
        cs = default_chunk(T, B, False, jax.default_backend())
        core = functools.partial(_core, cs)
        fns = {
            "scan": core(kernel="scan"),
            "scan_unroll8": core(kernel="scan", unroll=8),
            "pallas": core(kernel="pallas", matmul_dtype=md),
            # one backward chunk: one launch of each kernel for the whole sequence
            "pallas_one_chunk": _core(T, kernel="pallas", matmul_dtype=md),
            "autodiff": jax.jit(jax.value_and_grad(bptt_jax.loss)),
        }
        if md is not None:
            fns["scan_bf16"] = core(kernel="scan", matmul_dtype=md)
        args = {n: (params, xs, ys) if n == "autodiff" else (params, xs, ys, h0) for n in fns}
        results = {n: fn(*args[n]) for n, fn in fns.items()}
        times = round_robin({n: functools.partial(_call, fn, args[n]) for n, fn in fns.items()},
                            repeats)  # fmt: skip
        torch_out = torch_method(params, xs, ys, os.cpu_count()) if use_torch else None
        row = {"point": [K, H, B, T], "pallas_products": "float32" if fits32 else "bfloat16",
               "chunk": cs}  # fmt: skip
        if torch_out is not None:
            times.update(round_robin({"torch": torch_out[0]}, repeats))
            row["torch"] = torch_out[2]
        ref = "scan" if fits32 else "scan_bf16"
        row["us_per_step"] = {k: v / T * 1e6 for k, v in times.items()}
        row["pallas_vs_scan_max_rel"] = tree_rel(results["pallas"][:2], results[ref][:2])
        out.append(row)
        print(f"   {row}", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="JSON folder")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest section")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    grid, repeats = (QUICK_GRID, 3) if args.quick else (GRID, args.repeats)
    results = {"argv": sys.argv[1:], "grid": grid, "repeats": repeats}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_kernels.json"
    # the JSON rewritten after every section: a run stopped at its time limit keeps them
    write = lambda: path.write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    section("environment", environment, results)
    write()
    section("lowering", lambda: lowering(args.quick), results)
    write()
    if not args.no_tests:
        section("tests", lambda: device_tests(args.quick), results)
        write()
    section("recurrence", lambda: recurrence(grid, repeats), results)
    write()
    section("full", lambda: full(grid, repeats, not args.no_torch), results)
    write()
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
