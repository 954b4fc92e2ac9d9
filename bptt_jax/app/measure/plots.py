r"""The package's pictures: the seed's §6 (drawn for ``bptt-jax diagnose``, which
:mod:`bptt_jax.app.measure.diagnose` runs), and the training loss curve of ``bptt-jax train``.

matplotlib's object-oriented API on the Agg canvas: headless, and no global
backend switched for whoever imports this. The numbers come from
:mod:`bptt_jax.lab.diagnostics` and :mod:`bptt_jax.lab.tasks`; nothing is computed
here that a test of those modules does not cover.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ...core.activations import ACTIVATIONS
from ...lab.diagnostics import GradientFlow, SweepRow

_COLORS = {"tanh": "tab:blue", "sigmoid": "tab:orange", "relu": "tab:green"}


def _save(fig: Figure, path) -> pathlib.Path:
    """Writes ``fig`` to ``path`` (PNG) through a temporary file renamed over it, so a
    failed write leaves the old picture, not half a new one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _describe(flow: GradientFlow, what: str) -> str:
    return f"{what}, ‖U‖₂ = {float(flow.U_norm):.3g}, γ = ‖U‖₂·max|f′| = {float(flow.gamma):.3g}"


def plot_heatmap(flow: GradientFlow, path, *, what: str = "") -> pathlib.Path:
    r"""Heat map of :math:`\|\delta_k^{(t)}\|_2`: loss index t down, step k across."""
    n = np.asarray(flow.delta_norms, np.float64)
    T = n.shape[0]
    lower = np.tril(np.ones((T, T), bool))
    shown = np.ma.masked_where(~lower | (n <= 0), n)
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    positive = n[lower & (n > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    img = ax.imshow(
        shown, norm=norm, cmap="viridis", origin="upper", interpolation="nearest",
        extent=(0.5, T + 0.5, T + 0.5, 0.5),
    )  # fmt: skip
    cbar = fig.colorbar(img, ax=ax)
    cbar.set_label(
        r"$\|\delta_k^{(t)}\|_2 = \|\partial E_t/\partial s_k\|_2$  (log scale, mean over batch)"
    )
    ax.set_xlabel(r"k: step the gradient arrives at ($s_k$)")
    ax.set_ylabel(r"t: loss $E_t$ the gradient comes from")
    ax.set_title(
        "How far back each loss's gradient reaches\n" + _describe(flow, what), fontsize=10
    )
    ax.text(
        0.97, 0.97, "k > t: no gradient\n" r"($E_t$ does not depend on later $s_k$)",
        transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.4",
    )  # fmt: skip
    return _save(fig, path)


def plot_decay(flow: GradientFlow, path, *, what: str = "") -> pathlib.Path:
    r"""Decay with distance d = t − k against the trajectory bound and γ^d, log scale."""
    d = np.arange(len(flow.decay))
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    tiny = np.finfo(np.float64).tiny

    def pos(a):  # log axes cannot show 0: mark it at the bottom instead
        return np.maximum(np.asarray(a, np.float64), tiny)

    rho = float(flow.decay_rate)
    gamma = float(flow.gamma)
    ax.semilogy(d, pos(flow.gamma_decay), "k--", label=f"seed's bound $γ^d$, γ = {gamma:.3g}")
    ax.semilogy(
        d,
        pos(flow.bound_decay),
        "-",
        color="tab:red",
        lw=3,
        alpha=0.5,
        label=r"bound on this trajectory: $\prod_i \|U\|_2 \max_j|f'(s_{i,j})|$",
    )
    ax.semilogy(
        d,
        pos(flow.decay),
        "o-",
        color="tab:blue",
        ms=3,
        label=r"measured $\|\delta_{t-d}^{(t)}\| \,/\, \|\delta_t^{(t)}\|$",
    )
    ax.semilogy(
        d, pos(rho**d), ":", color="tab:blue", label=f"fitted $ρ^d$, ρ = {rho:.3g} per step"
    )
    if np.allclose(flow.bound_decay, flow.gamma_decay, rtol=1e-3):
        ax.text(
            0.98,
            0.80,
            "red = black here: at every step some unit\nhas |f′(s)| ≈ max|f′| (unsaturated)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="tab:red",
        )
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xlabel("distance d = t − k (steps back from the loss)")
    ax.set_ylabel("gradient norm relative to d = 0\n(summed over the losses t > d)")
    title = "Vanishing/exploding with distance, against the §6 bound\n"
    ax.set_title(title + _describe(flow, what), fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, path)


def plot_sweep(rows: list[SweepRow], path, *, tol: float = 0.05) -> pathlib.Path:
    """Measured per-step decay ρ against the scale of U, per activation, with γ."""
    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.axhspan(1 - tol, 1 + tol, color="0.85", label=f"flat: ρ within 1 ± {tol:g}")
    acts = list(dict.fromkeys(r.activation for r in rows))
    for act in acts:
        rs = [r for r in rows if r.activation == act]
        ax.loglog([r.scale for r in rs], [r.decay_rate for r in rs], "o-",
                  color=_COLORS.get(act), label=f"{act}: measured ρ")  # fmt: skip
    slopes = {}  # γ depends on f only through max|f′|: one line per distinct slope
    for act in acts:
        slopes.setdefault(ACTIVATIONS[act].max_slope, []).append(act)
    for (slope, names), style in zip(slopes.items(), ("--", "-.", ":"), strict=False):
        scales = sorted({r.scale for r in rows if r.activation in names})
        ax.loglog(scales, [slope * s for s in scales], style, color="k",
                  label=f"γ = ‖U‖₂·{slope:g} for {', '.join(names)} (bounds ρ above)")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8)
    ax.text(0.02, 0.97, "explodes (ρ > 1)", transform=ax.transAxes, va="top", fontsize=9)
    ax.text(0.98, 0.03, "vanishes (ρ < 1)", transform=ax.transAxes, ha="right", fontsize=9)
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("scale σ of U = σ·(random orthogonal): spectral radius ρ(U) = ‖U‖₂ = σ")
    ax.set_ylabel(r"measured per-step factor ρ of $\|\delta_k^{(t)}\|_2$ with distance t − k")
    ax.set_xticks(sorted({r.scale for r in rows}))
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("The seed's §6 claim on real runs (random ids, labels; batch mean)\n"
                 "γ < 1 guarantees vanishing; γ > 1 does not guarantee exploding",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _smooth(a: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, a.shape[-1]))
    kernel = np.ones(window) / window
    return np.array([np.convolve(row, kernel, mode="valid") for row in a])


def plot_delay(curves, path, *, vocab_size: int, window: int = 25) -> pathlib.Path:
    """Training accuracy on the delay task, one panel per remedy, one line per d."""
    cols = min(3, len(curves))
    rows_n = -(-len(curves) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, curves, strict=False):
        acc = _smooth(np.asarray(c.accuracy), window)
        x = np.arange(acc.shape[1]) + window
        for i, d in enumerate(c.delays):
            ax.plot(x, acc[i], label=f"d = {d} (signal at init {c.signal[i]:.1g})")
        ax.axhline(1 / vocab_size, color="0.5", ls=":", label=f"chance 1/K = {1 / vocab_size:g}")
        ax.set_title(c.remedy.label, fontsize=10)
        ax.set_xlabel("training iteration (Adam)")
        ax.set_ylabel(f"accuracy on t > d\n(moving avg. of {window})")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="center right")
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(
        r"Delay task $y_t = x_{t-d}$: the gradient must reach back d steps. 'signal' = "
        r"$\sum_t\|\delta_{t-d}^{(t)}\| / \sum_t\|\delta_t^{(t)}\|$ at initialisation",
        fontsize=10,
    )
    return _save(fig, path)


