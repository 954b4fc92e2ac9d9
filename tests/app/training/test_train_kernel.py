"""``train --kernel``: the recursions' implementation as a training option (issue 17)."""

import pytest

from bptt_jax.app.training.checkpoint_schema import config_for_resume
from bptt_jax.app.training.config import TrainConfig, TrainingError, check_config
from bptt_jax.app.training.train_step import model_grad_fn, run_kernel, step_grad_fn, training_mesh
from bptt_jax.core.options import Options


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(TrainingError, match="unknown kernel 'triton'; choose one of scan, pallas"):
        check_config(TrainConfig(kernel="triton"))


def test_forced_pallas_beyond_the_kernels_sizes_is_a_training_error():
    with pytest.raises(TrainingError, match=r"train: kernel='pallas' does not support H=200"):
        run_kernel(TrainConfig(hidden_size=200, kernel="pallas"))
    assert run_kernel(TrainConfig(hidden_size=200, kernel="pallas", matmul_dtype="bfloat16")) == (
        "pallas"
    )


def test_auto_trains_with_the_scan_and_pallas_reaches_the_step():
    config = TrainConfig(kernel="auto", batch_size=4, hidden_size=64)
    assert run_kernel(config) == "scan"
    assert step_grad_fn(config, training_mesh(1, 4)) is model_grad_fn(Options(), False)
    fn = step_grad_fn(
        TrainConfig(kernel="pallas", batch_size=4, hidden_size=64), training_mesh(1, 4)
    )
    assert fn is model_grad_fn(Options(kernel="pallas"), False)


def test_checkpoints_without_a_kernel_resume_with_the_scan_and_may_switch():
    saved = TrainConfig().to_json()
    del saved["kernel"]  # written before the option existed
    assert TrainConfig.from_json(saved).kernel == "scan"
    assert config_for_resume(saved, {"kernel": "pallas"}).kernel == "pallas"
