"""Steps/s of the data-parallel training step on 1 to 8 devices.

    python benchmarks/bench_parallel.py                    # 1, 2, 4, 8 simulated CPU devices
    python benchmarks/bench_parallel.py --devices 1,8 --repeats 50 --json out.json
    python benchmarks/bench_parallel.py --real             # the machine's own devices (GPU/TPU)

Times the step ``bptt-jax train`` runs (:func:`bptt_jax.app.training.train_step.make_train_step`:
hand BPTT, mean-per-character gradient, clipping, Adam), with the batch split
over an ``N``-device mesh exactly as ``train`` places it (parameters and
optimizer state replicated, ``xs, ys, h`` sharded on the batch axis; on one
device the plain ``bptt_core``). The first call (compile) is reported apart;
the figure is the median of ``--repeats`` calls, each ended by
``jax.block_until_ready``.

The device count of the CPU backend is fixed when JAX is imported
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so each count runs
in a child process of this script. Simulated devices share the machine's
cores: on a 2-core CPU the figures measure the overhead of the split and the
all-reduce, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def child(n: int, args) -> dict:
    """Times the step on ``n`` devices of this process (JAX imported here)."""
    import jax
    import numpy as np

    from bptt_jax.app.training.config import TrainConfig
    from bptt_jax.app.training.parallel import replicate, shard_batch
    from bptt_jax.app.training.train_step import (
        data_parallel_grad_fn,
        make_optimizer,
        make_train_step,
        training_mesh,
    )
    from bptt_jax.core.params import init_params

    K, H, B, T = args.vocab_size, args.hidden_size, args.batch_size, args.seq_len
    mesh = training_mesh(n, B)
    tx = make_optimizer(TrainConfig())  # adam 3e-3, global-norm clip 1: train's default
    step = make_train_step(tx, data_parallel_grad_fn(mesh) if n > 1 else None)
    params = replicate(init_params(jax.random.key(0), K, H), mesh)
    opt_state = replicate(tx.init(params), mesh)
    rng = np.random.default_rng(0)
    xs = shard_batch(rng.integers(0, K, (B, T)).astype(np.int32), mesh)
    ys = shard_batch(rng.integers(0, K, (B, T)).astype(np.int32), mesh)
    h = shard_batch(np.zeros((B, H), np.float32), mesh)

    t0 = time.perf_counter()
    params, opt_state, h, loss, _ = jax.block_until_ready(step(params, opt_state, xs, ys, h))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        params, opt_state, h, loss, _ = jax.block_until_ready(step(params, opt_state, xs, ys, h))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "devices": n,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "median_ms": 1e3 * median,
        "steps_per_s": 1 / median,
        "compile_s": compile_s,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4,8", help="device counts (default 1,2,4,8)")
    parser.add_argument(
        "--real", action="store_true", help="the machine's own devices, not simulated CPU ones"
    )
    parser.add_argument("--vocab-size", "-K", type=int, default=100)
    parser.add_argument("--hidden-size", "-H", type=int, default=256)
    parser.add_argument("--batch-size", "-B", type=int, default=64)
    parser.add_argument("--seq-len", "-T", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        json.dump(child(args.child, args), sys.stdout)
        return

    counts = [int(n) for n in args.devices.split(",")]
    rows = []
    for n in counts:
        env = dict(os.environ)
        if not args.real:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--child", str(n)]
        cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                ("vocab_size", "hidden_size", "batch_size", "seq_len", "repeats")]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"{n} devices failed:\n{proc.stderr}")
        rows.append(json.loads(proc.stdout))

    a = args
    machine = platform.processor() or platform.machine()
    print(f"K={a.vocab_size} H={a.hidden_size} B={a.batch_size} T={a.seq_len}, float32, "
          f"Adam + global-norm clip, median of {a.repeats}; {machine}, "
          f"{os.cpu_count()} CPUs, {'real' if a.real else 'simulated'} devices")  # fmt: skip
    print(f"{'devices':>7} {'platform':>8} {'ms/step':>9} {'steps/s':>8} {'vs 1':>6} "
          f"{'compile s':>9} {'loss':>8}")  # fmt: skip
    base = rows[0]["steps_per_s"]
    for r in rows:
        print(f"{r['devices']:>7} {r['platform']:>8} {r['median_ms']:>9.2f} "
              f"{r['steps_per_s']:>8.1f} {r['steps_per_s'] / base:>6.2f} "
              f"{r['compile_s']:>9.2f} {r['loss']:>8.4f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
