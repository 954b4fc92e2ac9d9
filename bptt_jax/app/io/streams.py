r"""The training streams: B parallel streams over the corpus, with per-step resets where
a file starts (validation reads whole files: :mod:`bptt_jax.app.training.validation`).

The corpus they read (files, vocabulary, token-type labels, :class:`Corpus`)
is :mod:`bptt_jax.app.io.corpus`; a multi-process run splits the streams between
processes here (:func:`process_streams`, undone by :func:`streams_in_order`).
"""

from __future__ import annotations

import numpy as np

from .corpus import DataError


class Streams:
    r"""B parallel streams over one long text, read in consecutive chunks of T.

    The text is cut into ``B`` contiguous segments of equal length ``L``;
    stream ``b`` reads segment ``b`` from start to end, ``T`` characters per
    training step, so that the hidden state :math:`h_T` of one chunk is the
    right :math:`h_0` of the next (truncated BPTT). After ``num_chunks``
    chunks the streams wrap round to their starts (a new epoch).

    For ``lm`` the label of character t is character t + 1; for ``tag`` it
    is the token type of character t.

    Documents start from the zero state: where a file starts (``starts``, offsets
    into ``ids``) the stream's ``resets`` (:meth:`resets`) is True, and the training
    step makes the state entering that step zero, inside the chunk where the
    boundary falls (:func:`bptt_jax.core.step.hand_bptt`). So the model learns to
    read a document from the state ``sample``, ``tag`` and ``eval`` start from.

    In a run of ``P`` processes (multi-host), process ``p`` holds only the
    streams :func:`process_streams` gives it, ``p, p + P, p + 2P, ...``:
    ``B / P`` rows, the same segments a single process would read at those
    rows.
    """

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        seq_len: int,
        *,
        num_processes: int = 1,
        process_id: int = 0,
        starts: tuple[int, ...] | None = None,
    ) -> None:
        B, T = batch_size, seq_len
        rows = process_streams(B, num_processes, process_id)
        shift = 1 if labels is None else 0  # lm needs one character past the chunk
        L = len(ids) // B
        self.num_chunks = (L - shift) // T
        if self.num_chunks < 1:
            raise DataError(
                f"the training text has {len(ids)} characters, too few for --batch-size {B} "
                f"streams of --seq-len {T}: needs at least {B * (T + shift)}"
            )
        self.xs = np.ascontiguousarray(ids[: B * L].reshape(B, L)[rows])  # (B / P, L)
        if labels is None:
            self.ys = self.xs[:, 1:]  # (B / P, L - 1): the next character
        else:
            self.ys = np.ascontiguousarray(labels[: B * L].reshape(B, L)[rows])  # (B / P, L)
        self.seq_len = T
        first = np.zeros(len(ids), bool)  # (N,): True where a document starts
        if starts is not None:
            first[np.asarray(starts, np.int64)] = True
        self.starts = np.ascontiguousarray(first[: B * L].reshape(B, L)[rows])  # (B / P, L)

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``k`` (``0 <= k < num_chunks``): ``xs, ys`` each ``(B / P, T)`` int32."""
        T = self.seq_len
        return self.xs[:, k * T : (k + 1) * T], self.ys[:, k * T : (k + 1) * T]

    def resets(self, k: int) -> np.ndarray:
        """Chunk ``k``'s ``(B / P, T)`` bool: True where a document (file) starts, so the
        state entering that step is zero."""
        T = self.seq_len
        return self.starts[:, k * T : (k + 1) * T]


def process_streams(num_streams: int, num_processes: int, process_id: int) -> np.ndarray:
    """The streams process ``process_id`` of ``num_processes`` reads: ``p, p + P, ...``.

    Over all processes these are disjoint and cover ``0 .. B - 1``; each process
    gets ``B / P`` of them (``B`` must be a multiple of ``P``).

    Raises:
      DataError: ``P < 1``, ``p`` outside ``0 .. P - 1``, or ``B`` not a multiple of ``P``.
    """
    B, P_, p = num_streams, num_processes, process_id
    if P_ < 1:
        raise DataError(f"the number of processes must be >= 1, got {P_}")
    if not 0 <= p < P_:
        raise DataError(f"process id {p} is outside 0..{P_ - 1} for {P_} processes")
    if B % P_:
        raise DataError(
            f"--batch-size {B} is not divisible by the {P_} processes; use a multiple of {P_}"
        )
    return np.arange(p, B, P_)


def streams_in_order(blocks) -> np.ndarray:
    """Undoes :func:`process_streams`: ``blocks[p]`` holds process p's rows; stream order out.

    Args:
      blocks: ``(P, B / P, ...)``, process ``p``'s rows in the order it holds them.

    Returns:
      ``(B, ...)`` with row ``p + P j`` = ``blocks[p][j]``.
    """
    blocks = np.asarray(blocks)
    P_, n = blocks.shape[:2]
    return np.swapaxes(blocks, 0, 1).reshape(P_ * n, *blocks.shape[2:])
