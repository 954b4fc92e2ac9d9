"""Test helpers: problems of a given shape, tolerances, and tree comparison."""

from __future__ import annotations

import functools
import struct

import jax
import jax.numpy as jnp
import numpy as np

import bptt_jax
from bptt_jax import Params
from bptt_jax.app.cli.main import main
from bptt_jax.referees.tolerances import (
    AUTODIFF,
    FINITE_DIFF,
    VERIFY_PRECISION,
    max_relative_error,
)

# Required agreement of the hand gradients with jax.grad (the project standard),
# and with finite differences (the method's accuracy): the package's one table.
RTOL = {dtype: AUTODIFF[dtype] for dtype in ("float64", "float32")}
FD_RTOL = FINITE_DIFF["float64"]
max_rel_error = max_relative_error

#: ``jax.value_and_grad(bptt_jax.loss)``, the referee, compiled as one function:
#: one XLA compilation per shape and dtype instead of eager autodiff's several
#: (and shared by every test module). The same function of the same loss; the
#: argument checks of ``loss`` run only on concrete arrays, so not in here. At
#: ``VERIFY_PRECISION`` ("highest"), as every comparison (conftest.py).
loss_value_and_grad = jax.jit(
    jax.value_and_grad(functools.partial(bptt_jax.loss, precision=VERIFY_PRECISION)),
    static_argnames=("activation", "reduction"),
)


def linear_training_bound(dtype: str, steps: int) -> float:
    r"""How far apart two float runs of ``steps`` SGD or momentum steps may end when
    they compute each step's gradient in a different order (8 devices against 1,
    recompute against stored states): the max-norm relative error of every leaf of
    the parameters, the optimizer state and h. The argument, r = ``AUTODIFF[dtype]``
    (1e-4 in float32, 1e-10 in float64):

    - One step's gradient: two float evaluations of one gradient whose sums run in
      different orders, which is what r bounds (hand BPTT and ``jax.grad`` differ in
      the order of every sum). The global-norm clip multiplies by
      ``min(1, c/|g|)``, a ratio of norms that moves by at most r more: <= 2r.
    - SGD and momentum are linear in the clipped gradient: theta_N is theta_0 minus
      a fixed combination of the N steps' gradients, from the same theta_0. Each
      step's part differs by <= 2r of itself, and the steps of a short run point down
      one slope, so the sum's error is <= 2r of the displacement per step, 2 N r in
      all; a parameter difference e fed back through the next gradient adds
      ``lr |d2E| e`` per step, small at the default lr (4e-3). A leaf that starts at
      0 (b, c) is all displacement, so the bound is 2 N r on every leaf, momentum's
      trace (a sum of gradients) and h (a forward of those parameters) included.

    Adam has no such bound: its update ``m / (sqrt(v) + eps)`` divides each entry by
    about ``|g|``, so where an entry of g is at round-off size the update is
    round-off over round-off, O(lr) in either run (an amplification of up to
    ``lr / eps`` = 4e5). Its parameters after a step are not a well-conditioned
    function of the gradient; compare its moments after one step instead.
    """
    return 2 * steps * AUTODIFF[dtype]


