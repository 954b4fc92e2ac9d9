r"""The model of a run: the seed's :class:`Params` or a :class:`DeepParams`, by its configuration.

``--num-layers 1`` without ``--bidirectional`` is the seed's vanilla RNN (``--cell
rnn``; ``--cell lstm`` and ``--cell gru`` replace the recursion by the gated cell's,
:mod:`bptt_jax.core.lstm`, :mod:`bptt_jax.core.gru`, whose state is ``(h, c)`` and ``h``),

.. math::

    s_t = U h_{t-1} + W x_t + b,\quad h_t = f(s_t),\quad z_t = V h_t + c;

``--num-layers L > 1`` or ``--bidirectional`` is a :class:`DeepParams` (seed §2.4):
layer :math:`\ell` reads layer :math:`\ell - 1`'s states,
:math:`s_t^\ell = U^\ell h_{t-1}^\ell + W^\ell h_t^{\ell-1} + b^\ell`, and, when
bidirectional, a twin reads the text right to left; the output reads the top layer,
:math:`z_t = V [h_t^{L,\rightarrow}; h_t^{L,\leftarrow}] + c`. This module names and
shapes the model's arrays and its carried state (in checkpoints), initialises it and
runs it forward (for ``sample``, ``tag`` and evaluation), the same way for both kinds
and every cell: a state is a pytree (``jax.tree.map`` over it, never a branch on the
cell).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ...api.init import init_params
from ...core.deep import deep_forward_core
from ...core.options import Options
from ...core.params import DeepParams, Params, to_deep
from .config import TrainConfig, is_deep, model_cell

# --------------------------------------------------------------------------- the model's arrays


def _name(path) -> str:
    """An array's name in a checkpoint: its path in the model's pytree, ``params/U`` or
    ``params/layers/0/W`` (field names and indices joined by ``/``)."""
    return "/".join(["params", *(str(getattr(k, "name", getattr(k, "idx", k))) for k in path)])


def state_names(config: TrainConfig) -> tuple[str, ...]:
    """The carried state's arrays in a checkpoint, one per part of the cell's state:
    ``("h",)``, or ``("h", "c")`` for the LSTM."""
    return tuple(model_cell(config).state_parts)


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
    """Each part of the carried state: ``(B, H)``, or ``(L*D, B, H)`` for a deep model."""
    B, H = config.batch_size, config.hidden_size
    if not is_deep(config):
        return (B, H)
    return (config.num_layers * (2 if config.bidirectional else 1), B, H)


def state_arrays(config: TrainConfig, state) -> dict[str, np.ndarray]:
    """The carried state (a pytree of host arrays) named as :func:`state_names` says."""
    return dict(zip(state_names(config), map(np.asarray, jax.tree.leaves(state)), strict=True))


def state_from_arrays(config: TrainConfig, arrays: dict):
    """The carried state of ``config``'s cell from arrays named as :func:`state_names` says."""
    treedef = jax.tree.structure(zero_state(config, 1))
    return jax.tree.unflatten(treedef, [arrays[name] for name in state_names(config)])


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
        cell=config.cell, forget_bias=config.forget_bias,
    )  # fmt: skip


def zero_state(config: TrainConfig, rows: int):
    """Host zeros shaped like the carried state of ``rows`` streams (each part
    :func:`state_shape`): an array, or the LSTM's pair ``(h, c)``."""
    shape = state_shape(config)
    parts = jax.tree.structure(model_cell(config).zero_state((), np.float32))
    shape = (*shape[:-2], rows, shape[-1])
    zeros = [np.zeros(shape, config.dtype) for _ in range(parts.num_leaves)]
    return jax.tree.unflatten(parts, zeros)


def zeros_like_state(cell, params: DeepParams, rows: int):
    """The zero state ``(L*D, rows, H)`` (each part) of ``cell`` for ``params``; traceable."""
    H = params.layers[0].U.shape[1]
    return cell.zero_state((params.num_layers * params.num_directions, rows, H), params.V.dtype)


def logits_core(params: Params | DeepParams, xs: jax.Array, cell, mask=None) -> jax.Array:
    """``z (B, T, C)`` of ``xs (B, T)`` ids, every row from a zero state (zeros at padding);
    ``cell``: the model's (:func:`~bptt_jax.app.training.config.model_cell`)."""
    deep = to_deep(params)
    h0 = zeros_like_state(cell, deep, xs.shape[0])
    return deep_forward_core(deep, xs, h0, mask, options=Options(cell=cell))[1]
