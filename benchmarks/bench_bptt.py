"""Hand BPTT against autodiff (and PyTorch) on the issue-7 grid, in one process.

    python benchmarks/bench_bptt.py                         # the grid: table + JSON + PNG
    python benchmarks/bench_bptt.py --grid 65,256,32,64 --repeats 50 --no-torch
    python benchmarks/bench_bptt.py --quick                 # 3 repeats, no unroll sweep

For every (K, H, B, T) it times, on the same parameters and token ids, float32:

- ``bptt``        ``bptt_jax.bptt`` as a user calls it: input checks plus the
                  jitted hand BPTT;
- ``hand``        the jitted hand BPTT alone (``bptt_core``; chunked output
                  layer, every h_t stored; this backend's default ``chunk`` and
                  ``unroll``, ``bptt_jax.core.schedule.SCHEDULES``, as ``bptt`` runs);
- ``recompute``   the same with ``recompute=True`` (√T stored states);
- ``bf16``        the same with ``matmul_dtype="bfloat16"``;
- ``autodiff``    ``jax.jit(jax.value_and_grad(bptt_jax.loss))``: reverse-mode
                  autodiff of the same scan-based forward (output layer
                  batched over all steps after the scan);
- ``naive AD``    autodiff of the formulation most users write: output layer
                  and loss inside the scan body, one step at a time;
- ``torch``       PyTorch ``nn.Embedding`` + ``nn.RNN`` + ``nn.Linear`` +
                  ``cross_entropy(reduction="sum")``, forward and backward,
                  on the CPU with the same threads, or cuDNN's ``nn.RNN`` on
                  CUDA when JAX's default device is a GPU (optional: skipped
                  when torch is not installed). Loaded with the same model (embedding = Wᵀ,
                  W_ih = I, W_hh = U, b_ih = b, b_hh = 0, head = V, c), so its
                  loss and gradients are checked against ours too.

All timed at JAX's default matmul precision (TF32 products on a recent GPU);
the agreement table recompiles every method and autodiff at ``"highest"``, a
second table gives the timed calls' error against that reference.
With ``--large`` (the default off the CPU) issue 16's two large points are added.

Each jitted method is compiled ahead (``lower().compile()``; compile seconds
reported apart), then the JAX methods are called round-robin ``--repeats``
times (each call ended by ``block_until_ready``) and the median is kept, so a
slow spell of the machine hits every method alike. PyTorch is timed after
them, alone (its OpenMP threads spin on after a call and slowed the next JAX
call when it shared the round). ``temp MiB`` is XLA's compiled
``memory_analysis().temp_size_in_bytes``.

FLOPs counted (multiply-add = 2; ``bptt_jax.app.measure.bench.flops``) for one
loss-and-gradient evaluation::

    forward   h_{t-1} @ Uᵀ : 2TBH²   logits h_t @ Vᵀ : 2TBHC
    backward  r_t @ V      : 2TBHC  dV = Σ r_tᵀ h_t : 2TBHC
              δ_t @ U      : 2TBH²  dU = Σ δ_tᵀ h_{t-1} : 2TBH²
    total     6·T·B·H·(H + C)   (the gathers/scatter-adds of W for token ids,
                                 softmax and tanh are not counted)

``GFLOP/s`` = that count / the hand time; ``% mm`` = it over the machine's own
dense float32 matrix-multiply rate, measured in the same run (a square
2048 x 2048 product through XLA, and the product shape of the output layer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import bptt_jax
from bptt_jax.app.measure.bench import compiled, flops, naive_loss, round_robin
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.options import Options
from bptt_jax.core.schedule import default_chunk, schedule
from bptt_jax.referees.tolerances import VERIFY_PRECISION
from bptt_jax.referees.tolerances import max_relative_error as tree_rel

DEFAULT_GRID = [
    (65, 256, 32, 64),
    (65, 512, 64, 128),
    (10000, 256, 32, 35),
    (10000, 512, 64, 128),
    (65, 64, 1, 1000),
    (65, 256, 32, 1024),  # a long sequence: where recompute mode is meant to be used
]
#: Issue 16's two large points (run with ``--large``, and by default off the CPU).
LARGE_GRID = [(65, 1024, 256, 256), (10000, 1024, 128, 128)]
UNROLLS = (1, 2, 4, 8)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_rates(repeats: int, shapes) -> dict:
    """GFLOP/s of float32 products ``(M, N) @ (N, P)`` through XLA."""
    out = {}
    for M, N, P in shapes:
        a = jax.random.normal(jax.random.key(0), (M, N))
        b = jax.random.normal(jax.random.key(1), (N, P))
        exe = jax.jit(jnp.matmul).lower(a, b).compile()
        t = round_robin({"mm": lambda exe=exe, a=a, b=b: exe(a, b).block_until_ready()}, repeats)
        out[f"{M}x{N}x{P}"] = 2 * M * N * P / t["mm"] / 1e9
    return out


def torch_method(params, xs, ys, threads):
    """``(fn, (E, grads as Params), device)`` for PyTorch's nn.RNN on the same model, or None.

    On the CPU with ``threads`` threads; on CUDA (cuDNN's ``nn.RNN``) when
    JAX's default device is a GPU and torch sees one.
    """
    try:
        import torch
    except ImportError:
        return None
    cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(threads)
    U, V, W, b, c = (torch.from_numpy(np.array(p)) for p in params)
    H, K = W.shape
    C = V.shape[0]
    emb = torch.nn.Embedding(K, H)
    rnn = torch.nn.RNN(H, H, nonlinearity="tanh", batch_first=True)
    head = torch.nn.Linear(H, C)
    with torch.no_grad():
        emb.weight.copy_(W.T)
        rnn.weight_ih_l0.copy_(torch.eye(H))
        rnn.bias_ih_l0.copy_(b)
        rnn.weight_hh_l0.copy_(U)
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(V)
        head.bias.copy_(c)
    modules = [m.to(device) for m in (emb, rnn, head)]
    x = torch.from_numpy(np.array(xs)).long().to(device)
    y = torch.from_numpy(np.array(ys)).long().to(device)

    def step():
        for m in modules:
            m.zero_grad(set_to_none=True)
        hs, _ = rnn(emb(x))  # h0 = 0
        z = head(hs)
        E = torch.nn.functional.cross_entropy(z.reshape(-1, C), y.reshape(-1), reduction="sum")
        E.backward()
        if cuda:
            torch.cuda.synchronize()
        return E

    E = step()

    def host(t):
        return t.detach().cpu().numpy()

    grads = bptt_jax.Params(
        U=host(rnn.weight_hh_l0.grad),
        V=host(head.weight.grad),
        W=host(emb.weight.grad).T,
        b=host(rnn.bias_ih_l0.grad),
        c=host(head.bias.grad),
    )
    name = torch.cuda.get_device_name() if cuda else f"cpu, {threads} threads"
    return step, (E.item(), grads), f"torch {torch.__version__} on {name}"


def bench_point(K, H, B, T, repeats, unroll_repeats, use_torch):
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = bptt_jax.init_params(kp, K, H)
    xs = jax.random.randint(kx, (B, T), 0, K)
    ys = jax.random.randint(ky, (B, T), 0, K)
    h0 = jnp.zeros((B, H))
    args = (params, xs, ys, h0)
    backend = jax.default_backend()

    def hand(recompute=False, **kw):  # at this backend's defaults, as bptt_jax.bptt runs
        kw = dict(chunk=default_chunk(T, B, recompute, backend), recompute=recompute,
                  unroll=schedule(backend).unroll) | kw  # fmt: skip
        return lambda p, x, y, h: bptt_core(p, x, y, h, options=Options(**kw))[:2]

    jitted = {
        "hand": hand(),
        "recompute": hand(recompute=True),
        "bf16": hand(matmul_dtype=jnp.dtype("bfloat16")),
        "autodiff": jax.value_and_grad(bptt_jax.loss),
        "naive AD": jax.value_and_grad(naive_loss),
    }
    exes, compile_s, temp = {}, {}, {}
    for name, fn in jitted.items():
        exes[name], compile_s[name], temp[name] = compiled(fn, args)

    def call(exe):
        return lambda: jax.block_until_ready(exe(*args))

    fns = {"bptt": lambda: jax.block_until_ready(bptt_jax.bptt(*args))}
    fns.update({name: call(exe) for name, exe in exes.items()})
    times = round_robin(fns, repeats)
    # PyTorch apart: its OpenMP threads keep spinning for a while after each
    # call, which slowed down whichever JAX call came next in a shared round.
    torch_out = torch_method(params, xs, ys, os.cpu_count()) if use_torch else None
    if torch_out is not None:
        times.update(round_robin({"torch": torch_out[0]}, repeats))
        print(f"  torch baseline: {torch_out[2]}", flush=True)

    # Agreement, so that a fast wrong answer cannot pass unnoticed: every method and
    # autodiff recompiled at precision "highest" (their products leave precision to
    # JAX's default), so the errors mean the same on every backend; and the timed
    # calls (JAX's default precision: TF32 products on a recent GPU) against that.
    with jax.default_matmul_precision(VERIFY_PRECISION):
        check = {name: jax.jit(fn) for name, fn in jitted.items()}
        reference = check["autodiff"](*args)
        names = ("hand", "recompute", "bf16", "naive AD")
        errors = {name: tree_rel(check[name](*args), reference) for name in names}
    errors_timed = {name: tree_rel(exes[name](*args), reference) for name in (*names, "autodiff")}
    if torch_out is not None:
        errors["torch"] = tree_rel(torch_out[1], reference)

    # lax.scan's unroll, swept on the hand BPTT: run time and compile time.
    unroll = {}
    if unroll_repeats:
        sweep = {}
        for u in UNROLLS:
            exe, seconds, _ = compiled(hand(unroll=u), args)
            sweep[u] = (call(exe), seconds)
        medians = round_robin({u: fn for u, (fn, _) in sweep.items()}, unroll_repeats)
        unroll = {str(u): {"median_s": medians[u], "compile_s": sweep[u][1]} for u in UNROLLS}

    return {
        "K": K, "H": H, "B": B, "T": T, "flops": flops(K, H, B, T),
        "median_s": times, "compile_s": compile_s, "temp_bytes": temp,
        "max_rel_err_vs_autodiff": errors, "max_rel_err_timed_precision": errors_timed,
        "unroll": unroll, "defaults": dict(chunk=default_chunk(T, B, False, backend),
                                           unroll=schedule(backend).unroll),
    }  # fmt: skip


def print_tables(results, rate):
    names = [n for n in ("bptt", "hand", "recompute", "bf16", "autodiff", "naive AD", "torch")
             if n in results[0]["median_s"]]  # fmt: skip
    point = f"{'K':>6}{'H':>5}{'B':>4}{'T':>6}"
    print("\nmedian ms per loss-and-gradient (lower is better)")
    print(point + " |" + "".join(f"{n:>11}" for n in names))
    for r in results:
        t = r["median_s"]
        key = f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6}"
        print(key + " |" + "".join(f"{t[n] * 1e3:>11.2f}" for n in names))

    ratios = [n for n in ("autodiff", "naive AD", "torch") if n in names]
    print(
        f"\nhand speed-up (baseline ms / hand ms), GFLOP/s of hand, % of {rate:.0f} GFLOP/s, "
        "µs per recurrent step (hand ms / T)"
    )
    extra = (f"{'GFLOP':>9}{'GFLOP/s':>9}{'% mm':>6}{'us/step':>9} |"
             f"{'recomp/hand':>12}{'bf16/hand':>10}")  # fmt: skip
    print(point + " |" + "".join(f"{'x ' + n:>12}" for n in ratios) + extra)
    for r in results:
        t = r["median_s"]
        gflops = r["flops"] / t["hand"] / 1e9
        print(
            f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6} |"
            + "".join(f"{t[n] / t['hand']:>12.2f}" for n in ratios)
            + f"{r['flops'] / 1e9:>9.2f}{gflops:>9.1f}{100 * gflops / rate:>6.0f}"
            + f"{t['hand'] / r['T'] * 1e6:>9.1f} |"
            + f"{t['recompute'] / t['hand']:>12.2f}{t['bf16'] / t['hand']:>10.2f}"
        )
    geo = {n: float(np.exp(np.mean([np.log(r["median_s"][n] / r["median_s"]["hand"])
                                    for r in results]))) for n in ratios}  # fmt: skip
    worst = {n: min(r["median_s"][n] / r["median_s"]["hand"] for r in results) for n in ratios}
    print("geometric mean: " + ", ".join(f"x {n} {g:.2f}" for n, g in geo.items()))
    print("worst point:    " + ", ".join(f"x {n} {w:.2f}" for n, w in worst.items()))

    mems = ["hand", "recompute", "bf16", "autodiff", "naive AD"]
    print("\nXLA temp MiB (memory_analysis) and compile s")
    print(point + " |" + "".join(f"{n:>10}" for n in mems) + " | hand/AD |"
          + "".join(f"{n:>10}" for n in ("hand", "autodiff")))  # fmt: skip
    for r in results:
        m, c = r["temp_bytes"], r["compile_s"]
        print(
            f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6} |"
            + "".join(f"{m[n] / 2**20:>10.1f}" for n in mems)
            + f" | {m['hand'] / m['autodiff']:>6.1%} |"
            + "".join(f"{c[n]:>10.2f}" for n in ("hand", "autodiff"))
        )

    if results[0]["unroll"]:
        print("\nunroll sweep of the hand BPTT: median ms (compile s)")
        print(point + " |" + "".join(f"{'unroll ' + str(u):>16}" for u in UNROLLS))
        for r in results:
            u = r["unroll"]
            print(
                f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6} |"
                + "".join(
                    f"{u[str(k)]['median_s'] * 1e3:>9.2f} ({u[str(k)]['compile_s']:.2f})"
                    for k in UNROLLS
                )
            )

    print(f"\nmax relative error vs autodiff (loss and all gradients), both at {VERIFY_PRECISION}")
    errs = list(results[0]["max_rel_err_vs_autodiff"])
    print(point + " |" + "".join(f"{n:>11}" for n in errs))
    for r in results:
        e = r["max_rel_err_vs_autodiff"]
        print(f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6} |"
              + "".join(f"{e[n]:>11.1e}" for n in errs))  # fmt: skip
    if "max_rel_err_timed_precision" in results[0]:
        print(f"\nthe timed calls (JAX's default precision) vs autodiff at {VERIFY_PRECISION}")
        errs = list(results[0]["max_rel_err_timed_precision"])
        print(point + " |" + "".join(f"{n:>11}" for n in errs))
        for r in results:
            e = r["max_rel_err_timed_precision"]
            print(f"{r['K']:>6}{r['H']:>5}{r['B']:>4}{r['T']:>6} |"
                  + "".join(f"{e[n]:>11.1e}" for n in errs))  # fmt: skip
    return geo, worst


#: One colour per method in both panels (autodiff: the reference line on top).
COLORS = {"hand": "C0", "recompute": "C1", "bf16": "C2", "naive AD": "C3", "torch": "C4",
          "autodiff": "C7"}  # fmt: skip


def plot(results, path, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    def log_axis(ax):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())

    def bars(ax, names, value):
        x = np.arange(len(results))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            heights = [value(r, n) for r in results]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=n,
                   color=COLORS[n])  # fmt: skip
        labels = [f"K={r['K']} H={r['H']}\nB={r['B']} T={r['T']}" for r in results]
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(ncol=len(names), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))
        log_axis(ax)

    fig, (ax_t, ax_m) = plt.subplots(2, 1, figsize=(11, 8.5), constrained_layout=True)
    names = [n for n in ("hand", "recompute", "bf16", "naive AD", "torch")
             if n in results[0]["median_s"]]  # fmt: skip
    bars(ax_t, names, lambda r, n: r["median_s"]["autodiff"] / r["median_s"][n])
    ax_t.axhline(1.0, color=COLORS["autodiff"], lw=1.5, ls="--")
    ax_t.text(len(results) - 0.5, 1.02, "autodiff = 1", ha="right", va="bottom", fontsize=8)
    ax_t.set_ylabel("speed vs jit(value_and_grad(loss))\n(> 1: faster; log scale)")
    ax_t.set_title(f"Loss and gradient, float32 on {machine}: speed relative to autodiff")
    bars(ax_m, ["hand", "recompute", "bf16", "autodiff", "naive AD"],
         lambda r, n: r["temp_bytes"][n] / 2**20)  # fmt: skip
    ax_m.set_ylabel("XLA temp buffers, MiB (log scale)")
    ax_m.set_title("Memory: compiled temp bytes (memory_analysis); lower is better")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--grid", action="append", metavar="K,H,B,T",
        help="a grid point (repeatable); default: the issue's five points and T=1024",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per method")
    parser.add_argument("--unroll-repeats", type=int, default=5, help="0: no unroll sweep")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--quick", action="store_true", help="3 repeats, no unroll sweep")
    parser.add_argument(
        "--large", action="store_true",
        help="add issue 16's two large points (the default off the CPU)",
    )  # fmt: skip
    parser.add_argument("--json", default="bench_bptt.json", metavar="FILE")
    parser.add_argument("--png", default="bench_bptt.png", metavar="FILE")
    parser.add_argument(
        "--from-json", metavar="FILE", help="print the tables and draw the PNG of an earlier run"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        machine, rate = saved["machine"], saved["matmul_gflops"]["2048x2048x2048"]
        print(" ".join(f"{k}={v}" for k, v in machine.items()))
        print_tables(saved["results"], rate)
        plot(saved["results"], args.png, f"{machine['cpu']}, {machine['cpu_count']} cores")
        print(f"\nwrote {args.png}")
        return
    if args.quick:
        args.repeats, args.unroll_repeats = 3, 0
    grid = [tuple(int(v) for v in g.split(",")) for g in args.grid] if args.grid else DEFAULT_GRID
    if args.large or (not args.grid and jax.default_backend() != "cpu"):
        grid = LARGE_GRID + grid  # first: a run cut short at its time limit still has them

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    machine = {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch_version,
        "device": str(jax.devices()[0]),
        "dtype": "float32",
        "repeats": args.repeats,
    }
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    rates = matmul_rates(max(args.repeats, 5), [(2048, 2048, 2048), (512, 512, 10000)])
    rate = rates["2048x2048x2048"]
    print("XLA float32 matmul GFLOP/s: " + ", ".join(f"{k}: {v:.1f}" for k, v in rates.items()))

    def save(**summary):  # after every point too, so that a run cut short keeps its points
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "matmul_gflops": rates, **summary,
                       "results": results}, f, indent=2)  # fmt: skip

    results = []
    for K, H, B, T in grid:
        t0 = time.perf_counter()
        results.append(
            bench_point(K, H, B, T, args.repeats, args.unroll_repeats, not args.no_torch)
        )
        print(f"  ({K}, {H}, {B}, {T}) done in {time.perf_counter() - t0:.0f} s", flush=True)
        save(partial=True)
    geo, worst = print_tables(results, rate)
    save(geomean_speedup=geo, worst_speedup=worst)
    cpu = f"{machine['cpu']}, {machine['cpu_count']} cores"
    plot(results, args.png, cpu if "cpu" in machine["device"].lower() else machine["device"])
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
