"""The gated cells (issue 23): hand BPTT of the LSTM and GRU vs autodiff and PyTorch.

    python benchmarks/bench_gated.py [--repeats N] [--cells lstm,gru] [--json PATH]
                                     [--point K,H,B,T ...]   # default: the three POINTS

Float32, summed cross-entropy, forward + backward, the same parameters and token ids
for every method; each JAX function compiled ahead (``lower().compile()``, compile
seconds apart), then all called round-robin ``--repeats`` times; medians in one run:

- ``hand``      ``deep_bptt_core`` with the cell (the chunked hand backward of
                ``bptt_jax.bptt``, default schedule), loss and gradients;
- ``autodiff``  ``jax.jit(jax.value_and_grad(loss))`` of the same model (the
                ``lax.scan`` forward of ``bptt_jax.loss``);
- ``torch``     PyTorch's ``nn.LSTM``/``nn.GRU`` + ``nn.Linear``, ``.backward()`` of
                the summed cross-entropy, when torch is installed (its threads set to
                JAX's CPU count). Input: one-hot vectors at K = 65; at K = 10000 an
                ``nn.Embedding(K, H)`` in front of an ``nn.LSTM(H, H)`` (a one-hot
                (B·T, 10000) product would be unfair to it). Where JAX runs on a GPU
                and torch sees CUDA, the modules and tensors are on ``cuda`` (cuDNN's
                cells) and each call ends with ``torch.cuda.synchronize()``.

XLA's temp bytes (``memory_analysis``) for the JAX methods. Targets: hand at least 1.2x
faster than autodiff at every point and faster than PyTorch's CPU cells, temp bytes at
K = 10000 at most 30% of autodiff's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import jax.numpy as jnp
from bench_deep import round_robin

import bptt_jax
from bptt_jax.api.options import resolve_schedule
from bptt_jax.app.measure.bench import compiled
from bptt_jax.core.cells import cell_named
from bptt_jax.core.deep import deep_bptt_core, deep_loss_core
from bptt_jax.core.options import Options

# (K, H, B, T)
POINTS = [(65, 256, 32, 64), (10000, 256, 32, 35), (65, 64, 1, 1000)]


def jax_methods(cell, K, H, B, T):
    # the backend's default chunk and unroll, as bptt_jax.bptt resolves them (on the CPU
    # the core's defaults; on a GPU its own row of SCHEDULES); kernel "scan"
    chunk, unroll = resolve_schedule(None, None, False, B, T)
    options = Options(cell=cell_named(cell), chunk=chunk, unroll=unroll)
    params = bptt_jax.init_params(jax.random.key(0), K, H, cell=cell, num_layers=1)
    deep = bptt_jax.core.params.to_deep(params)
    xs = jax.random.randint(jax.random.key(1), (B, T), 0, K)
    ys = jax.random.randint(jax.random.key(2), (B, T), 0, K)
    h0 = cell_named(cell).zero_state((1, B, H), jnp.float32)
    args = (deep, xs, ys, h0)
    hand = lambda p, x, y, h: deep_bptt_core(p, x, y, h, options=options)[:2]  # noqa: E731
    auto = jax.value_and_grad(lambda p, x, y, h: deep_loss_core(p, x, y, h, options=options))
    (exe_h, comp_h, temp_h), (exe_a, comp_a, temp_a) = compiled(hand, args), compiled(auto, args)
    got, want = exe_h(*args), exe_a(*args)
    err = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )
    fns = {"hand": lambda: jax.block_until_ready(exe_h(*args)),
           "autodiff": lambda: jax.block_until_ready(exe_a(*args))}  # fmt: skip
    info = dict(hand_compile_s=comp_h, autodiff_compile_s=comp_a, hand_temp_mib=temp_h / 2**20,
                autodiff_temp_mib=temp_a / 2**20, max_rel_err=err, chunk=chunk,
                unroll=unroll)  # fmt: skip
    return fns, info, (xs, ys)


def torch_device():
    """``"cuda"`` where JAX runs on a GPU and torch sees CUDA, ``"cpu"``, or ``None``
    without torch."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_method(cell, K, H, B, T, ids):
    """PyTorch's forward + backward, or ``None`` without torch (on :func:`torch_device`)."""
    device = torch_device()
    if device is None:
        return None
    import numpy as np
    import torch

    cuda = device == "cuda"
    if not cuda:
        torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    xs, ys = (torch.from_numpy(np.array(a)).long().to(device) for a in ids)  # writable copies
    embed = K > 1000
    front = torch.nn.Embedding(K, H).to(device) if embed else None
    rnn = module(H if embed else K, H, batch_first=True).to(device)
    head = torch.nn.Linear(H, K).to(device)
    x_in = None if embed else torch.nn.functional.one_hot(xs, K).float()

    def step():
        x = front(xs) if embed else x_in
        out, _ = rnn(x)
        E = torch.nn.functional.cross_entropy(head(out).reshape(-1, K), ys.reshape(-1),
                                              reduction="sum")  # fmt: skip
        E.backward()
        if cuda:
            torch.cuda.synchronize()  # the call ends when the GPU has finished it

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument(
        "--point", action="append", metavar="K,H,B,T",
        help="a point instead of POINTS (repeatable; tiny ones: a dry run)",
    )  # fmt: skip
    args = parser.parse_args()
    points = [tuple(int(v) for v in p.split(",")) for p in args.point] if args.point else POINTS
    print(f"jax {jax.__version__} on {jax.devices()[0]}, {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cpus; load average before: {os.getloadavg()}")  # fmt: skip
    print(f"{'cell':>4} {'K':>6} {'H':>4} {'B':>3} {'T':>5} | {'hand ms':>8} {'AD ms':>8} "
          f"{'x AD':>5} {'torch ms':>8} {'x torch':>7} | {'temp MiB hand':>13} {'AD':>7} "
          f"{'hand/AD':>7} | compile s hand/AD | err")  # fmt: skip
    rows = []
    for cell in args.cells.split(","):
        for K, H, B, T in points:
            fns, info, ids = jax_methods(cell, K, H, B, T)
            step = torch_method(cell, K, H, B, T, ids)
            if step is not None:
                fns["torch"] = step
            times = round_robin(fns, args.repeats)
            ms = {name: 1e3 * t[0] for name, t in times.items()}
            r = dict(cell=cell, K=K, H=H, B=B, T=T, **{f"{n}_ms": v for n, v in ms.items()},
                     **info)  # fmt: skip
            rows.append(r)
            t_ms = ms.get("torch", float("nan"))
            print(f"{cell:>4} {K:>6} {H:>4} {B:>3} {T:>5} | {ms['hand']:8.1f} "
                  f"{ms['autodiff']:8.1f} {ms['autodiff'] / ms['hand']:5.2f} {t_ms:8.1f} "
                  f"{t_ms / ms['hand']:7.2f} | {info['hand_temp_mib']:13.1f} "
                  f"{info['autodiff_temp_mib']:7.1f} "
                  f"{info['hand_temp_mib'] / info['autodiff_temp_mib']:7.1%} | "
                  f"{info['hand_compile_s']:5.1f} / {info['autodiff_compile_s']:5.1f} | "
                  f"{info['max_rel_err']:.1e}", flush=True)  # fmt: skip
            write(args, rows)
    print(f"load average after: {os.getloadavg()}")


def write(args, rows):
    """The rows so far to ``--json`` (after every point: a run stopped at a time limit
    keeps what it measured)."""
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, repeats=args.repeats, jax=jax.__version__,
                           device=str(jax.devices()[0]), torch_device=torch_device()),
                      fh, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
