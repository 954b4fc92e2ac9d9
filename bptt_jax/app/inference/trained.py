"""A trained model from Python: ``bptt_jax.load(path)``, and what ``sample``, ``tag``, ``eval`` do.

:func:`load` reads a checkpoint written by ``bptt-jax train`` through the one
reader of training checkpoints
(:func:`~bptt_jax.app.training.checkpoint_schema.read_training_checkpoint`: checksum,
schema and every array's dtype and shape checked before use) and returns a
frozen :class:`TrainedModel`: the parameters (a :class:`~bptt_jax.Params` or
:class:`~bptt_jax.DeepParams` on the default device), the vocabulary, the task
and the training configuration. Its methods run the same functions as the
commands, so they give exactly what the commands print on the same checkpoint:

- :meth:`TrainedModel.sample` / :meth:`TrainedModel.stream`: ``bptt-jax sample``
  (:func:`bptt_jax.app.inference.sample.generate`; sample ``i`` of ``--num-samples`` is
  ``index=i - 1``);
- :meth:`TrainedModel.evaluate`: ``bptt-jax eval --json`` on files or folders,
  :meth:`TrainedModel.score` the same on texts in memory
  (:func:`bptt_jax.app.inference.eval_report.report`);
- :meth:`TrainedModel.tag`: the token types of ``bptt-jax tag``
  (:func:`bptt_jax.app.inference.tagging.predict_tags`).

Bad input raises one line: :class:`CheckpointError` for a path that is missing,
not a checkpoint, corrupted or inconsistent; ``ValueError``/``TypeError`` for a
bad argument to a method, named as the method's keyword.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..io.checkpoint import CheckpointError
from ..io.corpus import TOKEN_TYPES, DataError
from ..training.checkpoint_schema import Model, read_training_checkpoint
from .eval_report import Report, collect, held_files, held_texts, report
from .sample import LENGTH, PRIME, TEMPERATURE, check_request, generate
from .tagging import predict_tags

__all__ = ["CheckpointError", "Report", "TrainedModel", "load"]


@dataclass(frozen=True, eq=False, repr=False)
class TrainedModel(Model):
    """A model trained by ``bptt-jax train``, as :func:`load` returns it (frozen).

    Attributes:
      params: :class:`~bptt_jax.Params` (one layer) or :class:`~bptt_jax.DeepParams`
        (``--num-layers``, ``--bidirectional``) of the cell ``config.cell`` (its shapes
        say it: ``U (G·H, H)``), usable with every function of
        ``bptt_jax``: ``K = vocab.size`` inputs, ``C = K`` classes for ``"lm"`` and
        ``len(labels)`` for ``"tag"``.
      vocab: the characters; id ``i`` is ``vocab.chars[i]``, id ``K - 1`` the unknown one.
      task: ``"lm"`` (next character) or ``"tag"`` (each character's token type).
      config: the training configuration (``config.hidden_size``, ``config.cell``,
        ``config.activation``, ``config.seq_len``, ... as ``bptt-jax train`` took them;
        a checkpoint written before ``--cell`` existed reads as ``cell="rnn"``).
      step: the training step the checkpoint was written at.

    Models compare by identity (their arrays have no single truth value).
    """

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        c = self.config
        shape = f"L={c.num_layers}{', bidirectional' if c.bidirectional else ''}"
        return (
            f"TrainedModel(task={self.task!r}, step={self.step}, K={self.vocab.size}, "
            f"H={c.hidden_size}, {shape}, cell={c.cell!r}, activation={c.activation!r}, "
            f"dtype={c.dtype!r})"
        )

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The token types a ``"tag"`` model predicts, by class id (``None`` for ``"lm"``)."""
        return TOKEN_TYPES if self.task == "tag" else None

    def encode(self, text: str, *, strict: bool = False) -> np.ndarray:
        """``(len(text),)`` int32 ids; a character outside the vocabulary is the unknown
        id ``K - 1`` (``strict=True``: a ``ValueError`` naming it)."""
        _need_text(text, "text")
        return _user(lambda: self.vocab.encode(text, strict=strict))

    def decode(self, ids: ArrayLike) -> str:
        """The text of integer ids in ``0..K-1`` (the unknown id decodes to U+FFFD).

        Raises:
          ValueError: ids that are not integers, or outside ``0..K-1`` (the first named).
        """
        a = np.asarray(ids)
        if a.size and not (np.issubdtype(a.dtype, np.integer) and a.dtype != bool):
            raise ValueError(f"ids must be integers in 0..{self.vocab.size - 1}, got {a.dtype}")
        bad = np.flatnonzero((a.reshape(-1) < 0) | (a.reshape(-1) >= self.vocab.size))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"ids must be in 0..{self.vocab.size - 1} (the vocabulary), got "
                f"{a.reshape(-1)[i]} at flat index {i}"
            )
        return self.vocab.decode(a)

    def stream(
        self, prime: str = PRIME, length: int = LENGTH, *, temperature: float = TEMPERATURE,
        top_k: int | None = None, top_p: float = 1.0, seed: int = 0, index: int = 0,
    ) -> Iterator[str]:  # fmt: skip
        """Yields the ``length`` characters after ``prime`` a chunk at a time, as
        ``bptt-jax sample`` prints them (see :meth:`sample`; checked before the first)."""
        _need_text(prime, "prime")
        _user(lambda: check_request(self, prime, length, temperature, top_k, top_p, flags=False))
        return generate(self, prime, length, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, index=index)  # fmt: skip

    def sample(
        self, prime: str = PRIME, length: int = LENGTH, *, temperature: float = TEMPERATURE,
        top_k: int | None = None, top_p: float = 1.0, seed: int = 0, index: int = 0,
    ) -> str:  # fmt: skip
        """The ``length`` characters a language model generates after ``prime``.

        Exactly what ``bptt-jax sample CHECKPOINT --prime PRIME --length LENGTH
        --seed SEED ...`` prints after the prime (its ``--num-samples`` sample ``i`` is
        ``index=i - 1``). From the zero state; ``temperature=0`` is greedy; ``top_k``
        keeps the k most likely characters, ``top_p`` the nucleus; the unknown
        character is never drawn. The defaults are the command's.

        Raises:
          ValueError: a ``"tag"`` model; ``length`` outside 1..1,000,000; a negative
            or infinite ``temperature``; ``top_k`` outside ``1..K-1``; ``top_p``
            outside ``(0, 1]``; a ``prime`` with characters outside the vocabulary.
        """
        return "".join(self.stream(prime, length, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=seed, index=index))  # fmt: skip

    def tag(self, text: str) -> np.ndarray:
        """``(len(text),)`` int32: the predicted token type of every character
        (an index into :attr:`labels`), as ``bptt-jax tag`` shows them."""
        _need_text(text, "text")
        return _user(lambda: predict_tags(self, text))

    def score(self, *texts: str) -> Report:
        """The model scored on ``texts``, each from the zero state: what
        ``bptt-jax eval`` reports for files holding them (named ``text 1``, ...).

        Raises:
          ValueError: no text, or nothing to score (a language model scores the
            characters with one before them); for ``"tag"``, a text Python's
            ``tokenize`` cannot read.
        """
        if not texts:
            raise ValueError("score needs at least one text")
        for i, text in enumerate(texts):
            _need_text(text, f"text {i + 1}")
        pairs = [(f"text {i + 1}", text) for i, text in enumerate(texts)]
        return report(self, *_user(lambda: held_texts(pairs, self)))

    def evaluate(self, *paths: str | os.PathLike) -> Report:
        """The model scored on files (folders: their files, read recursively, hidden
        names skipped), each from the zero state: the report of ``bptt-jax eval
        --json CHECKPOINT PATH...`` (``Report.to_json()`` is that object without its
        ``checkpoint`` entry).

        Raises:
          ValueError: no path, a path that does not exist, an empty folder, a file
            that is not UTF-8 text, or nothing to score.
        """
        if not paths:
            raise ValueError("evaluate needs at least one file or folder")
        files = _user(lambda: collect([os.fspath(p) for p in paths]))
        return report(self, *_user(lambda: held_files(files, self)))


def load(path: str | os.PathLike) -> TrainedModel:
    """The model of a checkpoint written by ``bptt-jax train`` (``checkpoint.bptt``,
    ``best.bptt``), every byte checked before use.

    Raises:
      CheckpointError: one line naming the path and what is wrong: missing, a folder,
        not a bptt-jax checkpoint, another format version, cut short or corrupted
        (sha256 mismatch), or contents that disagree with the checkpoint schema.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    ckpt = read_training_checkpoint(path)
    return TrainedModel(ckpt.params, ckpt.vocab, ckpt.config.task, ckpt.config, ckpt.step)


def _need_text(text, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _user(thunk):
    """``thunk()``, its :class:`DataError` (the commands' one-line refusal) a ``ValueError``."""
    try:
        return thunk()
    except DataError as e:
        raise ValueError(str(e)) from None
