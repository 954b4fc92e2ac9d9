r"""The model of a run: the seed's :class:`Params` or a :class:`DeepParams`, by its configuration.

``--num-layers 1`` without ``--bidirectional`` is the seed's vanilla RNN,

.. math::

    s_t = U h_{t-1} + W x_t + b,\quad h_t = f(s_t),\quad z_t = V h_t + c;

``--num-layers L > 1`` or ``--bidirectional`` is a :class:`DeepParams` (seed §2.4):
layer :math:`\ell` reads layer :math:`\ell - 1`'s states,
:math:`s_t^\ell = U^\ell h_{t-1}^\ell + W^\ell h_t^{\ell-1} + b^\ell`, and, when
bidirectional, a twin reads the text right to left; the output reads the top layer,
:math:`z_t = V [h_t^{L,\rightarrow}; h_t^{L,\leftarrow}] + c`. This module names and
shapes the model's arrays (in checkpoints), initialises it and runs it forward (for
``sample``, ``tag`` and evaluation), the same way for both kinds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ...core.cell import RNNCell
from ...core.deep import deep_forward_core
from ...core.options import Options
from ...core.params import DeepParams, Params, init_params, to_deep
from .config import TrainConfig, is_deep

# --------------------------------------------------------------------------- the model's arrays


def _name(path) -> str:
    """An array's name in a checkpoint: its path in the model's pytree, ``params/U`` or
    ``params/layers/0/W`` (field names and indices joined by ``/``)."""
    return "/".join(["params", *(str(getattr(k, "name", getattr(k, "idx", k))) for k in path)])


def _structure(config: TrainConfig, K: int, C: int):
    """The model of ``config`` as shapes only (``jax.eval_shape``: nothing is drawn)."""
    shape_only = dataclasses.replace(config, dtype="float32")  # the layout, whatever the dtype
    return jax.eval_shape(lambda: init_model(shape_only, jax.random.key(0), K, C))


def param_shapes(config: TrainConfig, K: int, H: int, C: int) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter array of ``config``'s model (``H`` is the
    configuration's).

    The seed's model: ``params/U (H, H)``, ``params/V (C, H)``, ``params/W (H, K)``,
    ``params/b (H,)``, ``params/c (C,)``. A deep one (L layers, D directions):
    ``params/layers/l/U (H, H)``, ``.../W (H, K)`` for l = 0 and ``(H, D*H)`` above,
    ``.../b (H,)``, the same under ``params/reverse_layers/l`` when bidirectional,
    ``params/V (C, D*H)`` and ``params/c (C,)``: the names are the pytree's paths.
    """
    leaves = jax.tree_util.tree_flatten_with_path(_structure(config, K, C))[0]
    return {_name(path): tuple(leaf.shape) for path, leaf in leaves}


def state_shape(config: TrainConfig) -> tuple[int, ...]:
    """The carried state ``h``: ``(B, H)``, or ``(L*D, B, H)`` for a deep model."""
    B, H = config.batch_size, config.hidden_size
    if not is_deep(config):
        return (B, H)
    return (config.num_layers * (2 if config.bidirectional else 1), B, H)


def param_arrays(params: Params | DeepParams) -> dict[str, np.ndarray]:
    """The parameters as host arrays named as :func:`param_shapes` says."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_name(path): np.asarray(leaf) for path, leaf in leaves}


def params_from_arrays(config: TrainConfig, arrays: dict) -> Params | DeepParams:
    """The model of ``config`` from arrays named as :func:`param_shapes` says (checked)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(_structure(config, 1, 1))
    leaves = [jnp.asarray(arrays[_name(path)]) for path, _ in paths]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def init_model(config: TrainConfig, key: jax.Array, K: int, C: int) -> Params | DeepParams:
    """The freshly initialised model of ``config`` for ``K`` inputs and ``C`` classes."""
    return init_params(
        key, K, config.hidden_size, num_classes=C, num_layers=config.num_layers,
        bidirectional=bool(config.bidirectional), dtype=jnp.dtype(config.dtype),
    )  # fmt: skip


def zero_state(config: TrainConfig, rows: int) -> np.ndarray:
    """Zeros shaped like the carried state of ``rows`` streams (:func:`state_shape`)."""
    shape = state_shape(config)
    return np.zeros((*shape[:-2], rows, shape[-1]), config.dtype)


def logits_core(params: Params | DeepParams, xs: jax.Array, activation: str = "tanh",
                mask: jax.Array | None = None) -> jax.Array:  # fmt: skip
    """``z (B, T, C)`` of ``xs (B, T)`` ids, every row from a zero state (zeros at padding)."""
    deep = to_deep(params)
    H = deep.layers[0].U.shape[0]
    h0 = jnp.zeros((len(deep.layers) * deep.num_directions, xs.shape[0], H), deep.V.dtype)
    return deep_forward_core(deep, xs, h0, mask, options=Options(cell=RNNCell(activation)))[1]
