"""nn.LSTM / nn.GRU interop: from_torch / to_torch of the gated cells, and the hand
gradients against PyTorch's autograd (float64 ≤ 1e-10) when torch is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_rel_error

import bptt_jax

K, H, C, B, T = 5, 4, 6, 3, 7
MODULES = {"lstm": "LSTM", "gru": "GRU"}


def numpy_state_dict(cell, L, bidirectional, seed=0):
    """An nn.LSTM/nn.GRU-shaped state dict of random numpy arrays (no torch needed)."""
    rng = np.random.default_rng(seed)
    G, D = {"lstm": 4, "gru": 3}[cell], 2 if bidirectional else 1
    sd = {}
    for l in range(L):
        for d in range(D):
            s = f"_l{l}" + ("_reverse" if d else "")
            sd["weight_ih" + s] = rng.standard_normal((G * H, K if l == 0 else D * H))
            sd["weight_hh" + s] = rng.standard_normal((G * H, H))
            sd["bias_ih" + s] = rng.standard_normal(G * H)
            sd["bias_hh" + s] = rng.standard_normal(G * H)
    head = {"weight": rng.standard_normal((C, D * H)), "bias": rng.standard_normal(C)}
    return sd, head


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_from_torch_reads_the_cell_from_the_shapes_and_keeps_b_hn_apart(cell, x64):
    sd, head = numpy_state_dict(cell, 2, True)
    p = bptt_jax.from_torch(sd, head)
    layer = p.reverse_layers[1]
    b_ih, b_hh = sd["bias_ih_l1_reverse"], sd["bias_hh_l1_reverse"]
    want = (
        b_ih + b_hh
        if cell == "lstm"
        else np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])
    )
    np.testing.assert_array_equal(np.asarray(layer.b), want)
    np.testing.assert_array_equal(np.asarray(layer.U), sd["weight_hh_l1_reverse"])
    rnn2, head2 = bptt_jax.to_torch(p, as_numpy=True)
    back = bptt_jax.from_torch(rnn2, head2)  # bias_hh's added blocks moved into bias_ih
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15)


def test_a_state_dict_that_fits_no_cell_is_one_line():
    sd, head = numpy_state_dict("lstm", 1, False)
    sd["weight_hh_l0"] = np.zeros((5 * H, H))
    with pytest.raises(ValueError, match=r"fits no cell: expected \(H, H\) for nn.RNN") as e:
        bptt_jax.from_torch(sd, head)
    assert "\n" not in str(e.value)
    sd, head = numpy_state_dict("gru", 1, False)
    sd["bias_hh_l0"] = np.zeros(4 * H)
    with pytest.raises(ValueError, match=r"bias_hh_l0 has shape \(16,\), expected \(12,\)"):
        bptt_jax.from_torch(sd, head)


def _torch_run(torch, cell, L, bidirectional, with_state):
    torch.manual_seed(0)
    module = getattr(torch.nn, MODULES[cell])
    rnn = module(K, H, num_layers=L, bidirectional=bidirectional, batch_first=True).double()
    D = 2 if bidirectional else 1
    head = torch.nn.Linear(D * H, C).double()
    x = torch.randn(B, T, K, dtype=torch.float64)
    y = torch.randint(0, C, (B, T))
    state = None
    if with_state:
        h0 = (0.5 * torch.randn(L * D, B, H, dtype=torch.float64)).requires_grad_()
        c0 = (0.5 * torch.randn(L * D, B, H, dtype=torch.float64)).requires_grad_()
        state = (h0, c0) if cell == "lstm" else h0
    out, _ = rnn(x, state)
    E = torch.nn.functional.cross_entropy(head(out).reshape(-1, C), y.reshape(-1),
                                          reduction="sum")  # fmt: skip
    E.backward()
    return rnn, head, x, y, state, E


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("L", "bidirectional"), [(1, False), (2, True)], ids=["L1", "L2-bi"])
def test_hand_gradients_equal_pytorch_autograd(cell, L, bidirectional, x64):
    torch = pytest.importorskip("torch")  # optional: CI does not install it
    rnn, head, x, y, state, E_torch = _torch_run(torch, cell, L, bidirectional, True)
    params = bptt_jax.from_torch(rnn.state_dict(), head.state_dict())
    h0 = jax.tree.map(lambda t: jnp.asarray(t.detach().numpy()), state)
    if L == 1 and not bidirectional:  # the seed's layout: states (B, H)
        h0 = jax.tree.map(lambda a: a[0], h0)
    E, grads, dh0, _ = bptt_jax.bptt_chunk(params, jnp.asarray(x.numpy()),
                                           jnp.asarray(y.numpy()), h0)  # fmt: skip
    assert float(E) == pytest.approx(E_torch.item(), rel=1e-12)
    rnn_g, head_g = bptt_jax.to_torch(grads, as_numpy=True, gradient=True)
    for name, p in rnn.named_parameters():
        assert max_rel_error(rnn_g[name], p.grad.numpy()) <= 1e-10, name
    assert max_rel_error(head_g["weight"], head.weight.grad.numpy()) <= 1e-10
    assert max_rel_error(head_g["bias"], head.bias.grad.numpy()) <= 1e-10
    want = jax.tree.map(lambda t: t.grad.numpy(), state)
    if L == 1 and not bidirectional:
        want = jax.tree.map(lambda a: a[0], want)
    for a, b in zip(jax.tree.leaves(dh0), jax.tree.leaves(want), strict=True):
        assert max_rel_error(a, b) <= 1e-10


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_to_torch_loads_into_pytorch_and_computes_the_same_outputs(cell, x64):
    torch = pytest.importorskip("torch")
    p = bptt_jax.init_params(
        jax.random.key(0),
        K,
        H,
        num_classes=C,
        cell=cell,
        num_layers=2,
        dtype="float64",
        forget_bias=1.0 if cell == "lstm" else 0.0,
    )
    p = p._replace(c=0.1 * jnp.arange(C, dtype=jnp.float64))
    rnn_sd, head_sd = bptt_jax.to_torch(p)
    rnn = getattr(torch.nn, MODULES[cell])(K, H, num_layers=2, batch_first=True).double()
    head = torch.nn.Linear(H, C).double()
    rnn.load_state_dict(rnn_sd)
    head.load_state_dict(head_sd)
    xs = jax.random.normal(jax.random.key(1), (B, T, K), jnp.float64)
    want = head(rnn(torch.from_numpy(np.array(xs)))[0]).detach().numpy()
    assert max_rel_error(bptt_jax.forward(p, xs)[1], want) <= 1e-12  # (hs, logits)
