"""The gradient reaching each state, for the three cells (docs/math.md §6, §13)."""

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, max_rel_error

import bptt_jax
from bptt_jax.lab.tasks import delay_task

K, H, B, T, DELAY = 8, 64, 8, 80, 50


def _flow(cell, forget_bias=0.0):
    xs, ys = delay_task(jax.random.key(0), batch=B, steps=T, delay=DELAY, vocab_size=K)
    p = bptt_jax.init_params(jax.random.key(1), K, H, cell=cell, forget_bias=forget_bias)
    return bptt_jax.gradient_flow(p, xs, ys)


def test_the_lstm_keeps_orders_of_magnitude_more_gradient_at_distance_50():
    # §13: with the forget gates near 1 (forget_bias 1: σ(1) = 0.73 at initialisation)
    # the LSTM's ∂E_t/∂h_k at t − k = 50 is far above the vanilla cell's, on the same
    # delay task and initialisation scheme (U(±1/√H)), each relative to ∂E_t/∂h_t.
    rnn = bptt_jax.gradient_flow(
        bptt_jax.init_params(jax.random.key(1), K, H),
        *delay_task(jax.random.key(0), batch=B, steps=T, delay=DELAY, vocab_size=K),
    )  # fmt: skip
    lstm = _flow("lstm", forget_bias=1.0)
    assert float(lstm.decay[DELAY]) > 1e3 * float(rnn.decay[DELAY])
    assert float(lstm.c_decay[DELAY]) > 1e3 * float(rnn.decay[DELAY])
    assert float(lstm.decay_rate) > float(rnn.decay_rate)


def _autodiff_state_norm(p, xs, ys, t, k, cell, activation="tanh"):
    """mean_b ‖∂E_t/∂h_k‖ by jax.grad of E_t with respect to a perturbation added to h_k
    (written here from the public recurrence; 0-based t, k < t)."""
    B_, H_ = xs.shape[0], p.U.shape[1]

    def E_t(eps):  # the loss of step t + 1 (1-based), with eps added to h after step k + 1
        head = bptt_jax.recurrence(p, xs[:, : k + 1], activation=activation)[1]
        state = (head[0] + eps, head[1]) if cell == "lstm" else head + eps
        hs, _ = bptt_jax.recurrence(p, xs[:, k + 1 : t + 1], state, activation=activation)
        logits = hs[:, -1] @ p.V.T + p.c
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(B_), ys[:, t]])

    g = jax.grad(E_t)(jnp.zeros((B_, H_), jnp.float64))
    return float(jnp.mean(jnp.linalg.norm(g, axis=-1)))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_gradients_are_the_autodiff_gradients_of_one_loss(cell, x64):
    # norms[t, k] = mean_b ‖∂E_t/∂h_k‖: refereed by jax.grad of E_t with respect to a
    # perturbation added to h_k.
    T_, t, k = 6, 4, 1
    p = bptt_jax.init_params(jax.random.key(2), 5, 4, cell=cell, dtype="float64")
    xs = jax.random.randint(jax.random.key(3), (2, T_), 0, 5)
    ys = jax.random.randint(jax.random.key(4), (2, T_), 0, 5)
    flow = bptt_jax.gradient_flow(p, xs, ys)
    want = _autodiff_state_norm(p, xs, ys, t, k, cell)
    assert max_rel_error(flow.norms[t, k], want) <= RTOL["float64"]
    assert float(jnp.max(jnp.abs(jnp.triu(flow.norms, 1)))) == 0.0


def test_gradient_flow_of_a_deep_gated_model_is_one_line():
    p = bptt_jax.init_params(jax.random.key(0), 5, 4, cell="gru", num_layers=2)
    with pytest.raises(ValueError, match="gru cell measures one layer in one direction") as e:
        bptt_jax.gradient_flow(p, jnp.zeros((2, 3), int), jnp.zeros((2, 3), int))
    assert "\n" not in str(e.value)


def test_cell_flows_sets_the_cells_side_by_side_at_the_same_initialisation(x64):
    # diagnose's comparison: every model drawn from the same key and scheme, so each
    # entry is gradient_flow of init_params(key, ..., cell=...) with that forget bias.
    from bptt_jax.core.init import Scheme
    from bptt_jax.lab.flow import COMPARED_CELLS, cell_flows

    key, K_, H_ = jax.random.key(4), 6, 5
    xs = jax.random.randint(jax.random.key(5), (3, 9), 0, K_)
    flows = cell_flows(key, xs, xs, vocab_size=K_, hidden_size=H_, activation="relu",
                       scheme=Scheme("orthogonal"), dtype=jnp.float64)  # fmt: skip
    assert [label for label, _ in flows] == ["rnn (relu)", *(c[0] for c in COMPARED_CELLS[1:])]
    for (label, flow), (_, cell, forget_bias) in zip(flows, COMPARED_CELLS, strict=True):
        p = bptt_jax.init_params(key, K_, H_, cell=cell, forget_bias=forget_bias,
                                 init="orthogonal", dtype="float64")  # fmt: skip
        if cell == "rnn":  # gradient_flow measures its δ; the state's gradient by autodiff
            want = _autodiff_state_norm(p, xs, xs, 6, 2, "rnn", activation="relu")
            assert max_rel_error(flow.norms[6, 2], want) <= RTOL["float64"]
            assert flow.c_decay is None
            continue
        want = bptt_jax.gradient_flow(p, xs, xs)
        assert max_rel_error(flow.norms, want.norms) <= RTOL["float64"], label
        assert (flow.c_decay is None) == (cell == "gru")
