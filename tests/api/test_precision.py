"""The precision policy (issue 16): ``precision=`` reaches every matrix product.

Each public function that multiplies matrices is traced (``jax.make_jaxpr``, no
compilation, no execution) for each precision value, and every ``dot_general`` of
the program -- inside ``scan``, ``while``, ``cond``, ``custom_vjp``, ``pjit`` and any
other sub-jaxpr -- must carry the precision asked for. For ``recurrence`` and
``hand_loss`` the trace is of ``jax.grad`` of them, so their hand backward rules
are walked too. ``None`` must give what JAX's own default gives (a plain
``jnp.matmul`` traced in the same context). A test that runs only on a GPU states
and checks the error the default precision gives there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr

import bptt_jax
from bptt_jax.api.options import PRECISIONS, check_precision
from bptt_jax.core.options import Options
from bptt_jax.lab import diagnostics, tasks
from bptt_jax.referees.tolerances import AUTODIFF, max_relative_error

K, H, C, B, T = 5, 4, 6, 2, 3

#: Every value ``precision=`` accepts, by test id.
VALUES = {"None": None, **{p: p for p in PRECISIONS}}


def _subjaxprs(value):
    if isinstance(value, ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _subjaxprs(v)


def dot_precisions(jaxpr) -> list:
    """The ``precision`` of every ``dot_general`` in ``jaxpr`` and all its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                found.extend(dot_precisions(sub))
    return found


def expected(precision):
    """What a ``dot_general`` asked for ``precision`` carries: for ``None`` whatever a
    plain ``jnp.matmul`` gets in this context (JAX's default matmul precision)."""
    a = jnp.ones((2, 2))
    jaxpr = jax.make_jaxpr(functools.partial(jnp.matmul, precision=precision))(a, a)
    return dot_precisions(jaxpr.jaxpr)[0]


def _seed(inputs="ids"):
    params = bptt_jax.init_params(jax.random.key(0), K, H, num_classes=C)
    xs = jnp.zeros((B, T), jnp.int32) if inputs == "ids" else jnp.ones((B, T, K), jnp.float32)
    return params, xs, jnp.ones((B, T), jnp.int32)


def _deep():
    params = bptt_jax.init_params(
        jax.random.key(0), K, H, num_classes=C, num_layers=2, bidirectional=True
    )
    return params, jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), jnp.int32)


LENGTHS = jnp.array([T, 2])


def _grad_of(fn):
    return jax.grad(lambda p, x, y, **kw: jnp.sum(fn(p, x, y, **kw)))


def _grad_recurrence(p, x, y, **kw):
    return jax.grad(lambda p: jnp.sum(bptt_jax.recurrence(p, x, **kw)[0]))(p)


def _grad_hand_loss(p, x, y, **kw):
    return jax.grad(lambda p: bptt_jax.hand_loss(p, x, y, **kw))(p)


#: ``name: (function(params, xs, ys, precision=...), problem, extra keywords)``:
#: every public function that multiplies matrices, on each of its code paths.
CASES = {
    "forward": (lambda p, x, y, **kw: bptt_jax.forward(p, x, **kw), _seed, {}),
    "forward-deep": (lambda p, x, y, **kw: bptt_jax.forward(p, x, **kw), _deep, {}),
    "loss": (bptt_jax.loss, _seed, {}),
    "loss-deep": (bptt_jax.loss, _deep, {"lengths": LENGTHS}),
    "bptt": (bptt_jax.bptt, _seed, {}),
    "bptt-dense-bf16": (bptt_jax.bptt, lambda: _seed("dense"), {"matmul_dtype": "bfloat16"}),
    "bptt-recompute-truncate": (bptt_jax.bptt, _seed, {"recompute": True, "truncate": 2}),
    "bptt-deep": (bptt_jax.bptt, _deep, {"lengths": LENGTHS}),
    "bptt_chunk": (bptt_jax.bptt_chunk, _seed, {"chunk": 2}),
    "bptt_per_loss": (bptt_jax.bptt_per_loss, _seed, {"truncate": 2}),
    "bptt_per_loss-deep": (bptt_jax.bptt_per_loss, _deep, {}),
    "per_loss_deltas": (bptt_jax.per_loss_deltas, _seed, {}),
    "per_loss_deltas-deep": (bptt_jax.per_loss_deltas, _deep, {}),
    "recurrence-grad": (_grad_recurrence, lambda: _seed("dense"), {}),
    "recurrence-grad-deep": (_grad_recurrence, _deep, {"lengths": LENGTHS}),
    "hand_loss-grad": (_grad_hand_loss, _seed, {}),
    "hand_loss-grad-deep": (_grad_hand_loss, _deep, {"reduction": "mean"}),
    "gradient_flow": (bptt_jax.gradient_flow, _seed, {}),
    "gradient_flow-deep": (bptt_jax.gradient_flow, _deep, {}),
    "autodiff_bptt": (bptt_jax.autodiff_bptt, _seed, {"truncate": 2}),
    "autodiff_bptt-deep": (bptt_jax.autodiff_bptt, _deep, {}),
    "autodiff_dh0": (bptt_jax.autodiff_dh0, _seed, {}),
    "autodiff_bptt_per_loss": (bptt_jax.autodiff_bptt_per_loss, _seed, {"truncate": 2}),
    "finite_difference_bptt": (bptt_jax.finite_difference_bptt, _seed, {}),
}


