r"""PyTorch interop: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` + ``nn.Linear`` state dicts <->
bptt_jax parameters.

PyTorch's ``nn.RNN`` computes, per layer ``k`` and direction,

.. math::

    h_t = f(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

which is the seed's :math:`s_t = U h_{t-1} + W x_t + b` with
:math:`U = W_{hh}`, :math:`W = W_{ih}`, :math:`b = b_{ih} + b_{hh}`; the
``nn.Linear`` head is :math:`z_t = V h_t + c`. Layer ``k > 0`` reads the layer
below, both directions concatenated (forward first), as :class:`DeepParams`
does. The activation (``nonlinearity``) is not part of a state dict: pass the
same ``activation=`` to :func:`bptt_jax.bptt` and friends.

``nn.LSTM`` and ``nn.GRU`` (``docs/math.md`` §10, §11) stack their gates' rows:
``weight_hh`` is ``(4H, H)`` (i, f, g, o) or ``(3H, H)`` (r, z, n), so the cell
follows from the shapes. The LSTM's two biases only add (:math:`b = b_{ih} +
b_{hh}`); the GRU's add in the r and z blocks, while :math:`b_{hn}` sits inside
:math:`r \odot (\cdot)`: its ``b`` is ``[b_r; b_z; b_in; b_hn]``, ``(4H,)``.

Neither function imports torch to read a state dict; values may be tensors
(``.detach().cpu().numpy()`` is called on them) or numpy arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.cells import bias_size, cell_name_of_shape
from ..core.checks import check_float_dtype
from ..core.params import DeepParams, Layer, Params, from_deep, to_deep
from .validate import check_model

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must hold floating point values, got dtype {array.dtype}")
    return array


def _read_cells(
    rnn_state_dict: Mapping[str, Any],
) -> tuple[dict[tuple[int, int], dict[str, np.ndarray]], int, int]:
    """``(cells, L, D)``: the state dict's arrays by (layer, direction) and kind."""
    cells: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for key, value in dict(rnn_state_dict).items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(
                f"unexpected key {key!r} in the nn.RNN state dict; expected weight_ih_l{{k}}, "
                "weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} (optionally with _reverse)"
            )
        kind, layer, reverse = match.groups()
        cells.setdefault((int(layer), int(bool(reverse))), {})[kind] = _to_numpy(value, key)
    if not cells:
        raise ValueError("the nn.RNN state dict is empty")
    L = 1 + max(layer for layer, _ in cells)
    D = 2 if any(d == 1 for _, d in cells) else 1
    for l in range(L):
        for d in range(D):
            suffix = f"_l{l}{'_reverse' if d else ''}"
            found = cells.get((l, d), {})
            for kind in ("weight_ih", "weight_hh"):
                if kind not in found:
                    raise ValueError(f"the nn.RNN state dict lacks {kind}{suffix}")
    return cells, L, D


def _cell(W_hh: np.ndarray) -> str:
    """The cell a ``weight_hh_l0`` of shape ``(G·H, H)`` says, or a one-line ValueError."""
    cell = cell_name_of_shape(*W_hh.shape) if W_hh.ndim == 2 else None
    if cell is None:
        raise ValueError(
            f"weight_hh_l0 has shape {W_hh.shape}, which fits no cell: expected (H, H) for "
            "nn.RNN, (4H, H) for nn.LSTM or (3H, H) for nn.GRU"
        )
    return cell


def _bias(found: dict[str, np.ndarray], suffix: str, cell: str, H: int, dtype) -> np.ndarray:
    """``b`` from PyTorch's two biases: their sum, and the GRU's ``b_hn`` kept apart."""
    rows = bias_size(cell, H) if cell != "gru" else 3 * H
    parts = {kind: np.zeros(rows, dtype) for kind in ("bias_ih", "bias_hh")}
    for kind in parts:
        if kind in found:
            if found[kind].shape != (rows,):
                raise ValueError(
                    f"{kind}{suffix} has shape {found[kind].shape}, expected ({rows},)"
                )
            parts[kind] = found[kind]
    b_ih, b_hh = parts["bias_ih"], parts["bias_hh"]
    if cell != "gru":
        return b_ih + b_hh
    return np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])


def _layer(found: dict[str, np.ndarray], suffix: str, l: int, H: int, D: int, dtype: Any,
           cell: str) -> Layer:  # fmt: skip
    """One layer-direction of ``nn.RNN``/``LSTM``/``GRU`` as a :class:`Layer`."""
    W_hh, W_ih = found["weight_hh"], found["weight_ih"]
    G = W_hh.shape[0] // H if W_hh.ndim == 2 and H else 1
    rows = {"rnn": H, "lstm": 4 * H, "gru": 3 * H}[cell]
    if W_hh.shape != (rows, H) or rows != G * H:
        raise ValueError(f"weight_hh{suffix} has shape {W_hh.shape}, expected ({rows}, {H})"
                         f" as weight_hh_l0 (the {cell} cell)")  # fmt: skip
    D_in = W_ih.shape[1] if l == 0 else D * H
    if W_ih.shape != (rows, D_in):
        raise ValueError(f"weight_ih{suffix} has shape {W_ih.shape}, expected ({rows}, {D_in})")
    b = _bias(found, suffix, cell, H, dtype)
    return Layer(U=jnp.asarray(W_hh, dtype), W=jnp.asarray(W_ih, dtype), b=jnp.asarray(b, dtype))


