r"""PyTorch interop: ``nn.RNN`` + ``nn.Linear`` state dicts <-> bptt_jax parameters.

PyTorch's ``nn.RNN`` computes, per layer ``k`` and direction,

.. math::

    h_t = f(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

which is the seed's :math:`s_t = U h_{t-1} + W x_t + b` with
:math:`U = W_{hh}`, :math:`W = W_{ih}`, :math:`b = b_{ih} + b_{hh}`; the
``nn.Linear`` head is :math:`z_t = V h_t + c`. Layer ``k > 0`` reads the layer
below, both directions concatenated (forward first), as :class:`DeepParams`
does. The activation (``nonlinearity``) is not part of a state dict: pass the
same ``activation=`` to :func:`bptt_jax.bptt` and friends.

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


def _layer(found: dict[str, np.ndarray], suffix: str, l: int, H: int, D: int, dtype: Any) -> Layer:
    """One layer-direction of ``nn.RNN`` as a :class:`Layer`, ``b = b_ih + b_hh``."""
    W_hh, W_ih = found["weight_hh"], found["weight_ih"]
    if W_hh.shape != (H, H):
        raise ValueError(
            f"weight_hh{suffix} has shape {W_hh.shape}, expected ({H}, {H}); "
            "(gated cells such as LSTM/GRU stack 4H or 3H rows and are not vanilla RNNs)"
        )
    D_in = W_ih.shape[1] if l == 0 else D * H
    if W_ih.shape != (H, D_in):
        raise ValueError(f"weight_ih{suffix} has shape {W_ih.shape}, expected ({H}, {D_in})")
    b = np.zeros(H, dtype)
    for kind in ("bias_ih", "bias_hh"):
        if kind in found:
            if found[kind].shape != (H,):
                raise ValueError(f"{kind}{suffix} has shape {found[kind].shape}, expected ({H},)")
            b = b + found[kind]
    return Layer(U=jnp.asarray(W_hh, dtype), W=jnp.asarray(W_ih, dtype), b=jnp.asarray(b, dtype))


def from_torch(
    rnn_state_dict: Mapping[str, Any],
    head_state_dict: Mapping[str, Any],
    *,
    dtype: jnp.dtype | str | None = None,
) -> Params | DeepParams:
    """Parameters from a PyTorch ``nn.RNN`` and its ``nn.Linear`` output head.

    Args:
      rnn_state_dict: ``nn.RNN(...).state_dict()`` (any ``num_layers``,
        ``bidirectional``, ``nonlinearity``, with or without biases): keys
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
    H = cells[(0, 0)]["weight_hh"].shape[0]
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(cells[(0, 0)]["weight_hh"].dtype)
    dtype = check_float_dtype(dtype)
    layers = [[None] * D for _ in range(L)]
    for (l, d), found in cells.items():
        layers[l][d] = _layer(found, f"_l{l}{'_reverse' if d else ''}", l, H, D, dtype)
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
    params: Params | DeepParams, *, as_numpy: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(rnn_state_dict, head_state_dict)`` for ``nn.RNN`` and ``nn.Linear``.

    PyTorch's two biases become ``bias_ih = b`` and ``bias_hh = 0``. Load them
    with ``rnn.load_state_dict(rnn_sd)`` and ``head.load_state_dict(head_sd)``
    into ``nn.RNN(K, H, num_layers=L, bidirectional=..., nonlinearity=...,
    batch_first=True)`` and ``nn.Linear(D*H, C)``.

    Args:
      params: :class:`Params` or :class:`DeepParams`.
      as_numpy: ``False`` (the default): every value a ``torch.Tensor`` (a copy, in
        the parameters' dtype), which needs PyTorch installed (an ImportError saying
        so otherwise); ``True``: every value a ``numpy.ndarray``, and torch is not
        imported.

    Returns:
      ``(rnn_state_dict, head_state_dict)``: ``weight_ih_l{k}``, ``weight_hh_l{k}``,
      ``bias_ih_l{k}``, ``bias_hh_l{k}`` (and ``_reverse`` twins); ``weight``, ``bias``.
    """
    params, _, _ = check_model(params)
    deep = to_deep(params)
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
    for l, cell in enumerate(deep.cells()):
        for d, layer in enumerate(cell):
            suffix = f"_l{l}{'_reverse' if d else ''}"
            rnn[f"weight_ih{suffix}"] = convert(layer.W)
            rnn[f"weight_hh{suffix}"] = convert(layer.U)
            rnn[f"bias_ih{suffix}"] = convert(layer.b)
            rnn[f"bias_hh{suffix}"] = convert(np.zeros_like(np.asarray(layer.b)))
    head = {"weight": convert(deep.V), "bias": convert(deep.c)}
    return rnn, head
