"""Shared fixtures: float64 on demand, both dtypes, strict dtype promotion everywhere."""

import gc
import importlib.metadata
import os

# The suite is bound by XLA's compile time, not by arithmetic: on the CPU,
# LLVM's optimisation passes are most of each compilation and buy nothing for
# test-sized arrays, so the tests compile at -O0 (measured 20-25 % faster on the
# deep-RNN matrix). Results differ from -O2 by round-off at most: every
# tolerance is unchanged. Only when the CPU is the platform, and only when the
# user has not set XLA_FLAGS. Subprocesses that tests start inherit it. XLA's
# CPU backend also compiles faster with its MLIR fusion emitters turned off: three
# deep models' hand backwards and referees compiled in 3.2 s against 5.3 s (medians
# of 4 processes, 2-core machine, JAX 0.10.2).
# That flag is set only for the jaxlib it was measured with: XLA aborts on a flag it
# does not know, and a later release may drop it.
if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    if importlib.metadata.version("jaxlib").startswith("0.10."):
        os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

# Every comparison of the suite is made at matmul precision "highest" (issue 16): on a
# GPU float32 products otherwise run in TF32 (about 1e-3 relative each), which the
# float32 tolerance of 1e-4 is not meant for. The referees and the comparisons pass
# precision="highest" themselves (helpers.py); this sets it for everything else that
# leaves precision=None (JAX's default) -- the hand paths under test, in this process
# and (by the environment) in the subprocesses that tests start. On the CPU it changes
# nothing: every precision is full float32 there. Tests of the precision policy pass
# their precision explicitly (tests/api/test_precision.py).
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"

import jax  # after XLA_FLAGS: the backend reads it when it starts
import pytest

jax.config.update("jax_default_matmul_precision", "highest")  # if jax was imported earlier


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


# float32 doubles every compilation of a test: its run is the slow tier's (the
# fast tier still runs float32 through test_fast_paths, the float32 gradient
# flow, training and bench, whose defaults are float32).
@pytest.fixture(params=["float64", pytest.param("float32", marks=pytest.mark.slow)])
def dtype(request):
    """Runs a test once per dtype. float32 runs with x64 enabled too, so that
    nothing silently upcasts (and strict promotion catches any mix)."""
    with jax.enable_x64(True):
        yield request.param


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return f.read().count(b"\n")
    except OSError:  # not Linux: no such limit to watch
        return 0


def _max_memory_mappings() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


# Half the kernel's limit, checked after every test: one test adds a few
# hundred mappings (test_deep's 77 tests about 18 000 in all), so no test can
# take the count from below this to the limit.
_MAPPINGS_HIGH_WATER = _max_memory_mappings() // 2


@pytest.fixture(autouse=True)
def _free_compiled_code():
    # Every compiled XLA executable keeps memory mappings of its machine code
    # (about 70 each); the whole suite compiles thousands and once passed the
    # kernel's limit of 65530 mappings (vm.max_map_count), after which XLA
    # crashed with a segfault while compiling. Dropping JAX's caches after every
    # module kept the count down but threw away compilations that the next
    # modules would reuse (same shapes on purpose: test_cli_train and
    # test_train, test_diagnostics, test_plots and test_tasks); so drop them
    # only once the count passes half the limit (a few ms to read, per test).
    yield
    if _memory_mappings() > _MAPPINGS_HIGH_WATER:
        jax.clear_caches()
        gc.collect()
