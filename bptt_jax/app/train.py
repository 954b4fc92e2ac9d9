"""Training with the hand gradients: the names callers use, from where they live.

- :mod:`bptt_jax.app.config`: :class:`TrainConfig`, :data:`OPTIMIZERS`, :class:`TrainingError`.
- :mod:`bptt_jax.app.step`: the optimizer and the jitted step (:func:`make_train_step`).
- :mod:`bptt_jax.app.evaluate`: validation, baselines, the ``--verify-every`` referee.
- :mod:`bptt_jax.app.checkpoint`: the checkpoint file format.
- :mod:`bptt_jax.app.checkpoint_schema`: the training checkpoint's schema, :func:`load_model`.
- :mod:`bptt_jax.app.loop`: the loop, :func:`train`.
"""

from .checkpoint_schema import Model, config_for_resume, load_model, read_training_checkpoint
from .config import DTYPES, OPTIMIZERS, TrainConfig, TrainingError
from .evaluate import Evaluation, baselines, evaluate, verify_gradients
from .loop import CHECKPOINT_NAME, PLOT_NAME, Result, train
from .state import History, TrainState
from .step import make_optimizer, make_train_step, training_mesh

__all__ = [
    "CHECKPOINT_NAME",
    "DTYPES",
    "OPTIMIZERS",
    "PLOT_NAME",
    "Evaluation",
    "History",
    "Model",
    "Result",
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "baselines",
    "config_for_resume",
    "evaluate",
    "load_model",
    "make_optimizer",
    "make_train_step",
    "read_training_checkpoint",
    "train",
    "training_mesh",
    "verify_gradients",
]
