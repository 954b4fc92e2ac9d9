r"""``bptt-jax eval CHECKPOINT PATH...``: a trained model scored on files, each from zero.

Every file is read from the zero state with the state carried through the whole
file (:func:`bptt_jax.app.training.validation.score`, the evaluation ``train`` runs on its
held-out files), with any model the checkpoint holds. For ``lm``:

.. math::

    \text{bits/char} = \frac{1}{N \ln 2} \sum_{\text{files}} \sum_{t=1}^{n_f - 1}
        -\log \hat y_t[x_{t+1}],\qquad
    \text{perplexity} = 2^{\text{bits/char}}

over the :math:`N = \sum_f (n_f - 1)` characters that have a preceding character in
their file; for ``tag``, the accuracy of the argmax token type over all :math:`N =
\sum_f n_f` characters, per class, and the confusion table.

Characters outside the checkpoint's vocabulary are counted and reported: they are read
and scored as the vocabulary's unknown symbol (which the model never saw), never left
out.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from dataclasses import dataclass

import numpy as np

from ..io.corpus import TOKEN_TYPES, DataError, read_text, token_labels
from ..io.files import check_regular
from ..training.checkpoint_schema import Model, load_model
from ..training.config import model_cell
from ..training.validation import HeldOut, evaluation, score


def collect(paths: list[str]) -> list[pathlib.Path]:
    """The files of ``paths`` (files, or folders read recursively; hidden names skipped).

    Raises:
      DataError: a path that does not exist or is not a regular file or folder, or a
        folder with no files.
    """
    files = []
    for text in paths:
        path = pathlib.Path(text)
        if path.is_dir():
            found = [
                p for p in sorted(path.rglob("*"))
                if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
            ]  # fmt: skip
            if not found:
                raise DataError(f"{path}: the folder holds no files to score")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            check_regular(path)  # a FIFO, a device: refused, never read
            raise DataError(f"{path}: no such file or folder")
    return files


def _text(path: pathlib.Path) -> str:
    text = read_text(path)  # DataError when not UTF-8
    if "\x00" in text:
        raise DataError(f"{path}: a binary file (it holds NUL bytes), not text")
    return text


def held_texts(texts: list[tuple[str, str]], model: Model) -> tuple[HeldOut, int]:
    """``(name, text)`` pairs as a :class:`HeldOut` for ``model`` and the count of
    characters outside its vocabulary (among the scored inputs and targets).

    Raises:
      DataError: for ``tag``, a text ``tokenize`` cannot read; nothing to score.
    """
    xs, ys, names, oov = [], [], [], 0
    for name, text in texts:
        ids = model.vocab.encode(text)
        if model.task == "tag":
            try:
                labels = token_labels(text)
            except DataError as e:
                raise DataError(f"{name}: {e}") from None
            x, y = ids, labels.astype(np.int32)
            oov += int(np.sum(x == model.vocab.unknown))
        else:
            x, y = ids[:-1], ids[1:]
            oov += int(np.sum(ids == model.vocab.unknown))
        if len(y):
            xs.append(np.asarray(x, np.int32))
            ys.append(np.asarray(y, np.int32))
            names.append(name)
    chars = sum(len(y) for y in ys)
    if not chars:
        raise DataError(
            f"nothing to score: the {len(texts)} file(s) hold no character "
            + ("" if model.task == "tag" else "with a character before it ")
            + "to score"
        )
    return HeldOut(tuple(xs), tuple(ys), tuple(names), chars, chars), oov


def held_files(files: list[pathlib.Path], model: Model) -> tuple[HeldOut, int]:
    """The files as :func:`held_texts` (named by their paths).

    Raises:
      DataError: a file that is not UTF-8 text, or see :func:`held_texts`.
    """
    return held_texts([(str(path), _text(path)) for path in files], model)


@dataclass(frozen=True)
class FileScore:
    """One file's (or text's) share of a :class:`Report`."""

    file: str  # its name (a path for files)
    chars: int  # targets scored in it
    bits_per_char: float


@dataclass(frozen=True)
class Report:
    """A model scored on texts, each from the zero state: what ``bptt-jax eval`` prints.

    ``chars`` targets scored (a language model scores every character that has one
    before it in its text, a tagger every character); ``oov_chars`` of the inputs are
    outside the vocabulary (scored as the unknown symbol). For ``task == "tag"`` also
    the argmax ``accuracy``, per class (``None`` for a class absent from the texts),
    the characters of each class, the class names ``labels`` and the
    ``confusion[true][predicted]`` counts; for ``"lm"`` those are ``None``.
    """

    task: str
    step: int
    chars: int
    oov_chars: int
    files: tuple[FileScore, ...]
    bits_per_char: float
    nats_per_char: float
    perplexity: float
    accuracy: float | None = None
    per_class: dict[str, float | None] | None = None
    class_chars: dict[str, int] | None = None
    labels: tuple[str, ...] | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None

    def to_json(self) -> dict:
        """The report as ``bptt-jax eval --json`` prints it (without ``checkpoint``)."""
        out = dataclasses.asdict(self)
        out["files"] = list(out["files"])
        if self.task != "tag":
            for name in ("accuracy", "per_class", "class_chars", "labels", "confusion"):
                del out[name]
        else:
            out["labels"] = list(self.labels or ())
            out["confusion"] = [list(row) for row in self.confusion or ()]
        return out


def report(model: Model, held: HeldOut, oov: int) -> Report:
    """``model`` scored on ``held`` (:func:`~bptt_jax.app.training.validation.score`)."""
    C = len(TOKEN_TYPES) if model.task == "tag" else None
    scores = score(model.params, held, cell=model_cell(model.config), num_classes=C)
    ev = evaluation(scores, model.task)
    files = tuple(
        FileScore(n, int(c), float(x / max(c, 1) / math.log(2)))
        for n, c, x in zip(held.names, scores.counts, scores.nll, strict=True)
    )
    common = dict(task=model.task, step=model.step, chars=ev.chars, oov_chars=oov,
                  files=files, bits_per_char=ev.bits, nats_per_char=ev.loss,
                  perplexity=ev.perplexity)  # fmt: skip
    if model.task != "tag":
        return Report(**common)
    return Report(**common, accuracy=ev.accuracy, per_class=ev.per_class,
                  class_chars=ev.counts, labels=TOKEN_TYPES, confusion=ev.confusion)  # fmt: skip


def run_eval(checkpoint: str, paths: list[str], *, task: str | None = None) -> dict:
    """Scores ``checkpoint`` on ``paths``; the report as a JSON-able dict.

    Raises:
      CheckpointError: an unreadable checkpoint.
      DataError: bad input (see :func:`collect`, :func:`held_files`), or ``task`` given
        and not the checkpoint's.
    """
    files = collect(paths)  # before the checkpoint is read: a bad path costs nothing
    model = load_model(checkpoint)
    if task is not None and task != model.task:
        raise DataError(
            f"{checkpoint} is a --task {model.task} model; --task {task} needs a checkpoint "
            f"trained with --task {task}"
        )
    held, oov = held_files(files, model)
    return {"checkpoint": str(checkpoint)} | report(model, held, oov).to_json()


def format_report(r: dict) -> str:
    """The report of :func:`run_eval` as text."""
    lines = [
        f"bptt-jax eval: {r['checkpoint']} ({r['task']}, step {r['step']}) on "
        f"{len(r['files'])} file(s), {r['chars']:,} characters scored, each file from a "
        "zero state",
        f"characters outside the vocabulary: {r['oov_chars']:,}"
        + (" (scored as the unknown symbol)" if r["oov_chars"] else ""),
    ]
    if len(r["files"]) > 1:
        bits = sorted(f["bits_per_char"] for f in r["files"])
        lines.append(
            f"per file: min {bits[0]:.3f}, median {bits[len(bits) // 2]:.3f}, max "
            f"{bits[-1]:.3f} bits/char"
        )
    if r["task"] == "lm":
        lines.append(
            f"bits/char {r['bits_per_char']:.4f}, nats/char {r['nats_per_char']:.4f}, "
            f"perplexity {r['perplexity']:.3f}"
        )
        return "\n".join(lines)
    lines.append(f"accuracy {r['accuracy']:.2%} (loss {r['bits_per_char']:.4f} bits/char)")
    lines.append(f"{'token type':<12}{'chars':>10}{'accuracy':>10}")
    for name in r["labels"]:
        acc = r["per_class"][name]
        shown = "-" if acc is None else f"{acc:.1%}"
        lines.append(f"{name:<12}{r['class_chars'][name]:>10}{shown:>10}")
    short = [n[:8] for n in r["labels"]]
    lines.append("confusion (rows: tokenize's type, columns: the model's):")
    lines.append(" " * 12 + "".join(f"{s:>9}" for s in short))
    for name, row in zip(r["labels"], r["confusion"], strict=True):
        lines.append(f"{name:<12}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)
