"""Data-parallel training through the real path (``train()`` and ``bptt-jax train``)
on 8 simulated CPU devices, in one subprocess: the device count must be set
before JAX is imported (tests/scripts/parallel_train_checks.py)."""

import pathlib

import pytest
from helpers import linear_training_bound, run_on_simulated_devices

from bptt_jax.referees.tolerances import AUTODIFF

# One subprocess with 8 simulated devices running several trainings and the
# command line: slow tier.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).parents[2] / "scripts" / "parallel_train_checks.py"
STEPS = 8  # of each compared run (the script's STEPS)

# What is compared, and the bound (helpers.linear_training_bound argues it): the
# runs compute each step's gradient in another order (8 partial sums joined by a
# psum against one reduction), so they agree to round-off, not bitwise. After N
# SGD or momentum steps, linear in the gradients, every leaf is within 2 N r of the
# other run (r = AUTODIFF[dtype] of bptt_jax.referees.tolerances). Adam is not
# compared after several steps: it divides each entry by about |g|, so an entry
# whose gradient is round-off moves by O(lr) either way (on another CPU the old
# comparison after 8 Adam steps reached 2.5e-5 in float32, for a measured 9.2e-7
# here). Adam takes one step, and what precedes its normalisation is compared:
# the moments m = (1 - b1) g (<= 2r with the clip) and v = (1 - b2) g^2
# (<= 4r + 4r^2), and h (a forward of the same parameters, <= r).
#
# A wrong split moves these far beyond the bounds: a lost shard changes the
# gradient, and so b's displacement (b starts at 0), by 1/8 of itself; a gradient
# summed twice by all of it; 8 steps against 1 differ by > 1e-2
# (test_the_comparison_is_not_trivial).
DTYPES = ("float64", "float32")
LINEAR_BOUND = {dtype: linear_training_bound(dtype, STEPS) for dtype in DTYPES}
ADAM_ONE_STEP_BOUND = {dtype: 4 * AUTODIFF[dtype] * (1 + AUTODIFF[dtype]) for dtype in DTYPES}


@pytest.fixture(scope="module")
def results():
    return run_on_simulated_devices(SCRIPT, timeout=600)


def test_eight_devices_are_simulated(results):
    assert results["devices"] == 8
    assert results["devices_reported"] == [1, 8]


@pytest.mark.parametrize(
    "dtype, optimizer",
    [("float64", "sgd"), ("float64", "momentum"), ("float32", "sgd"), ("float32", "momentum")],
    ids=["float64-sgd", "float64-momentum", "float32-sgd", "float32-momentum"],
)
def test_training_on_8_devices_equals_1_device(results, dtype, optimizer):
    assert results[f"{dtype}_{optimizer}_steps"] == [STEPS, STEPS]
    assert results[f"{dtype}_{optimizer}_dtypes"] == [dtype]  # really ran in that dtype
    for part, error in results[f"{dtype}_{optimizer}_8_vs_1"].items():
        assert error <= LINEAR_BOUND[dtype], f"{part}: {error:.2e} > {LINEAR_BOUND[dtype]:.1e}"
    assert results[f"{dtype}_{optimizer}_verified"] == 2  # --verify-every 4 at steps 0 and 4


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adams_first_step_on_8_devices_equals_1_device(results, dtype):
    assert results[f"{dtype}_adam_steps"] == [1, 1]
    assert results[f"{dtype}_adam_moments_nonzero"]
    errors = results[f"{dtype}_adam_8_vs_1"]
    bound = ADAM_ONE_STEP_BOUND[dtype]
    for part in ("opt_state", "h"):  # not the parameters: see the bound's argument
        assert errors[part] <= bound, f"{part}: {errors[part]:.2e} > {bound:.1e}"


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
    assert results[f"{key}_vs_uninterrupted"] <= LINEAR_BOUND["float64"]


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