def plot_cell_flow(flows, path, *, what: str = "") -> pathlib.Path:
    r"""The gradient reaching the state d steps back, one line per cell (``docs/math.md``
    §13): ``flows`` is :func:`bptt_jax.lab.flow.cell_flows`' ``(label, StateFlow)`` list;
    the LSTM's cell-state path dashed in the same colour."""
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()

    def positive(a):  # a zero (the c path at d = 0 has no c_(k+1)) is left out, not logged
        a = np.asarray(a, np.float64)
        return np.where(a > 0, a, np.nan)

    for i, (label, flow) in enumerate(flows):
        decay, color, rho = positive(flow.decay), f"C{i}", float(flow.decay_rate)
        ax.semilogy(np.arange(len(decay)), decay, "o-", ms=2.5, color=color,
                    label=f"{label}: h (fitted ρ = {rho:.3g} per step)")  # fmt: skip
        if flow.c_decay is not None:
            c = positive(flow.c_decay)
            ax.semilogy(np.arange(len(c)), c, "--", color=color, label=f"{label}: c path")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xlabel("distance d = t − k (steps back from the loss)")
    ratio = r"$\sum_t\|\partial E_t/\partial h_{t-d}\| \,/\, \sum_t\|\partial E_t/\partial h_t\|$"
    ax.set_ylabel("gradient reaching the state, relative to d = 0\n" + ratio)
    ax.set_title("Vanishing with distance, by cell, at the same initialisation\n" + what,
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, path)


