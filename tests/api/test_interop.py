"""PyTorch interop: from_torch / to_torch with hand-built numpy state dicts, and
against a real nn.RNN when torch happens to be installed (never required)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_rel_error

import bptt_jax
from bptt_jax import DeepParams, Params

K, H, C, T, B = 4, 3, 5, 6, 2


def torch_state_dicts(L, bidirectional, *, bias=True, seed=0):
    """What nn.RNN(K, H, L, bidirectional=...) and nn.Linear(D*H, C) state dicts hold."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    rnn = {}
    for l in range(L):
        for d in range(D):
            suffix = f"_l{l}" + ("_reverse" if d else "")
            rnn["weight_ih" + suffix] = rng.standard_normal((H, K if l == 0 else D * H))
            rnn["weight_hh" + suffix] = rng.standard_normal((H, H))
            if bias:
                rnn["bias_ih" + suffix] = rng.standard_normal(H)
                rnn["bias_hh" + suffix] = rng.standard_normal(H)
    head = {"weight": rng.standard_normal((C, D * H)), "bias": rng.standard_normal(C)}
    return rnn, head


def torch_equations(rnn, head, x, L, bidirectional, f):
    """PyTorch's nn.RNN + Linear, written out in numpy: one sequence x (T, K)."""
    D = 2 if bidirectional else 1
    inp = x
    for l in range(L):
        outs = []
        for d in range(D):
            s = f"_l{l}" + ("_reverse" if d else "")
            b = rnn.get("bias_ih" + s, 0) + rnn.get("bias_hh" + s, 0)
            h, out = np.zeros(H), np.zeros((len(inp), H))
            for t in reversed(range(len(inp))) if d else range(len(inp)):
                h = f(rnn["weight_ih" + s] @ inp[t] + rnn["weight_hh" + s] @ h + b)
                out[t] = h
            outs.append(out)
        inp = np.concatenate(outs, axis=1)
    return inp @ head["weight"].T + head["bias"]


ACT = {"tanh": np.tanh, "relu": lambda s: np.maximum(s, 0)}


@pytest.mark.parametrize(
    ("L", "bidirectional", "activation"),
    [pytest.param(1, False, "tanh", marks=pytest.mark.slow),
     pytest.param(1, True, "relu", marks=pytest.mark.slow),
     pytest.param(2, False, "relu", marks=pytest.mark.slow),
     (3, True, "tanh")],
    ids=["L1-uni-tanh", "L1-bi-relu", "L2-uni-relu", "L3-bi-tanh"],
)  # fmt: skip
def test_from_torch_computes_what_pytorch_computes(L, bidirectional, activation, x64):
    rnn, head = torch_state_dicts(L, bidirectional)
    params = bptt_jax.from_torch(rnn, head)
    assert isinstance(params, Params if L == 1 and not bidirectional else DeepParams)
    x = np.random.default_rng(1).standard_normal((T, K))
    _, z = bptt_jax.forward(params, jnp.asarray(x), activation=activation)
    np.testing.assert_allclose(
        z, torch_equations(rnn, head, x, L, bidirectional, ACT[activation]), rtol=1e-12
    )


def test_from_torch_sums_the_two_biases_and_maps_the_weights(x64):
    rnn, head = torch_state_dicts(2, True)
    p = bptt_jax.from_torch(rnn, head)
    np.testing.assert_array_equal(p.reverse_layers[1].U, rnn["weight_hh_l1_reverse"])
    np.testing.assert_array_equal(p.layers[1].W, rnn["weight_ih_l1"])
    np.testing.assert_allclose(p.layers[0].b, rnn["bias_ih_l0"] + rnn["bias_hh_l0"], rtol=0)
    np.testing.assert_array_equal(p.V, head["weight"])


@pytest.mark.parametrize(("L", "bidirectional"), [(1, False), (2, True)], ids=["seed", "deep"])
def test_to_torch_round_trips(L, bidirectional, x64):
    rnn, head = torch_state_dicts(L, bidirectional)
    params = bptt_jax.from_torch(rnn, head)
    rnn2, head2 = bptt_jax.to_torch(params, as_numpy=True)
    assert set(rnn2) == set(rnn) and set(head2) == set(head)
    assert all(not np.any(v) for k, v in rnn2.items() if k.startswith("bias_hh"))
    back = bptt_jax.from_torch(rnn2, head2)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-15)


