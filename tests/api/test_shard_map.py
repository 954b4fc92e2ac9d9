"""The public functions under ``jax.shard_map`` with its defaults (``check_vma=True``),
data-parallel over the batch on 4 simulated CPU devices (a subprocess: the device
count must be set before JAX is imported): each equals the same call on one device.

Tolerance: float64, and the only difference from one device is the order of the
additions over the batch (each device's partial sum, then ``psum``): a sum of n
terms reordered moves by at most about n ε Σ|terms|, with n ≤ B·T = 56 here and
Σ|terms| / |sum| far below 1e3 for these random draws, so 1e-10 has a margin of
over 10³ and still catches any wrong term (an O(1) relative error).
"""

import pathlib

import pytest
from helpers import run_on_simulated_devices

# One subprocess compiling about 20 programs: slow tier.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).parent.parent / "scripts" / "shard_map_checks.py"
CHECKS = {
    "seed_bptt": "bptt, the seed's Params, h0 defaulted: psum of E and grads",
    "chunk_with_states": "bptt_chunk with sharded h0 and dh_T: dh0, h_T per sequence",
    "deep_bptt": "bptt, a bidirectional 2-layer DeepParams with lengths",
    "unchecked_bptt": "bptt under shard_map(check_vma=False)",
    "hand_loss_grad": "jax.value_and_grad(hand_loss), replicated params",
    "hand_loss_h0_deep": "jax.grad(hand_loss) wrt DeepParams and a sharded h0, resets",
    "recurrence_grad": "jax.grad of a loss around recurrence, h0 defaulted and given",
    "recurrence_psum": "params cast to varying by the user, per-device grads psummed",
    "recurrence_vs_autodiff": "recurrence's gradient == autodiff's through forward",
    "loss_grad": "jax.grad(loss), dense inputs, reduction='mean'",
}


@pytest.fixture(scope="module")
def results():
    return run_on_simulated_devices(SCRIPT, devices=4, timeout=300)


def test_four_devices_are_simulated(results):
    assert results["devices"] == 4


@pytest.mark.parametrize("name", list(CHECKS))
def test_sharded_call_equals_one_device(results, name):
    err = results[name]
    assert not isinstance(err, str), f"{CHECKS[name]}: failed under shard_map: {err}"
    assert err <= 1e-10, f"{CHECKS[name]}: relative error {err:.3e}"