def assert_tree_close(actual, expected, *, rtol: float) -> None:
    """Every leaf of ``actual`` within ``rtol`` (max-norm relative) of ``expected``."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    names = getattr(type(expected), "_fields", None) or range(len(jax.tree.leaves(expected)))
    for name, a, e in zip(names, jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"{name}: dtype {a.dtype} != {e.dtype}"
        err = max_rel_error(a, e)
        assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.0e}"


def make_problem(
    *,
    K: int,
    H: int,
    C: int | None = None,
    B: int | None = None,
    T: int,
    inputs: str = "ids",
    h0: bool = False,
    dtype="float64",
    weight_scale: float = 2.0,
    V_scale: float = 1.0,
    seed: int = 0,
):
    """``(params, xs, ys, h0)`` for one sequence (``B=None``) or a batch.

    Drawn with numpy (no per-shape JAX compilation): weights uniform in
    ``±weight_scale/sqrt(H)`` (``V`` times ``V_scale`` more) and random biases,
    so that tanh is in its curved range and every term of the gradient matters.
    """
    C = K if C is None else C
    rng = np.random.default_rng(seed)
    bound = weight_scale / np.sqrt(H)

    def arr(x):
        return jnp.asarray(x, dtype)

    params = Params(
        U=arr(rng.uniform(-bound, bound, (H, H))),
        V=arr(V_scale * rng.uniform(-bound, bound, (C, H))),
        W=arr(rng.uniform(-bound, bound, (H, K))),
        b=arr(0.3 * rng.standard_normal(H)),
        c=arr(0.3 * rng.standard_normal(C)),
    )
    steps = (T,) if B is None else (B, T)
    if inputs == "ids":
        xs = jnp.asarray(rng.integers(0, K, steps), jnp.int32)
    else:
        xs = arr(rng.standard_normal((*steps, K)))
    ys = jnp.asarray(rng.integers(0, C, steps), jnp.int32)
    state = None
    if h0:
        state = arr(0.5 * rng.standard_normal((H,) if B is None else (B, H)))
    return params, xs, ys, state


def seed_forward_loop(params, xs, ys=None, h0=None, f=np.tanh):
    """The seed's forward equations, transcribed literally: one sequence, a
    Python loop over t, numpy float64, one-hot x_t as a matrix product, and the
    softmax followed by a log (fine in float64 for logits up to a few hundred).

    Returns ``(hs (T, H), zs (T, C), E)`` (``E`` is None without ``ys``).
    """
    U, V, W, b, c = (np.asarray(p, np.float64) for p in params)
    H, K = W.shape
    h = np.zeros(H) if h0 is None else np.asarray(h0, np.float64)
    xs = np.asarray(xs)
    hs, zs, E = [], [], 0.0
    for t in range(xs.shape[0]):
        if np.issubdtype(xs.dtype, np.integer):
            x_t = np.zeros(K)
            x_t[xs[t]] = 1.0  # one-hot
        else:
            x_t = xs[t].astype(np.float64)
        s_t = U @ h + W @ x_t + b
        h = f(s_t)
        z_t = V @ h + c
        y_hat = np.exp(z_t) / np.sum(np.exp(z_t))
        if ys is not None:
            y_t = np.zeros(V.shape[0])
            y_t[int(ys[t])] = 1.0
            E += -y_t @ np.log(y_hat)
        hs.append(h)
        zs.append(z_t)
    hs = np.array(hs).reshape(-1, H)
    zs = np.array(zs).reshape(-1, V.shape[0])
    return hs, zs, (E if ys is not None else None)


def zeros_like_params(params: Params) -> Params:
    return jax.tree.map(jnp.zeros_like, params)


def with_device_count(devices: int) -> str:
    """The XLA_FLAGS a subprocess needs for ``devices`` simulated CPU devices, keeping
    the flags this process has (the conftest's compile level among them)."""
    import os

    inherited = os.environ.get("XLA_FLAGS", "")
    return f"{inherited} --xla_force_host_platform_device_count={devices}".strip()


def run_on_simulated_devices(script, *, devices: int = 8, timeout: int = 600) -> dict:
    """Runs ``script`` in a fresh Python with ``devices`` simulated CPU devices
    (XLA_FLAGS must be set before JAX is imported, hence the subprocess) and
    returns the JSON object it prints."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=with_device_count(devices))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def slow_except(values, fast, ids=None) -> list:
    """``pytest.param`` of each of ``values``, all but those in ``fast`` marked slow:
    the fast tier (``pytest -m "not slow"``) runs a representative few of a
    parametrised matrix, ``.ci/run`` all of it."""
    import pytest

    values = list(values)
    ids = [str(v) for v in values] if ids is None else list(ids)
    unknown = set(fast) - set(values)
    assert not unknown, f"fast values not among the values: {unknown}"
    return [
        pytest.param(v, id=i, marks=() if v in fast else pytest.mark.slow)
        for v, i in zip(values, ids, strict=True)
    ]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_size=(200, 150)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_size[0] and height >= min_size[1], (path.name, width, height)
    assert data[-8:-4] == b"IEND", f"{path.name} is truncated"
    assert len(data) > 5000, f"{path.name}: {len(data)} bytes, an empty figure?"


def cli_status(argv) -> int:
    """``bptt-jax ARGV``'s exit status, run in this process (argparse's exits included)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_line_error(argv, capsys, match: str) -> str:
    """Runs ``bptt-jax ARGV``, asserts it failed as every error must (status 1, one line on
    stderr naming ``match``, no traceback, not an internal error) and returns that line."""
    status = cli_status(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert match in err, err
    return err
