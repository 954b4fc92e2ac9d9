"""bptt_jax: backpropagation through time derived by hand, under ``jax.lax.scan``.

The seed's vanilla RNN

    s_t = U h_{t-1} + W x_t + b,  h_t = tanh(s_t),  z_t = V h_t + c,
    ŷ_t = softmax(z_t),           E = Σ_t −y_tᵀ log ŷ_t

with its gradients ∂E/∂U, V, W, b, c written out by hand (:func:`bptt`) and
refereed by autodiff (:func:`autodiff_bptt`) and finite differences
(:func:`finite_difference_bptt`).
"""

from ._activations import ACTIVATIONS
from ._bptt import bptt as bptt
from ._bptt import bptt_chunk as bptt_chunk
from ._clipping import CLIPPERS
from ._clipping import make_clipper as make_clipper
from ._diagnostics import GradientFlow as GradientFlow
from ._diagnostics import gradient_flow as gradient_flow
from ._diagnostics import spectral_sweep as spectral_sweep
from ._init import INITS
from ._losses import softmax_cross_entropy_grad as softmax_cross_entropy_grad
from ._params import DeepParams as DeepParams
from ._params import Layer as Layer
from ._params import Params as Params
from ._params import init_params as init_params
from ._per_loss import bptt_per_loss as bptt_per_loss
from ._per_loss import per_loss_deltas as per_loss_deltas
from ._reference import autodiff_bptt as autodiff_bptt
from ._reference import autodiff_bptt_per_loss as autodiff_bptt_per_loss
from ._reference import autodiff_dh0 as autodiff_dh0
from ._reference import finite_difference_bptt as finite_difference_bptt
from ._rnn import forward as forward
from ._rnn import loss as loss
from ._tasks import delay_task as delay_task
from ._tasks import train_delay as train_delay
from ._torch import from_torch as from_torch
from ._torch import to_torch as to_torch

__version__ = "0.1.0"

#: The names accepted by every ``activation=`` argument.
activations = tuple(ACTIVATIONS)
#: The names accepted by ``init_params(init=...)``.
inits = INITS
#: The names accepted by :func:`make_clipper` (per-step δ clipping is ``bptt(clip_delta=)``).
clippers = CLIPPERS

__all__ = (
    "DeepParams",
    "GradientFlow",
    "Layer",
    "Params",
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
    "init_params",
    "inits",
    "loss",
    "make_clipper",
    "per_loss_deltas",
    "softmax_cross_entropy_grad",
    "spectral_sweep",
    "to_torch",
    "train_delay",
)
