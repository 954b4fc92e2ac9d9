"""The loss-curve figure written at the end of ``bptt-jax train`` (matplotlib, Agg)."""

from __future__ import annotations

import math
import pathlib

import numpy as np


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    n = max(1, min(n, len(x)))
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[n:] - c[:-n]) / n


def plot_history(path, history, baselines: dict, config, vocab_size: int) -> pathlib.Path:
    """Training and validation loss in bits per character against the step.

    ``lm``: with the unigram baseline as a dashed line. ``tag``: a second panel
    with the validation accuracy and the majority-class and character-unigram
    baselines.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train = np.array([[s, loss] for s, loss, ok in history.train if ok], np.float64)
    val = np.array([[s, loss] for s, loss, _ in history.val], np.float64)
    tag = config.task == "tag"
    fig, axes = plt.subplots(1, 2 if tag else 1, figsize=(12 if tag else 7.5, 4.8), squeeze=False)
    ax = axes[0, 0]
    bits = 1 / math.log(2)
    if len(train):
        steps = train[:, 0] + 1  # the loss of step s is measured before its update
        ax.plot(steps, train[:, 1] * bits, color="tab:blue", alpha=0.25, lw=0.8,
                label="training batch")  # fmt: skip
        n = max(1, len(train) // 50)
        if n > 1:
            ax.plot(steps[n - 1 :], _moving_average(train[:, 1], n) * bits, color="tab:blue",
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
        f"bptt_jax, hand BPTT: task {config.task}, K={vocab_size} H={config.hidden_size} "
        f"B={config.batch_size} T={config.seq_len}, {config.optimizer} lr={config.lr}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
