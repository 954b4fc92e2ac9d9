"""Shared fixtures: float64 on demand, strict dtype promotion everywhere."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_dtype_promotion():
    # Any silent float32 <-> float64 mix in the library fails the test.
    with jax.numpy_dtype_promotion("strict"):
        yield


#: Backends without float64: the float64 tests are skipped there, with this reason.
NO_FLOAT64 = {"tpu": "needs float64, which the TPU backend does not provide"}


@pytest.fixture
def x64():
    """Enables float64 for one test (never flips the global config).

    Skips the test, saying why, on a backend without float64; on a GPU
    float64 runs (slowly), so the float64 referees hold there too.
    """
    reason = NO_FLOAT64.get(jax.default_backend())
    if reason:
        pytest.skip(reason)
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    # Every compiled XLA executable keeps memory mappings of its machine code;
    # the whole suite compiles thousands and once passed the kernel's default
    # limit of 65530 mappings (vm.max_map_count), after which XLA crashed with
    # a segfault while compiling. Dropping the caches after each module keeps
    # the count at one module's worth.
    yield
    jax.clear_caches()
