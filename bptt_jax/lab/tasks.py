r"""A long-memory task, and a tiny training loop that shows vanishing gradients fail it.

**The delay task.** Inputs are random symbols :math:`x_t \in \{0..K-1\}`; the
label at step t is the input d steps earlier, :math:`y_t = x_{t-d}`. To predict
it the network must carry :math:`x_{t-d}` for d steps, and the only gradient
that teaches it to is :math:`\delta_{t-d}^{(t)} = \partial E_t/\partial s_{t-d}`,
whose size the seed's §6 bounds by :math:`\gamma^{d}`. The first d steps have
no defined label (there is no :math:`x_{t-d}`): they get the *uniform* soft
label :math:`y_t = (1/K, \ldots, 1/K)`, whose loss is smallest, :math:`\log K`,
for a uniform prediction -- the honest answer when nothing can be known -- and
which carries no information the model could exploit. Accuracy and loss are
reported on the labelled steps t > d only; chance accuracy is :math:`1/K`.

**The training loop** (:func:`train_delay`) is deliberately small: Adam on the
hand gradient of :func:`bptt_jax.core.bptt.bptt_core`, optionally clipped (an
optax clipper from :func:`bptt_jax.make_clipper`, or per-step δ clipping in the
recursion), a fresh batch each iteration, all of it one jitted ``lax.scan``;
the delays run side by side under ``jax.vmap`` from the same initial
parameters and the same data keys.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ..core.cells import cell_named
from ..core.clipping import make_clipper
from ..core.init import Scheme
from ..core.losses import log_softmax
from ..core.options import Options
from ..core.params import init_params, to_deep
from ..core.rnn import hidden_states, output_logits
from ..core.step import hand_bptt, train_step
from .diagnostics import gradient_flow_core
from .flow import state_flow_core


def delay_task(key: jax.Array, *, batch: int, steps: int, delay, vocab_size: int, dtype=None):
    r"""One batch of the delay task: :math:`y_t = x_{t-d}`, uniform for t ≤ d.

    Args:
      key: a ``jax.random`` key.
      batch: B sequences.
      steps: T steps each.
      delay: d in 0..T-1 (may be a traced integer: one compilation serves every
        d; out of that range every label is NaN).
      vocab_size: K symbols (inputs and classes).
      dtype: of the soft labels; the default float dtype when ``None``.

    Returns:
      ``(xs, ys)``: ids ``(B, T)`` int32 and soft labels ``(B, T, K)``: one-hot
      of :math:`x_{t-d}` for t > d (1-based), :math:`1/K` everywhere for t ≤ d.

    Example:
      >>> xs, ys = delay_task(jax.random.key(0), batch=1, steps=5, delay=2, vocab_size=3)
      >>> bool(jnp.all(jnp.argmax(ys[0, 2:], -1) == xs[0, :3]))
      True
    """
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    xs = jax.random.randint(key, (batch, steps), 0, vocab_size, jnp.int32)  # (B, T)
    t = jnp.arange(steps)  # 0-based: the label of step t is x_{t-d}
    source = jnp.take(xs, jnp.clip(t - delay, 0, steps - 1), axis=1)  # (B, T)
    one_hot = jax.nn.one_hot(source, vocab_size, dtype=dtype)  # (B, T, K)
    uniform = jnp.full_like(one_hot, 1.0 / vocab_size)
    ys = jnp.where((t >= delay)[None, :, None], one_hot, uniform)
    valid = (delay >= 0) & (delay < steps)  # a traced delay is checked here, on the device
    return xs, jnp.where(valid, ys, jnp.nan)


class Remedy(NamedTuple):
    """One training configuration of the delay experiment."""

    label: str  # for tables and legends
    init: str = "uniform"  # init_params(init=)
    activation: str = "tanh"
    spectral_radius: float | None = None
    clip: str = "none"  # make_clipper name
    clip_value: float | None = None
    clip_delta: float | None = None  # per-step δ clipping in the hand recursion
    cell: str = "rnn"  # "rnn", "lstm", "gru" (init_params(cell=)); activation: rnn only
    forget_bias: float = 0.0  # the LSTM's (init_params(forget_bias=))


#: The configurations of the recorded experiment (README).
REMEDIES = (
    Remedy("seed: N(0, 0.01²), tanh", init="normal"),
    Remedy("PyTorch uniform ±1/√H, tanh"),
    Remedy("orthogonal U, tanh", init="orthogonal"),
    Remedy("IRNN: identity U, ReLU", init="identity", activation="relu"),
    Remedy("IRNN + global-norm clip 1", init="identity", activation="relu",
           clip="global_norm", clip_value=1.0),
    Remedy("IRNN + per-step δ clip 0.1", init="identity", activation="relu", clip_delta=0.1),
    Remedy("LSTM, forget bias 1", cell="lstm", forget_bias=1.0),
    Remedy("GRU", cell="gru"),
)  # fmt: skip


class DelayCurves(NamedTuple):
    remedy: Remedy
    delays: tuple[int, ...]
    loss: np.ndarray  # (D, N): cross-entropy per labelled step (t > d), nats
    accuracy: np.ndarray  # (D, N): fraction of labelled steps predicted right
    grad_norm: np.ndarray  # (D, N): global norm of the (clipped δ) gradient, before optax
    signal: np.ndarray  # (D,): Σ_t‖δ_{t−d}^(t)‖ / Σ_t‖δ_t^(t)‖ at initialisation


@functools.partial(jax.jit, static_argnames=("sizes", "learning_rate", "clip", "options"))
def _train(params, key, delays, *, sizes, learning_rate, clip, options):
    """Per delay: loss, accuracy, gradient norm ``(N,)`` each; vmapped over delays.
    ``sizes``: ``(batch, steps, vocab_size, iterations)``; ``clip``: ``(name, value)``
    of the optax clipper; ``options``: the cell, ``clip_delta``, ``precision``."""
    batch, steps, vocab_size, iterations = sizes
    opt = optax.chain(make_clipper(*clip), optax.adam(learning_rate))
    grad_fn = functools.partial(hand_bptt, options=options)
    h0 = options.cell.zero_state((batch, params.U.shape[1]), params.U.dtype)
    t = jnp.arange(steps)

    def one_delay(d):
        def step(carry, k):
            params, opt_state = carry
            xs, ys = delay_task(
                k, batch=batch, steps=steps, delay=d, vocab_size=vocab_size, dtype=params.V.dtype
            )
            # The app's step: hand gradients, mean over the sequences, optax update;
            # a diverging run is shown as it is, not skipped.
            new = train_step(grad_fn, opt, params, opt_state, xs, ys, h0, n=batch,
                             skip_nonfinite=False)  # fmt: skip
            gnorm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(new.grads)))
            # Metrics on the labelled steps, t > d, of this batch before the update.
            _, hs = hidden_states(params, xs, h0, options)  # (T, B, H)
            log_p = log_softmax(output_logits(params, hs, options))  # (T, B, K)
            labelled = (t >= d)[:, None]  # (T, 1)
            target = jnp.swapaxes(jnp.argmax(ys, -1), 0, 1)  # (T, B)
            n = jnp.maximum(jnp.sum(labelled) * batch, 1).astype(params.V.dtype)
            nll = -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]  # (T, B)
            loss = jnp.sum(jnp.where(labelled, nll, 0)) / n
            right = (jnp.argmax(log_p, -1) == target) & labelled
            acc = jnp.sum(right).astype(params.V.dtype) / n
            return (new.params, new.opt_state), (loss, acc, gnorm)

        keys = jax.random.split(key, iterations)
        _, curves = lax.scan(step, (params, opt.init(params)), keys)
        return curves

    return jax.vmap(one_delay)(delays)


def train_delay(
    key: jax.Array,
    delays: Sequence[int] = (2, 5, 10, 20),
    remedy: Remedy = REMEDIES[1],
    *,
    steps: int = 30,
    vocab_size: int = 4,
    hidden_size: int = 32,
    batch: int = 32,
    iterations: int = 400,
    learning_rate: float = 1e-2,
    precision: str | jax.lax.Precision | None = None,
) -> DelayCurves:
    r"""Train one fresh RNN per delay d on the delay task; return the curves.

    Every delay starts from the same ``init_params(key, K, H, init=...)`` and
    sees the same data keys, so the curves differ only in d. Also measures,
    at initialisation, the share of the gradient signal that reaches back d
    steps, ``gradient_flow(...).decay[d]`` on one batch of the task.

    Args:
      key: a ``jax.random`` key (parameters, data).
      delays: the delays d, each ``0 <= d < steps``.
      remedy: the initialisation, activation and clipping (:class:`Remedy`).
      steps, vocab_size, hidden_size, batch: T, K, H, B.
      iterations: Adam steps N.
      learning_rate: Adam's step size.
      precision: every matrix product's ``jax.lax.Precision`` (``None``: JAX's default).

    Returns:
      :class:`DelayCurves` with ``loss`` and ``accuracy`` ``(D, N)`` and
      ``signal`` ``(D,)``.
    """
    options = Options(cell=cell_named(remedy.cell, remedy.activation),
                      clip_delta=remedy.clip_delta, precision=precision)  # fmt: skip
    delays = tuple(int(d) for d in delays)
    kp, kd, kf = jax.random.split(key, 3)
    scheme = Scheme(remedy.init, remedy.spectral_radius, remedy.cell, remedy.forget_bias)
    params = init_params(kp, vocab_size, hidden_size, scheme=scheme)
    loss, acc, gnorm = _train(
        params,
        kd,
        jnp.asarray(delays, jnp.int32),
        sizes=(batch, steps, vocab_size, iterations),
        learning_rate=learning_rate,
        clip=(remedy.clip, remedy.clip_value),
        options=options,
    )
    xs, ys = delay_task(kf, batch=batch, steps=steps, delay=0, vocab_size=vocab_size)
    h0 = options.cell.zero_state((batch, hidden_size), params.U.dtype)
    measure = options._replace(clip_delta=None)
    if remedy.cell == "rnn":  # the seed's δ_k^(t) (§6)
        flow = gradient_flow_core(params, xs, ys, h0, options=measure)
    else:  # a gated cell: the gradient reaching h_k (§13)
        lift = lambda s: jax.tree.map(lambda a: a[None], s)  # noqa: E731
        flow = state_flow_core(to_deep(params), xs, ys, lift(h0), options=measure)
    decay = np.asarray(flow.decay)  # (T,): by distance d
    return DelayCurves(
        remedy=remedy,
        delays=delays,
        loss=np.asarray(loss),
        accuracy=np.asarray(acc),
        grad_norm=np.asarray(gnorm),
        signal=decay[list(delays)],
    )
