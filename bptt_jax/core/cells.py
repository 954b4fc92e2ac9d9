"""The cells by name, and the cell a layer's shapes say it is.

``"rnn"`` (:class:`~.cell.RNNCell`, with its activation), ``"lstm"``
(:class:`~.lstm.LSTMCell`), ``"gru"`` (:class:`~.gru.GRUCell`). A layer's ``U`` is
``(G·H, H)`` with ``G`` the cell's number of gate blocks (1, 4, 3), so the cell of
a model follows from its shapes. Pure: no I/O, no globals.
"""

from __future__ import annotations

from .cell import RNNCell
from .gru import GRUCell
from .lstm import LSTMCell

#: The cells' names, in the order the documentation lists them.
CELL_NAMES = ("rnn", "lstm", "gru")
_BY_GATES = {1: "rnn", 4: "lstm", 3: "gru"}


def cell_named(name: str, activation: str = "tanh"):
    """The cell called ``name``; ``activation`` is the vanilla cell's :math:`f`."""
    if name == "rnn":
        return RNNCell(activation)
    return {"lstm": LSTMCell, "gru": GRUCell}[name]()


def cell_name_of_shape(rows: int, H: int) -> str | None:
    """The cell whose ``U`` is ``(rows, H)``, or ``None`` when no cell has that shape."""
    if H < 1 or rows % H:
        return None
    return _BY_GATES.get(rows // H)


def bias_size(name: str, H: int) -> int:
    """The length of a layer's ``b``: ``G·H``, and ``4H`` for the GRU (its ``b_hn``)."""
    return {"rnn": H, "lstm": 4 * H, "gru": 4 * H}[name]