def plot_delay_grad_norm(curves, path) -> pathlib.Path:
    """Global gradient norm during training, one panel per remedy (log scale)."""
    cols = min(3, len(curves))
    rows_n = -(-len(curves) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, curves, strict=False):
        for i, d in enumerate(c.delays):
            ax.semilogy(np.maximum(c.grad_norm[i], 1e-12), lw=0.7, label=f"d = {d}")
        ax.set_title(c.remedy.label, fontsize=10)
        ax.set_xlabel("training iteration (Adam)")
        ax.set_ylabel("‖∂E/∂θ‖₂, all parameters,\nbatch mean (before optax clipping)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle("Delay task: global gradient norm during training", fontsize=10)
    return _save(fig, path)


def plot_history(path, history, baselines: dict, config, vocab_size: int) -> pathlib.Path:
    """Training and validation loss in bits per character against the step.

    ``lm``: with the unigram baseline as a dashed line. ``tag``: a second panel
    with the validation accuracy and the majority-class and character-unigram
    baselines.
    """
    train = np.array([[s, loss] for s, loss, ok in history.train if ok], np.float64)
    val = np.array([[s, loss] for s, loss, _ in history.val], np.float64)
    tag = config.task == "tag"
    fig = Figure(figsize=(12 if tag else 7.5, 4.8))
    axes = fig.subplots(1, 2 if tag else 1, squeeze=False)
    ax = axes[0, 0]
    bits = 1 / math.log(2)
    if len(train):
        steps = train[:, 0] + 1  # the loss of step s is measured before its update
        ax.plot(steps, train[:, 1] * bits, color="tab:blue", alpha=0.25, lw=0.8,
                label="training batch")  # fmt: skip
        n = max(1, len(train) // 50)
        if n > 1:
            ax.plot(steps[n - 1 :], _smooth(train[None, :, 1], n)[0] * bits, color="tab:blue",
                    lw=1.8, label=f"training, mean of {n} steps")  # fmt: skip
    if len(val):
        ax.plot(val[:, 0], val[:, 1] * bits, "o-", color="tab:orange", ms=4,
                label="validation (held-out files)")  # fmt: skip
    if not tag:
        ax.axhline(baselines["unigram_bits"], ls="--", color="gray",
                   label=f"unigram baseline ({baselines['unigram_bits']:.2f})")  # fmt: skip
    ax.set_xlabel("training step (one chunk of B×T characters each)")
    ax.set_ylabel("cross-entropy (bits per character)")
    ax.set_title("token-type tagging: loss" if tag else "character language model: loss")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    if tag:
        ax = axes[0, 1]
        acc = np.array([[s, a] for s, _, a in history.val if a is not None], np.float64)
        if len(acc):
            ax.plot(acc[:, 0], 100 * acc[:, 1], "o-", color="tab:orange", ms=4,
                    label="RNN, validation")  # fmt: skip
        ax.axhline(100 * baselines["char_unigram"], ls="--", color="tab:green",
                   label=f"char-unigram baseline ({baselines['char_unigram']:.1%})")  # fmt: skip
        ax.axhline(100 * baselines["majority"], ls=":", color="gray",
                   label=f"majority class '{baselines['majority_class']}' "
                         f"({baselines['majority']:.1%})")  # fmt: skip
        ax.set_xlabel("training step")
        ax.set_ylabel("token-type accuracy on held-out files (%)")
        ax.set_title("Python token-type tagging: accuracy")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(
        f"bptt_jax, hand BPTT: task {config.task}, {getattr(config, 'cell', 'rnn')} cell, "
        f"K={vocab_size} H={config.hidden_size} B={config.batch_size} T={config.seq_len}, "
        f"{config.optimizer} lr={config.lr}"
    )
    fig.tight_layout()
    return _save(fig, path)
