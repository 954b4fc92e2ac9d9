"""Data-parallel training through the real path (``train()`` and ``bptt-jax train``)
on 8 simulated CPU devices, in one subprocess: the device count must be set
before JAX is imported (tests/scripts/parallel_train_checks.py)."""

import pathlib

import pytest
from helpers import run_on_simulated_devices

# One subprocess with 8 simulated devices running several trainings and the
# command line: slow tier.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).parent.parent / "scripts" / "parallel_train_checks.py"

# Tolerances on the max relative difference of every leaf of (params, optimizer
# state, h) after 8 Adam or SGD steps, 8 devices against 1. The psum adds the
# devices' partial gradients in another order than one device's reduction, so
# the runs agree to round-off, not bitwise. Measured (2-core AMD EPYC, JAX
# 0.10.2): float64 1.6e-13 (Adam), 3.1e-16 (SGD); float32 9.2e-7 (Adam),
# 1.6e-7 (SGD). A wrong split (a lost shard, a gradient summed twice, a
# mis-carried h) moves the parameters by O(1e-2) or more.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module")
def results():
    return run_on_simulated_devices(SCRIPT, timeout=600)


def test_eight_devices_are_simulated(results):
    assert results["devices"] == 8
    assert results["devices_reported"] == [1, 8]


@pytest.mark.parametrize(
    "dtype, optimizer",
    [("float64", "adam"), ("float64", "sgd"), ("float32", "adam"), ("float32", "sgd")],
    ids=["float64-adam", "float64-sgd", "float32-adam", "float32-sgd"],
)
def test_training_on_8_devices_equals_1_device(results, dtype, optimizer):
    assert results[f"{dtype}_{optimizer}_steps"] == [8, 8]
    assert results[f"{dtype}_{optimizer}_dtypes"] == [dtype]  # really ran in that dtype
    assert results[f"{dtype}_{optimizer}_8_vs_1"] <= TOLERANCE[dtype]
    assert results[f"{dtype}_{optimizer}_verified"] == 2  # --verify-every 4 at steps 0 and 4


def test_the_comparison_is_not_trivial(results):
    # 8 steps move the state far from where 1 step leaves it.
    assert results["8_steps_vs_1_step"] > 1e-2


def test_params_replicated_and_hidden_state_sharded(results):
    assert results["params_replicated_over"] == [8] * 5
    assert results["params_fully_replicated"] is True
    assert results["h_sharded_over"] == 8
    assert results["h_fully_replicated"] is False


@pytest.mark.parametrize("first, then", [(8, 1), (1, 8)], ids=["8_then_1", "1_then_8"])
def test_checkpoint_resumes_on_another_device_count(results, first, then):
    key = f"resume_{first}_on_{then}"
    assert results[f"{key}_step"] == 8 and results[f"{key}_devices"] == then
    assert results[f"{key}_half_vs_uninterrupted"] > 1e-2  # the first half alone is not it
    assert results[f"{key}_vs_uninterrupted"] <= TOLERANCE["float64"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("indivisible", "batch size 12 is not divisible by the 8 devices"),
        ("too_many", "asked for 9 devices but only 8 are visible"),
    ],
    ids=["indivisible_batch", "too_many_devices"],
)
def test_impossible_device_counts_are_clear_errors(results, name, message):
    assert message in results[f"{name}_error"]
    cli = results[f"cli_{name}"]
    assert cli["code"] == 1
    assert message in cli["stderr"] and "Traceback" not in cli["stderr"]


@pytest.mark.parametrize(
    "name, devices", [("cli_default_devices", 8), ("cli_2_devices", 2)], ids=["default", "two"]
)
def test_the_command_trains_on_the_devices_asked_for(results, name, devices):
    cli = results[name]
    assert cli["code"] == 0, cli["stderr"]
    assert f"on {devices} devices; step 2/2" in cli["stdout"]
