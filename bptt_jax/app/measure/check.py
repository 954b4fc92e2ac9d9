"""``bptt-jax check``: the hand gradients against both referees, as a table.

Sits above the numerical core: builds an embedded default model of a cell (the
vanilla RNN, the LSTM or the GRU: ``cell=``), runs :func:`bptt_jax.bptt`,
:func:`bptt_jax.autodiff_bptt` and :func:`bptt_jax.finite_difference_bptt` on it
(which take the cell from the model's shapes, and the LSTM's state as ``(h0, c0)``),
and reports per parameter the maximum relative error
``max|g_hand - g_ref| / max|g_ref|``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ...api.gradients import bptt
from ...api.init import init_params
from ...api.referees import autodiff_bptt, finite_difference_bptt
from ...core.cells import CELL_NAMES, cell_named
from ...core.params import Params
from ...referees.tolerances import AUTODIFF, FINITE_DIFF, VERIFY_PRECISION, max_relative_error

# Agreement required of the hand gradients, per dtype of the model.
TOLERANCES = {
    dtype: {"autodiff": AUTODIFF[dtype], "finite_diff": FINITE_DIFF[dtype]}
    for dtype in ("float64", "float32")
}

#: ``inputs=``: token ids (the gather/scatter path) or dense input vectors.
INPUTS = ("ids", "dense")


@dataclass(frozen=True)
class Row:
    name: str
    shape: tuple[int, ...]
    grad_scale: float  # max |∂E/∂θ|
    vs_autodiff: float
    vs_finite_diff: float
    ok: bool


@dataclass(frozen=True)
class Report:
    config: dict
    losses: dict  # hand / autodiff / finite-diff E
    rows: list[Row]

    @property
    def ok(self) -> bool:
        loss_ok = (
            max_relative_error(self.losses["hand"], self.losses["autodiff"])
            <= (TOLERANCES[self.config["dtype"]]["autodiff"])
        )
        return loss_ok and all(row.ok for row in self.rows)

    def format(self) -> str:
        c = self.config
        tol = TOLERANCES[c["dtype"]]
        head = (
            f"bptt_jax gradient check: K={c['vocab_size']} H={c['hidden_size']} "
            f"C={c['num_classes']} B={c['batch']} T={c['steps']} inputs={c['inputs']} "
            f"dtype={c['dtype']} seed={c['seed']} cell={c['cell']}\n"
            f"E: hand {self.losses['hand']:.12g}  jax.grad {self.losses['autodiff']:.12g}  "
            f"finite diff {self.losses['finite_diff']:.12g}\n"
            f"rel. error = max|hand - ref| / max|ref|; "
            f"pass if <= {tol['autodiff']:.0e} vs jax.grad and "
            f"<= {tol['finite_diff']:.0e} vs finite differences (float64)\n"
        )
        lines = [
            f"{'param':<6}{'shape':<12}{'max|grad|':>12}{'vs jax.grad':>14}"
            f"{'vs finite diff':>16}  result"
        ]
        for r in self.rows:
            lines.append(
                f"{r.name:<6}{r.shape!s:<12}{r.grad_scale:>12.4g}{r.vs_autodiff:>14.2e}"
                f"{r.vs_finite_diff:>16.2e}  {'ok' if r.ok else 'FAIL'}"
            )
        verdict = "all gradients agree" if self.ok else "DISAGREEMENT: hand gradients are wrong"
        return head + "\n".join(lines) + "\n" + verdict


def default_problem(
    *,
    vocab_size=11,
    hidden_size=16,
    num_classes=7,
    batch=3,
    steps=12,
    inputs="ids",
    seed=0,
    dtype="float64",
    cell="rnn",
):
    """The embedded model the check runs on: ``(params, xs, ys, h0)``.

    Weights are scaled by 3 from :func:`init_params` and the biases and
    ``h0`` (every part of the cell's state: the LSTM's ``(h0, c0)``) are non-zero,
    so that the hidden units and gates sit in their nonlinearities' curved range
    and every term of the gradient is exercised; ids repeat (K is small), so
    the scatter-add into ``W`` accumulates.
    """
    kp, kb, kc, kx, ky, kh = jax.random.split(jax.random.key(seed), 6)
    p = init_params(kp, vocab_size, hidden_size, num_classes=num_classes, dtype=dtype,
                    cell=cell)  # fmt: skip
    params = Params(
        U=3 * p.U,
        V=3 * p.V,
        W=3 * p.W,
        b=0.5 * jax.random.normal(kb, p.b.shape, dtype),
        c=0.5 * jax.random.normal(kc, p.c.shape, dtype),
    )
    if inputs == "ids":
        xs = jax.random.randint(kx, (batch, steps), 0, vocab_size)
    elif inputs == "dense":
        xs = jax.random.normal(kx, (batch, steps, vocab_size), dtype)
    else:
        raise ValueError(f"inputs must be one of {', '.join(map(repr, INPUTS))}, got {inputs!r}")
    ys = jax.random.randint(ky, (batch, steps), 0, num_classes)
    parts, treedef = jax.tree.flatten(cell_named(cell).zero_state((batch, hidden_size), dtype))
    keys = [kh, *(jax.random.fold_in(kh, i) for i in range(1, len(parts)))]
    h0 = [0.5 * jax.random.normal(k, a.shape, dtype) for k, a in zip(keys, parts, strict=True)]
    return params, xs, ys, jax.tree.unflatten(treedef, h0)


def run_check(
    *,
    vocab_size: int = 11,
    hidden_size: int = 16,
    num_classes: int = 7,
    batch: int = 3,
    steps: int = 12,
    inputs: str = "ids",
    dtype: str = "float64",
    seed: int = 0,
    cell: str = "rnn",
    grad_fn: Callable | None = None,
) -> Report:
    """Runs ``grad_fn`` (default :func:`bptt_jax.bptt`) against both referees, on the
    embedded model of ``cell`` (``"rnn"``, ``"lstm"`` or ``"gru"``).

    Enables float64 for its own duration (the finite differences need it);
    ``dtype`` picks the precision of the model under test. Every side computes at
    ``VERIFY_PRECISION`` (``"highest"``): the referees by their ``precision`` argument,
    ``bptt`` (or a given ``grad_fn``), whose products default to JAX's precision, under
    ``jax.default_matmul_precision``.
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {sorted(TOLERANCES)}, got {dtype!r}")
    if cell not in CELL_NAMES:
        raise ValueError(f"cell must be one of {', '.join(CELL_NAMES)}, got {cell!r}")
    config = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, num_classes=num_classes, batch=batch,
        steps=steps, inputs=inputs, dtype=dtype, seed=seed, cell=cell,
    )  # fmt: skip
    tol = TOLERANCES[dtype]
    with jax.enable_x64(True):
        params, xs, ys, h0 = default_problem(**config)
        with jax.default_matmul_precision(VERIFY_PRECISION):  # bptt's precision=None
            E, grads = (grad_fn or bptt)(params, xs, ys, h0)
        E_ad, grads_ad = autodiff_bptt(params, xs, ys, h0, precision=VERIFY_PRECISION)
        params64, xs64, h064 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            (params, xs, h0),
        )
        E_fd, grads_fd = finite_difference_bptt(
            params64, xs64, ys, h064, precision=VERIFY_PRECISION
        )
        rows = []
        for name in Params._fields:
            g, g_ad, g_fd = (getattr(x, name) for x in (grads, grads_ad, grads_fd))
            e_ad = max_relative_error(g, g_ad)
            e_fd = max_relative_error(g, g_fd)
            rows.append(
                Row(
                    name=name,
                    shape=tuple(g.shape),
                    grad_scale=float(jnp.max(jnp.abs(g_ad))),
                    vs_autodiff=e_ad,
                    vs_finite_diff=e_fd,
                    ok=e_ad <= tol["autodiff"] and e_fd <= tol["finite_diff"],
                )
            )
        losses = {"hand": float(E), "autodiff": float(E_ad), "finite_diff": float(E_fd)}
    return Report(config=config, losses=losses, rows=rows)
