"""Backend-aware defaults (issue 16): ``chunk``, ``unroll`` and recompute chunking per backend.

The api reads ``jax.default_backend()`` when a call is traced and takes that backend's
row of ``bptt_jax.core.schedule.SCHEDULES``; the core only reads the table. Here the
backend is replaced (monkeypatch) to see the GPU row chosen; the jaxpr shows what
reached ``lax.scan`` (no compilation).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

import bptt_jax
from bptt_jax.api import options
from bptt_jax.core.schedule import SCHEDULES, default_chunk, schedule

K, H, B, T = 5, 4, 2, 64


def scan_params(fn, *args) -> list[tuple[int, int]]:
    """``(length, unroll)`` of every ``scan`` in the jaxpr of ``fn(*args)``, nested too."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.append((eqn.params["length"], eqn.params["unroll"]))
            for v in eqn.params.values():
                for sub in v if isinstance(v, tuple | list) else (v,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.fixture
def problem():
    params = bptt_jax.init_params(jax.random.key(0), K, H)
    return params, jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), jnp.int32)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_bptt_takes_the_row_of_the_backend_it_runs_on(backend, problem, monkeypatch):
    monkeypatch.setattr(options.jax, "default_backend", lambda: backend)
    s = SCHEDULES[backend]
    chunk = default_chunk(T, B, False, backend)
    scans = scan_params(functools.partial(bptt_jax.bptt, precision="highest"), *problem)
    # the forward h recursion over all T steps, the backward over T/chunk chunks of
    # chunk steps each: every one with the backend's unroll
    assert (T, s.unroll) in scans
    assert (chunk, s.unroll) in scans and (T // chunk, 1) in scans
    assert {u for length, u in scans if length in (T, chunk)} == {s.unroll}


def test_explicit_options_win_over_the_backend_defaults(problem, monkeypatch):
    monkeypatch.setattr(options.jax, "default_backend", lambda: "gpu")
    scans = scan_params(functools.partial(bptt_jax.bptt, chunk=4, unroll=2), *problem)
    assert (T, 2) in scans and (4, 2) in scans and (T // 4, 1) in scans


def test_the_gpu_row_takes_larger_chunks_and_unrolls():
    cpu, gpu = SCHEDULES["cpu"], SCHEDULES["gpu"]
    assert gpu.chunk_rows > cpu.chunk_rows and gpu.unroll > cpu.unroll
    # at most a quarter of the steps on either (the (T, B, C) memory bound) ...
    assert default_chunk(1024, 32, False, "gpu") == 128  # 4096 rows / 32
    assert default_chunk(1024, 32, False, "cpu") == 16  # 512 rows / 32
    assert default_chunk(64, 32, False, "gpu") == default_chunk(64, 32, False, "cpu") == 16
    # ... and a backend not measured (TPU) takes the GPU row
    assert schedule("tpu") == gpu


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_recompute_chunks_stay_near_the_square_root(backend):
    factor = SCHEDULES[backend].recompute_factor
    for steps in (1, 7, 100, 1024):
        chunk = default_chunk(steps, 8, True, backend)
        root = -(-(steps**0.5) // 1)
        assert 1 <= chunk <= max(factor * root, 1) and chunk <= steps
