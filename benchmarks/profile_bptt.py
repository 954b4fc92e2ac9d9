"""Where the time of one hand BPTT goes: its parts timed alone, and XLA's product rates.

    python benchmarks/profile_bptt.py            # the issue-7 grid
    python benchmarks/profile_bptt.py --grid 10000,512,64,128 --repeats 5

The parts, each jitted alone on its real inputs (float32, median of
``--repeats``, compile time excluded):

- ``forward``  the h recursion (``lax.scan``, input gather before it);
- ``output``   logits, log-softmax, loss, r = ŷ − y, ∂E/∂V, ∂E/∂c and Vᵀ r
               for ALL steps at once (what the chunked backward splits up);
- ``delta``    the δ recursion (reverse ``lax.scan``) alone;
- ``sums``     ∂E/∂U (one product over all T·B rows, after building
               h_{t-1}), ∂E/∂W (scatter-add), ∂E/∂b;
- ``bptt``     the whole hand BPTT as shipped (``bptt_core``, chunked);
- ``autodiff`` ``jit(value_and_grad(loss))``.

Then the rate of each of the three output-layer products
``(rows, H) @ (H, K)``, ``(rows, K) @ (K, H)``, ``(K, rows) @ (rows, H)`` as
the number of rows (steps × sequences) grows, and three ways of forming
∂E/∂W for token ids (scatter-add, segment_sum, one-hot product). These
numbers chose the chunk size; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

import bptt_jax
from bptt_jax.app.measure.bench import compiled, round_robin
from bptt_jax.core.bptt import bptt_core
from bptt_jax.core.options import DEFAULT
from bptt_jax.core.per_loss import input_gradient, output_layer
from bptt_jax.core.rnn import hidden_states, time_major

GRID = [(65, 256, 32, 64), (65, 512, 64, 128), (10000, 256, 32, 35), (10000, 512, 64, 128),
        (65, 64, 1, 1000)]  # fmt: skip


def median_ms(fn, args, repeats):
    exe = compiled(fn, args)[0]
    return 1e3 * round_robin({"f": lambda: jax.block_until_ready(exe(*args))}, repeats)["f"]


def parts(K, H, B, T, repeats):
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    p = bptt_jax.init_params(kp, K, H)
    xs = jax.random.randint(kx, (B, T), 0, K)
    ys = jax.random.randint(ky, (B, T), 0, K)
    h0 = jnp.zeros((B, H))

    def forward(p, xs, h0):
        return hidden_states(p, xs, h0)[1]

    def output(p, hs, ys):
        E, r, dV, dc = output_layer(p, hs, time_major(ys), DEFAULT)
        return E, r @ p.V, dV, dc

    def delta(p, Vr, hs):
        def step(g, inputs):
            d = (inputs[0] + g) * (1 - inputs[1] ** 2)
            return d @ p.U, d

        return lax.scan(step, jnp.zeros_like(hs[0]), (Vr, hs), reverse=True)

    def sums(deltas, hs, h0, xs):
        h_prev = jnp.concatenate([h0[None], hs])[:T]
        dU = jnp.einsum("tbi,tbj->ij", deltas, h_prev)
        return dU, input_gradient(deltas, xs, K, DEFAULT), deltas.sum((0, 1))

    hs = jax.jit(forward)(p, xs, h0)
    _, Vr, _, _ = jax.jit(output)(p, hs, ys)
    _, deltas = jax.jit(delta)(p, Vr, hs)
    return {
        "forward": median_ms(forward, (p, xs, h0), repeats),
        "output": median_ms(output, (p, hs, ys), repeats),
        "delta": median_ms(delta, (p, Vr, hs), repeats),
        "sums": median_ms(sums, (deltas, hs, h0, xs), repeats),
        "bptt": median_ms(lambda *a: bptt_core(*a)[:2], (p, xs, ys, h0), repeats),
        "autodiff": median_ms(jax.value_and_grad(bptt_jax.loss), (p, xs, ys, h0), repeats),
    }


def product_rates(K, H, rows_list, repeats):
    key = jax.random.key(1)
    V = jax.random.normal(key, (K, H))
    out = {}
    for rows in rows_list:
        h = jax.random.normal(key, (rows, H))
        r = jax.random.normal(key, (rows, K))
        gflop = 2 * rows * H * K / 1e9
        out[rows] = {
            "h@V.T": gflop / median_ms(lambda h, V: h @ V.T, (h, V), repeats) * 1e3,
            "r@V": gflop / median_ms(lambda r, V: r @ V, (r, V), repeats) * 1e3,
            "r.T@h": gflop / median_ms(lambda r, h: r.T @ h, (r, h), repeats) * 1e3,
        }
    return out


def dW_ways(K, H, rows, repeats):
    d = jax.random.normal(jax.random.key(1), (rows, H))
    ids = jax.random.randint(jax.random.key(2), (rows,), 0, K)
    return {
        "scatter-add": median_ms(lambda d, i: jnp.zeros((K, H)).at[i].add(d), (d, ids), repeats),
        "segment_sum": median_ms(lambda d, i: jax.ops.segment_sum(d, i, K), (d, ids), repeats),
        "one-hot @": median_ms(
            lambda d, i: jax.nn.one_hot(i, K, dtype=d.dtype).T @ d, (d, ids), repeats
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", action="append", metavar="K,H,B,T")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    grid = [tuple(int(v) for v in g.split(",")) for g in args.grid] if args.grid else GRID
    print(f"jax {jax.__version__} on {jax.devices()[0]}, float32, median of {args.repeats}")

    names = ["forward", "output", "delta", "sums", "bptt", "autodiff"]
    print("\nparts of the hand BPTT, ms (forward+output+delta+sums = unchunked BPTT)")
    print(f"{'K':>6}{'H':>5}{'B':>4}{'T':>6} |" + "".join(f"{n:>10}" for n in names))
    for K, H, B, T in grid:
        t = parts(K, H, B, T, args.repeats)
        print(f"{K:>6}{H:>5}{B:>4}{T:>6} |" + "".join(f"{t[n]:>10.2f}" for n in names))

    print("\nGFLOP/s of the output-layer products at K = 10000, by rows (steps x sequences)")
    for H in (256, 512):
        for rows, r in product_rates(10000, H, (128, 256, 512, 1024, 2048, 8192),
                                     args.repeats).items():  # fmt: skip
            print(f"  H={H:<4} rows={rows:<5}" + "".join(f"{k:>8} {v:6.1f}" for k, v in r.items()))

    print("\ndE/dW for token ids, ms")
    for K, H, rows in ((65, 512, 8192), (10000, 512, 8192), (10000, 256, 1120)):
        w = dW_ways(K, H, rows, args.repeats)
        print(
            f"  K={K:<6}H={H:<4}rows={rows:<5}"
            + "".join(f"{k:>13} {v:7.2f}" for k, v in w.items())
        )


if __name__ == "__main__":
    main()
