r"""``bptt-jax diagnose``: measure the gradient flow of the seed's §6, plot it, report it.

The numbers come from :mod:`bptt_jax.lab.diagnostics` and :mod:`bptt_jax.lab.tasks`,
the pictures from :mod:`bptt_jax.app.measure.plots`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ...api.init import init_params
from ...api.lab import gradient_flow
from ...core.init import Scheme
from ...lab.diagnostics import format_sweep, spectral_sweep
from ...lab.flow import cell_flows
from ...lab.tasks import REMEDIES, Remedy, train_delay


class DiagnoseReport(NamedTuple):
    text: str
    paths: list[pathlib.Path]


@dataclasses.dataclass(frozen=True)
class DiagnoseSettings:
    """What ``bptt-jax diagnose`` measures (its flags default to these fields)."""

    vocab_size: int = 8
    hidden_size: int = 32
    batch: int = 8
    steps: int = 40
    activation: str = "tanh"
    init: str = "uniform"
    spectral_radius: float | None = None
    seed: int = 0
    sweep: bool = True
    sweep_scales: Sequence[float] | None = None
    delays: Sequence[int] = ()
    iterations: int = 1000
    remedies: Sequence[Remedy] | None = None


def run_diagnose(
    out: str | os.PathLike, settings: DiagnoseSettings | None = None, **fields
) -> DiagnoseReport:
    """Measure, plot into ``out``, and return the text report and the files written:
    ``settings`` (:class:`DiagnoseSettings`; ``fields`` replace some of them).

    Writes ``delta_heatmap.png`` and ``decay.png`` (one model: ``init``,
    ``activation``, float64), ``cell_flow.png`` (that model beside the LSTM, with
    forget bias 0 and 1, and the GRU drawn from the same key and scheme:
    :func:`bptt_jax.lab.flow.cell_flows`), ``sweep.png`` (unless ``sweep=False``) and, when
    ``delays`` are given, ``delay_task.png`` and ``delay_grad_norm.png``
    (:func:`bptt_jax.lab.tasks.train_delay` for each of ``remedies``, default
    :data:`bptt_jax.lab.tasks.REMEDIES`).
    """
    # matplotlib takes seconds to load and only this command (and train's last
    # step) draws: imported when it runs, not when the command line is parsed.
    from .plots import (
        plot_cell_flow,
        plot_decay,
        plot_delay,
        plot_delay_grad_norm,
        plot_heatmap,
        plot_sweep,
    )

    s = dataclasses.replace(settings or DiagnoseSettings(), **fields)
    vocab_size, hidden_size, batch, steps = s.vocab_size, s.hidden_size, s.batch, s.steps
    activation, init, spectral_radius, seed = s.activation, s.init, s.spectral_radius, s.seed
    delays, iterations, remedies = s.delays, s.iterations, s.remedies
    out = pathlib.Path(out)
    kp, kx, ky, ks, kd = jax.random.split(jax.random.key(seed), 5)
    dims = dict(vocab_size=vocab_size, hidden_size=hidden_size, batch=batch, steps=steps)
    paths, lines = [], []
    with jax.enable_x64(True):
        params = init_params(
            kp, vocab_size, hidden_size, init=init, spectral_radius=spectral_radius,
            dtype=jnp.float64,
        )  # fmt: skip
        xs = jax.random.randint(kx, (batch, steps), 0, vocab_size)
        ys = jax.random.randint(ky, (batch, steps), 0, vocab_size)
        flow = gradient_flow(params, xs, ys, activation=activation)
        what = f"{activation}, init={init}" + (
            f" ρ(U)={spectral_radius:g}" if spectral_radius is not None else ""
        )
        paths.append(plot_heatmap(flow, out / "delta_heatmap.png", what=what))
        paths.append(plot_decay(flow, out / "decay.png", what=what))
        lines += _flow_lines(flow, what, seed=seed, **dims)
        flows = cell_flows(kp, xs, ys, vocab_size=vocab_size, hidden_size=hidden_size,
                           activation=activation, scheme=Scheme(init, spectral_radius),
                           dtype=jnp.float64)  # fmt: skip
        same = f"init={init}" + (f" ρ(U)={spectral_radius:g}" if spectral_radius else "")
        sizes = f"{same}, K={vocab_size} H={hidden_size} B={batch} T={steps}, float64"
        paths.append(plot_cell_flow(flows, out / "cell_flow.png", what=sizes))
        lines += _cell_lines(flows, same, steps)
        if s.sweep:
            kwargs = {} if s.sweep_scales is None else {"scales": tuple(s.sweep_scales)}
            rows = spectral_sweep(ks, **dims, **kwargs)
            paths.append(plot_sweep(rows, out / "sweep.png"))
            lines += ["", "sweep of U = σ·orthogonal (float64):", format_sweep(rows)]
    if delays:
        remedies = REMEDIES if remedies is None else remedies
        curves = [train_delay(kd, tuple(delays), r, iterations=iterations) for r in remedies]
        paths.append(plot_delay(curves, out / "delay_task.png", vocab_size=4))
        paths.append(plot_delay_grad_norm(curves, out / "delay_grad_norm.png"))
        lines += _delay_lines(curves, delays, iterations)
    lines += ["", "wrote:", *(f"  {p}" for p in paths)]
    return DiagnoseReport("\n".join(lines), paths)


def _flow_lines(flow, what, *, vocab_size, hidden_size, batch, steps, seed) -> list[str]:
    lines = [
        f"gradient flow: {what}, K={vocab_size} H={hidden_size} B={batch} T={steps} "
        f"seed={seed} (float64)",
        f"  ‖U‖₂ = {float(flow.U_norm):.4g}   γ = {float(flow.gamma):.4g}   "
        f"measured per-step decay ρ = {float(flow.decay_rate):.4g}",
        "  d    measured   trajectory bound   γ^d",
    ]
    for d in sorted({1, 2, 5, 10, 20, steps - 1} & set(range(1, steps))):
        lines.append(
            f"  {d:<4} {float(flow.decay[d]):10.3e} {float(flow.bound_decay[d]):18.3e} "
            f"{float(flow.gamma_decay[d]):9.3e}"
        )
    return lines


def _cell_lines(flows, same: str, steps: int) -> list[str]:
    ds = sorted({1, 5, 10, 20, steps - 1} & set(range(1, steps)))
    lines = ["", f"gradient reaching the state d steps back, by cell ({same}, the same batch; "
             "Σ_t‖∂E_t/∂h_(t−d)‖ / Σ_t‖∂E_t/∂h_t‖; the LSTM's c path through c_(k+1))",
             f"  {'cell':28} " + " ".join(f"{f'd={d}':>9}" for d in ds) + f"{'ρ':>9}"]  # fmt: skip
    for label, flow in flows:
        values = " ".join(f"{float(flow.decay[d]):9.2e}" for d in ds)
        lines.append(f"  {label:28} {values} {float(flow.decay_rate):8.3f}")
        if flow.c_decay is not None:
            values = " ".join(f"{float(flow.c_decay[d]):9.2e}" for d in ds)
            lines.append(f"  {'  its c path':28} {values}")
    return lines


def _delay_lines(curves, delays, iterations: int) -> list[str]:
    header = f"{'remedy':30} " + " ".join(f"{'d=' + str(d):>8}" for d in delays)
    lines = ["", f"delay task (K=4, H=32, B=32, T=30, {iterations} Adam steps, float32): "
             "accuracy on t > d, mean of the last 50 iterations", header]  # fmt: skip
    for c in curves:
        accs = " ".join(f"{a:8.3f}" for a in c.accuracy[:, -50:].mean(axis=1))
        lines.append(f"{c.remedy.label:30} {accs}")
    lines += ["", "share of the gradient reaching back d steps at initialisation, "
              "Σ_t‖δ_(t−d)^(t)‖ / Σ_t‖δ_t^(t)‖", header]  # fmt: skip
    for c in curves:
        lines.append(f"{c.remedy.label:30} " + " ".join(f"{s:8.1e}" for s in c.signal))
    return lines