def test_state_dict_without_biases(x64):
    rnn, head = torch_state_dicts(2, False, bias=False)
    del head["bias"]
    p = bptt_jax.from_torch(rnn, head)
    assert all(not np.any(np.asarray(layer.b)) for layer in p.layers)
    assert not np.any(np.asarray(p.c))


def _lstm_like(rnn):
    rnn = dict(rnn)
    rnn["weight_hh_l0"] = np.zeros((4 * H, H))
    return rnn


BAD = {
    # an LSTM's weight_hh_l0 (4H rows) among an nn.RNN's other weights: the cell is the
    # LSTM's, so weight_ih_l0 has too few rows
    "lstm_hh_in_rnn": (lambda r, h: (_lstm_like(r), h),
                       r"weight_ih_l0 has shape \(3, 4\), expected \(12, 4\)"),
    "no_cell": (lambda r, h: ({**r, "weight_hh_l0": np.zeros((5 * H, H))}, h),
                r"weight_hh_l0 has shape \(15, 3\), which fits no cell"),
    "missing": (lambda r, h: ({k: v for k, v in r.items() if k != "weight_ih_l1"}, h),
                "lacks weight_ih_l1"),
    "unknown_key": (lambda r, h: ({**r, "weight_ih_l0_extra": r["weight_ih_l0"]}, h),
                    "unexpected key 'weight_ih_l0_extra'"),
    "head_width": (lambda r, h: (r, {**h, "weight": np.zeros((C, H))}),
                   r"head weight has shape \(5, 3\), expected \(C, 6\)"),
    "empty": (lambda r, h: ({}, h), "state dict is empty"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_bad_state_dicts_are_clear_errors(name, x64):
    make, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        bptt_jax.from_torch(*make(*torch_state_dicts(2, True)))


@pytest.mark.slow  # a fresh Python imports JAX and bptt_jax
def test_from_torch_does_not_import_torch():
    code = (
        "import sys, numpy as np, bptt_jax\n"
        "rnn = {'weight_ih_l0': np.ones((3, 4)), 'weight_hh_l0': np.eye(3)}\n"
        "bptt_jax.from_torch(rnn, {'weight': np.ones((5, 3))})\n"
        "bptt_jax.to_torch(bptt_jax.init_params(__import__('jax').random.key(0), 4, 3),"
        " as_numpy=True)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("L", "bidirectional", "nonlinearity"),
    [(1, False, "tanh"), (2, True, "relu")],
    ids=["L1-uni-tanh", "L2-bi-relu"],
)
def test_against_real_pytorch_rnn(L, bidirectional, nonlinearity, x64):
    torch = pytest.importorskip("torch")  # optional: CI does not install it
    torch.manual_seed(0)
    rnn = torch.nn.RNN(K, H, num_layers=L, bidirectional=bidirectional,
                       nonlinearity=nonlinearity, batch_first=True).double()  # fmt: skip
    head = torch.nn.Linear((2 if bidirectional else 1) * H, C).double()
    x = torch.randn(B, T, K, dtype=torch.float64)
    y = torch.randint(0, C, (B, T))
    out, _ = rnn(x)
    E_torch = torch.nn.functional.cross_entropy(head(out).reshape(-1, C), y.reshape(-1),
                                                reduction="sum")  # fmt: skip
    E_torch.backward()
    params = bptt_jax.from_torch(rnn.state_dict(), head.state_dict())
    E, grads = bptt_jax.bptt(
        params, jnp.asarray(x.numpy()), jnp.asarray(y.numpy()), activation=nonlinearity
    )
    assert float(E) == pytest.approx(E_torch.item(), rel=1e-12)
    g = dict(rnn.named_parameters())
    deep = grads if isinstance(grads, DeepParams) else bptt_jax.core.params.to_deep(grads)
    for l, cell in enumerate(deep.cells()):
        for d, layer in enumerate(cell):
            s = f"_l{l}" + ("_reverse" if d else "")
            assert max_rel_error(layer.U, g["weight_hh" + s].grad.numpy()) <= 1e-10
            assert max_rel_error(layer.W, g["weight_ih" + s].grad.numpy()) <= 1e-10
            assert max_rel_error(layer.b, g["bias_ih" + s].grad.numpy()) <= 1e-10
            assert max_rel_error(layer.b, g["bias_hh" + s].grad.numpy()) <= 1e-10
    assert max_rel_error(deep.V, head.weight.grad.numpy()) <= 1e-10
    assert max_rel_error(deep.c, head.bias.grad.numpy()) <= 1e-10
