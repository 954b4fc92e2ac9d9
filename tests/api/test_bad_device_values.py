"""A bad value in a ``jax.Array`` (checked on the device, not read back) makes every
output and every gradient leaf NaN -- ``b``, ``c`` and ``h0`` included -- under ``jit``,
for the gradients the library computes (``bptt``) and those JAX's autodiff takes
through a public function (``recurrence``, ``hand_loss``, ``loss``, ``forward``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_problem, slow_except

import bptt_jax

K, H, C, B, T = 6, 4, 3, 2, 5


def _problem(kind):
    """``(params, xs, ys, h0, lengths)`` with one bad device value of ``kind``."""
    dense = kind in ("lengths", "soft_ys")
    params, xs, ys, h0 = make_problem(K=K, H=H, C=C, B=B, T=T, h0=True, dtype="float32",
                                      inputs="dense" if dense else "ids")  # fmt: skip
    lengths = None
    if dense:  # dense inputs and soft labels: they get gradients too
        ys = jax.nn.one_hot(ys, C, dtype=jnp.float32)
    if kind == "xs_id":
        xs = xs.at[1, 3].set(K)
    elif kind == "ys_id":
        ys = ys.at[0, 2].set(-1)
    elif kind == "soft_ys":
        ys = ys.at[1, 0].set(0.5)  # a row summing to 1.5
    elif kind == "lengths":
        lengths = jnp.array([T, T + 1])
    return params, xs, ys, h0, lengths


def _objective(out):
    """A scalar of every output, so every output's cotangent is non-zero."""
    return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))


def _bptt(params, xs, ys, h0, lengths):  # the hand gradients: nothing to differentiate
    return bptt_jax.bptt_chunk(params, xs, ys, h0, lengths=lengths), None


def _recurrence(params, xs, ys, h0, lengths):
    out = bptt_jax.recurrence(params, xs, h0, lengths=lengths)
    wrt = (0, 1, 2) if jnp.issubdtype(xs.dtype, jnp.floating) else (0, 2)
    grads = jax.grad(
        lambda *a: _objective(bptt_jax.recurrence(a[0], a[1], a[2], lengths=lengths)), wrt
    )(params, xs, h0)
    return out, grads


def _forward(params, xs, ys, h0, lengths):
    def f(p, x, h):
        return bptt_jax.forward(p, x, h, lengths=lengths, return_state=True)

    wrt = (0, 1, 2) if jnp.issubdtype(xs.dtype, jnp.floating) else (0, 2)
    return f(params, xs, h0), jax.grad(lambda *a: _objective(f(*a)), wrt)(params, xs, h0)


def _loss_like(fn):
    def run(params, xs, ys, h0, lengths):
        def f(p, x, y, h):
            return fn(p, x, y, h, lengths=lengths)

        wrt = [0, 3] + [i for i, a in ((1, xs), (2, ys)) if jnp.issubdtype(a.dtype, jnp.floating)]
        return f(params, xs, ys, h0), jax.grad(f, tuple(sorted(wrt)))(params, xs, ys, h0)

    return run


FUNCTIONS = {
    "bptt": _bptt,
    "recurrence": _recurrence,
    "hand_loss": _loss_like(bptt_jax.hand_loss),
    "loss": _loss_like(bptt_jax.loss),
    "forward": _forward,
}
KINDS = ("xs_id", "ys_id", "soft_ys", "lengths")
CASES = [
    (fn, kind)
    for fn in FUNCTIONS
    for kind in KINDS
    if not (fn in ("recurrence", "forward") and kind in ("ys_id", "soft_ys"))  # no ys there
]


@pytest.mark.parametrize(
    "case", slow_except(CASES, fast={("hand_loss", "xs_id"), ("recurrence", "lengths")},
                        ids=[f"{f}-{k}" for f, k in CASES]),
)  # fmt: skip
def test_every_output_and_gradient_leaf_is_nan_under_jit(case):
    fn, kind = case
    params, xs, ys, h0, lengths = _problem(kind)
    out, grads = jax.jit(FUNCTIONS[fn])(params, xs, ys, h0, lengths)
    paths = jax.tree_util.tree_flatten_with_path((out, grads))[0]
    assert len(paths) >= 7  # the outputs, then U V W b c and h0 (or their gradients)
    for path, leaf in paths:
        leaf = np.asarray(leaf)
        name = jax.tree_util.keystr(path)
        if fn == "bptt" and name.endswith(".W"):  # the hand dW of ids: a scatter-add of
            # the NaN deltas, whose columns of ids that never occur stay 0
            assert np.isnan(leaf).any() and (np.isnan(leaf) | (leaf == 0)).all(), name
        else:
            assert np.isnan(leaf).all(), f"{name} is not NaN: {leaf}"


@pytest.mark.parametrize("fn", ["recurrence", "hand_loss", "forward"])
def test_good_device_values_are_untouched(fn):
    # The poison is an exact factor 1 when nothing is bad: the same as host arrays
    # (both eager, so the same compiled cores run).
    params, xs, ys, h0, _ = _problem("none")
    device = FUNCTIONS[fn](params, xs, ys, h0, None)
    host = FUNCTIONS[fn](params, np.asarray(xs), np.asarray(ys), h0, None)
    for a, b in zip(jax.tree.leaves(device), jax.tree.leaves(host), strict=True):
        np.testing.assert_array_equal(a, b)