def from_torch(
    rnn_state_dict: Mapping[str, Any],
    head_state_dict: Mapping[str, Any],
    *,
    dtype: jnp.dtype | str | None = None,
) -> Params | DeepParams:
    """Parameters from a PyTorch ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` and its ``nn.Linear``
    output head; the cell follows from ``weight_hh_l0``'s shape (H, 4H or 3H rows).

    Args:
      rnn_state_dict: ``nn.RNN(...).state_dict()`` (any ``num_layers``,
        ``bidirectional``, ``nonlinearity``, with or without biases), or an
        ``nn.LSTM``'s / ``nn.GRU``'s (without ``proj_size``): keys
        ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
        ``bias_hh_l{k}`` and their ``_reverse`` twins.
      head_state_dict: ``nn.Linear(D*H, C).state_dict()``: ``weight``
        ``(C, D*H)`` and optionally ``bias`` ``(C,)``.
      dtype: the parameters' dtype (float64 needs x64 enabled: without it, a
        ValueError); by default that of the weights, as JAX gives it (float32 for
        float64 weights while x64 is off).

    Returns:
      The seed's :class:`Params` for one layer in one direction, else a
      :class:`DeepParams`.
    """
    cells, L, D = _read_cells(rnn_state_dict)
    cell = _cell(cells[(0, 0)]["weight_hh"])
    H = cells[(0, 0)]["weight_hh"].shape[1]
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(cells[(0, 0)]["weight_hh"].dtype)
    dtype = check_float_dtype(dtype)
    layers = [[None] * D for _ in range(L)]
    for (l, d), found in cells.items():
        layers[l][d] = _layer(found, f"_l{l}{'_reverse' if d else ''}", l, H, D, dtype, cell)
    head = dict(head_state_dict)
    if "weight" not in head:
        raise ValueError("the nn.Linear head state dict lacks 'weight'")
    V = _to_numpy(head["weight"], "weight")
    if V.ndim != 2 or V.shape[1] != D * H:
        raise ValueError(f"head weight has shape {V.shape}, expected (C, {D * H})")
    c = _to_numpy(head["bias"], "bias") if "bias" in head else np.zeros(V.shape[0], dtype)
    if c.shape != (V.shape[0],):
        raise ValueError(f"head bias has shape {c.shape}, expected ({V.shape[0]},)")
    deep = DeepParams(
        layers=tuple(cell[0] for cell in layers),
        reverse_layers=tuple(cell[1] for cell in layers) if D == 2 else (),
        V=jnp.asarray(V, dtype),
        c=jnp.asarray(c, dtype),
    )
    return from_deep(deep) if L == 1 and D == 1 else deep


def to_torch(
    params: Params | DeepParams, *, as_numpy: bool = False, gradient: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(rnn_state_dict, head_state_dict)`` for ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (the
    cell the shapes say) and ``nn.Linear``.

    PyTorch's two biases become ``bias_ih = b`` and ``bias_hh = 0`` (the GRU's:
    ``bias_ih = [b_r; b_z; b_in]``, ``bias_hh = [0; 0; b_hn]``). Load them with
    ``rnn.load_state_dict(rnn_sd)`` and ``head.load_state_dict(head_sd)`` into
    ``nn.RNN(K, H, num_layers=L, bidirectional=..., nonlinearity=...,
    batch_first=True)`` (or ``nn.LSTM``/``nn.GRU`` alike) and ``nn.Linear(D*H, C)``.

    Args:
      params: :class:`Params` or :class:`DeepParams`, or their gradients (see
        ``gradient``).
      gradient: ``params`` is a gradient pytree (:func:`bptt_jax.bptt`'s): every
        value is then PyTorch's ``.grad`` of that tensor, ``bias_hh`` included
        (where the two biases only add, both receive ``∂E/∂b``; the GRU's n block of
        ``bias_hh`` is ``∂E/∂b_hn`` and its ``bias_ih`` n block ``∂E/∂b_in``).
      as_numpy: ``False`` (the default): every value a ``torch.Tensor`` (a copy, in
        the parameters' dtype), which needs PyTorch installed (an ImportError saying
        so otherwise); ``True``: every value a ``numpy.ndarray``, and torch is not
        imported.

    Returns:
      ``(rnn_state_dict, head_state_dict)``: ``weight_ih_l{k}``, ``weight_hh_l{k}``,
      ``bias_ih_l{k}``, ``bias_hh_l{k}`` (and ``_reverse`` twins); ``weight``, ``bias``.
    """
    params, dims, _ = check_model(params)
    deep, cell, H = to_deep(params), dims.cell, dims.H
    if as_numpy:
        convert = np.asarray
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(
                "to_torch needs PyTorch installed; pass as_numpy=True for numpy arrays"
            ) from None

        def convert(a):
            return torch.from_numpy(np.array(a))

    rnn = {}
    for l, layers in enumerate(deep.cells()):
        for d, layer in enumerate(layers):
            suffix = f"_l{l}{'_reverse' if d else ''}"
            rnn[f"weight_ih{suffix}"] = convert(layer.W)
            rnn[f"weight_hh{suffix}"] = convert(layer.U)
            b_ih, b_hh = _torch_biases(np.asarray(layer.b), cell, H, gradient)
            rnn[f"bias_ih{suffix}"] = convert(b_ih)
            rnn[f"bias_hh{suffix}"] = convert(b_hh)
    head = {"weight": convert(deep.V), "bias": convert(deep.c)}
    return rnn, head


def _torch_biases(b: np.ndarray, cell: str, H: int, gradient: bool):
    """``(bias_ih, bias_hh)`` of a layer's ``b`` (or, with ``gradient``, of ``∂E/∂b``)."""
    if cell != "gru":
        return b, (b if gradient else np.zeros_like(b))
    zero_rz = b[: 2 * H] if gradient else np.zeros_like(b[: 2 * H])
    return b[: 3 * H], np.concatenate([zero_rz, b[3 * H :]])
