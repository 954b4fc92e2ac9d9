"""bptt_jax: backpropagation through time derived by hand, under ``jax.lax.scan``.

The seed's vanilla RNN

    s_t = U h_{t-1} + W x_t + b,  h_t = tanh(s_t),  z_t = V h_t + c,
    ŷ_t = softmax(z_t),           E = Σ_t −y_tᵀ log ŷ_t

with its gradients ∂E/∂U, V, W, b, c written out by hand (:func:`bptt`) and
refereed by autodiff (:func:`autodiff_bptt`) and finite differences
(:func:`finite_difference_bptt`). A model trained by ``bptt-jax train`` is
:func:`load`-ed as a :class:`TrainedModel` (sample, tag, score).
"""

import importlib.metadata

from . import _cli_signals  # noqa: F401 (first: the command line's signals, before JAX)
from .api.gradients import bptt as bptt
from .api.gradients import bptt_chunk as bptt_chunk
from .api.gradients import bptt_per_loss as bptt_per_loss
from .api.gradients import per_loss_deltas as per_loss_deltas
from .api.init import init_params as init_params
from .api.interop import from_torch as from_torch
from .api.interop import to_torch as to_torch
from .api.lab import delay_task as delay_task
from .api.lab import gradient_flow as gradient_flow
from .api.lab import spectral_sweep as spectral_sweep
from .api.lab import train_delay as train_delay
from .api.model import forward as forward
from .api.model import loss as loss
from .api.recurrence import hand_loss as hand_loss
from .api.recurrence import recurrence as recurrence
from .api.referees import autodiff_bptt as autodiff_bptt
from .api.referees import autodiff_bptt_per_loss as autodiff_bptt_per_loss
from .api.referees import autodiff_dh0 as autodiff_dh0
from .api.referees import finite_difference_bptt as finite_difference_bptt
from .app.inference.trained import CheckpointError as CheckpointError
from .app.inference.trained import Report as Report
from .app.inference.trained import TrainedModel as TrainedModel
from .app.inference.trained import load as load
from .core.activations import ACTIVATIONS
from .core.checks import MATMUL_DTYPES
from .core.clipping import CLIPPERS
from .core.clipping import make_clipper as make_clipper
from .core.init import INITS
from .core.losses import softmax_cross_entropy_grad as softmax_cross_entropy_grad
from .core.params import DeepParams as DeepParams
from .core.params import Layer as Layer
from .core.params import Params as Params
from .lab.diagnostics import GradientFlow as GradientFlow

#: The installed version, read from the package metadata (set in pyproject.toml only).
__version__ = importlib.metadata.version("bptt_jax")

#: The names accepted by every ``activation=`` argument.
activations = tuple(ACTIVATIONS)
#: The names accepted by ``init_params(init=...)``.
inits = INITS
#: The names accepted by :func:`make_clipper` (per-step δ clipping is ``bptt(clip_delta=)``).
clippers = CLIPPERS
#: What ``bptt(matmul_dtype=...)`` accepts besides ``None``.
matmul_dtypes = MATMUL_DTYPES

__all__ = (
    "CheckpointError",
    "DeepParams",
    "GradientFlow",
    "Layer",
    "Params",
    "Report",
    "TrainedModel",
    "activations",
    "autodiff_bptt",
    "autodiff_bptt_per_loss",
    "autodiff_dh0",
    "bptt",
    "bptt_chunk",
    "bptt_per_loss",
    "clippers",
    "delay_task",
    "finite_difference_bptt",
    "forward",
    "from_torch",
    "gradient_flow",
    "hand_loss",
    "init_params",
    "inits",
    "load",
    "loss",
    "make_clipper",
    "matmul_dtypes",
    "per_loss_deltas",
    "recurrence",
    "softmax_cross_entropy_grad",
    "spectral_sweep",
    "to_torch",
    "train_delay",
)
