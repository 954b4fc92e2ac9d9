"""Data-parallel hand BPTT on 8 simulated CPU devices (run in a subprocess:
the device count must be set before JAX is imported)."""

import pathlib

import pytest
from helpers import run_on_simulated_devices

# One subprocess with 8 simulated devices, compiling every check anew: slow tier.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).parents[2] / "scripts" / "parallel_checks.py"


@pytest.fixture(scope="module")
def results():
    return run_on_simulated_devices(SCRIPT, timeout=300)


def test_eight_devices_are_simulated(results):
    assert results["devices"] == 8


@pytest.mark.parametrize(
    "key", ["E_vs_single", "grads_vs_single", "grads_vs_jax_grad", "h_T_vs_single"]
)
def test_data_parallel_gradient_equals_single_device_and_jax_grad(results, key):
    assert results[key] <= 1e-10


def test_gradients_come_back_replicated_and_states_sharded(results):
    assert results["grads_replicated"] is True
    assert results["h_T_sharded_over"] == 8


def test_training_steps_on_8_devices_equal_1_device(results):
    assert results["params_after_5_steps"] <= 1e-12


def test_indivisible_batch_and_too_many_devices_are_clear_errors(results):
    assert "batch size 12 is not divisible by the 8 devices" in results["indivisible_error"]
    assert "asked for 9 devices but only 8 are visible" in results["too_many_devices_error"]