# The fast tier walks every function at "high" (no backend's default, so a product
# that ignored the argument shows) and the two main paths at every value; the
# slow tier walks all of them. "high" and Precision.HIGH normalise to one
# static argument (test_names_and_enums_share_one_normal_form).
MATRIX = [
    pytest.param(
        value, name, id=f"{value}-{name}",
        marks=() if value == "high" or name in ("bptt", "bptt-deep") else pytest.mark.slow,
    )
    for value in ("None", *PRECISIONS)
    for name in CASES
]  # fmt: skip


@pytest.mark.parametrize(("value", "name"), MATRIX)
def test_every_product_carries_the_precision(value, name):
    fn, problem, kw = CASES[name]
    params, xs, ys = problem()
    precision = VALUES[value]
    jaxpr = jax.make_jaxpr(functools.partial(fn, precision=precision, **kw))(params, xs, ys)
    found = dot_precisions(jaxpr.jaxpr)
    assert found, f"{name}: no matrix product traced"
    want = expected(precision)
    wrong = [p for p in found if p != want]
    assert not wrong, f"{name}: {len(wrong)} of {len(found)} products at {wrong[0]}, not {want}"


@pytest.mark.parametrize("value", ["None", "high"])
def test_train_delay_core_carries_the_precision(value):
    precision = check_precision(VALUES[value])
    params = bptt_jax.init_params(jax.random.key(0), K, H)
    train = functools.partial(
        tasks._train, sizes=(B, T, K, 2), learning_rate=0.1, clip=("none", None),
        options=Options(precision=precision),
    )  # fmt: skip
    jaxpr = jax.make_jaxpr(train)(params, jax.random.key(1), jnp.array([0, 1]))
    found = dot_precisions(jaxpr.jaxpr)
    assert found and all(p == expected(precision) for p in found)


def test_train_delay_and_spectral_sweep_pass_the_precision_down(monkeypatch):
    seen = {}

    def spy(name):
        def record(*args, **kwargs):
            seen[name] = kwargs["precision"]

        return record

    monkeypatch.setattr(tasks, "train_delay", spy("train_delay"))
    monkeypatch.setattr(diagnostics, "spectral_sweep", spy("spectral_sweep"))
    bptt_jax.train_delay(jax.random.key(0), (1,), steps=3, precision="high")
    bptt_jax.spectral_sweep(jax.random.key(0), precision="highest")
    assert seen == {"train_delay": lax.Precision.HIGH, "spectral_sweep": lax.Precision.HIGHEST}


def test_names_and_enums_share_one_normal_form():
    # A static argument of the jitted cores: "high" and Precision.HIGH hit one cache entry.
    assert check_precision("high") is check_precision(lax.Precision.HIGH) is lax.Precision.HIGH
    assert check_precision(None) is None
    assert all(hash(check_precision(p)) == hash(lax.Precision(p)) for p in PRECISIONS)


@pytest.mark.parametrize(
    ("bad", "error"),
    [("fastest", ValueError), ("HIGHEST", ValueError), ("tf32", ValueError), (3, TypeError),
     (("high", "high"), TypeError), (True, TypeError)],
    ids=["alias", "upper-case", "unknown", "int", "pair", "bool"],
)  # fmt: skip
def test_a_bad_precision_is_a_one_line_error(bad, error):
    params, xs, ys = _seed()
    with pytest.raises(error) as info:
        bptt_jax.bptt(params, xs, ys, precision=bad)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("precision must be None") and repr(bad) in message


@pytest.mark.parametrize(
    "fn",
    [bptt_jax.forward, bptt_jax.loss, bptt_jax.recurrence, bptt_jax.hand_loss,
     bptt_jax.per_loss_deltas, bptt_jax.gradient_flow, bptt_jax.autodiff_dh0,
     bptt_jax.finite_difference_bptt],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_every_public_product_function_checks_the_precision(fn):
    params, xs, ys = _seed()
    args = (params, xs) if fn in (bptt_jax.forward, bptt_jax.recurrence) else (params, xs, ys)
    with pytest.raises(ValueError, match=r"^precision must be None"):
        fn(*args, precision="fast")


# On the GPU: what the default precision costs. TF32 keeps 10 of float32's 23
# mantissa bits, a relative rounding of 2**-11 ≈ 4.9e-4 per operand; a product of
# H terms and the δ recursion's chain of them stay within about 1e-3 relative at
# these sizes, while "highest" stays within the float32 tolerance (1e-4).
DEFAULT_GPU_RTOL = 2e-3


@pytest.mark.skipif(
    jax.default_backend() != "gpu",
    reason="GPU only: on the CPU every precision is full float32, so there is no "
    "reduced-precision default to measure",
)
def test_the_default_precision_on_a_gpu_is_tf32_class():
    params = bptt_jax.init_params(jax.random.key(0), 65, 256, num_classes=65)
    kx, ky = jax.random.split(jax.random.key(1))
    xs = jax.random.randint(kx, (32, 64), 0, 65)
    ys = jax.random.randint(ky, (32, 64), 0, 65)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        reference = bptt_jax.autodiff_bptt(p64, xs, ys, precision="highest")
    fast = bptt_jax.bptt(params, xs, ys, precision="default")
    exact = bptt_jax.bptt(params, xs, ys, precision="highest")
    err_default = max_relative_error(fast, reference)
    err_highest = max_relative_error(exact, reference)
    assert err_highest <= AUTODIFF["float32"], f"highest: {err_highest:.2e}"
    assert err_default <= DEFAULT_GPU_RTOL, f"default: {err_default:.2e}"
