"""Shared fixtures: float64 on demand, strict dtype promotion everywhere."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_dtype_promotion():
    # Any silent float32 <-> float64 mix in the library fails the test.
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Enables float64 for one test (never flips the global config)."""
    with jax.enable_x64(True):
        yield
