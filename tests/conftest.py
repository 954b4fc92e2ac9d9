"""Shared fixtures: float64 on demand, both dtypes, strict dtype promotion everywhere."""

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


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    """Runs a test once per dtype. float32 runs with x64 enabled too, so that
    nothing silently upcasts (and strict promotion catches any mix)."""
    with jax.enable_x64(True):
        yield request.param


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    # Every compiled XLA executable keeps memory mappings of its machine code;
    # the whole suite compiles thousands and once passed the kernel's default
    # limit of 65530 mappings (vm.max_map_count), after which XLA crashed with
    # a segfault while compiling. Dropping the caches after each module keeps
    # the count at one module's worth.
    yield
    jax.clear_caches()
