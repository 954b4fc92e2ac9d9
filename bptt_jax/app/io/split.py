"""Which text a run holds out, said: the line ``train`` prints, ``OUT/split.json``, and
the record the checkpoint keeps (the rule itself: :func:`bptt_jax.app.io.files.split_files`
and :func:`bptt_jax.app.io.corpus.load_corpus`)."""

from __future__ import annotations

import json
import os

from .corpus import SPLIT_RULES, Corpus
from .files import DataError

SPLIT_NAME = "split.json"


def split_record(corpus: Corpus, *, train_names: bool = True) -> dict:
    """Which text is held out, as JSON: OUT/split.json, and the checkpoint's ``split``
    (there without the list of training files: ``train_names=False``).

    Keys: ``rule`` (:data:`SPLIT_RULES`) and its ``description``; ``held_out`` (file
    names), ``held_out_range`` (``[start, end)`` characters of the one file, rule
    ``tail``; else null), ``held_out_chars``; ``train_file_count``, ``train_chars``
    (and ``train_files``); ``skipped_not_text`` and ``skipped_tokenize`` (names).
    """
    record = {
        "rule": corpus.rule, "description": SPLIT_RULES[corpus.rule],
        "held_out": list(corpus.val_files),
        "held_out_range": list(corpus.val_range) if corpus.val_range else None,
        "held_out_chars": len(corpus.val_ids),
        "train_file_count": len(corpus.train_files), "train_chars": len(corpus.train_ids),
        "skipped_not_text": list(corpus.not_text), "skipped_tokenize": list(corpus.skipped),
    }  # fmt: skip
    if train_names:
        record["train_files"] = list(corpus.train_files)
    return record


def _names(names, most: int = 5) -> str:
    listed = ", ".join(names[:most])
    return listed + (f" and {len(names) - most} more" if len(names) > most else "")


def split_lines(corpus: Corpus) -> list[str]:
    """What ``train`` prints about the split: one line, and one more when files were
    skipped for not being UTF-8 text."""
    n_val, n_train = len(corpus.val_ids), len(corpus.train_ids)
    if corpus.rule == "tail":
        a, b = corpus.val_range
        what = f"the last 10 % of {corpus.val_files[0]}, characters {a:,}..{b:,}"
    else:
        how = {"val-text": "named by --val-text", "name-hash": "by a hash of the name",
               "last-file": "as the last by name (no name hashes to 0 mod 20)"}  # fmt: skip
        how = how[corpus.rule]
        what = f"{len(corpus.val_files)} file(s) {how}: {_names(corpus.val_files)}"
    line = (f"held out for validation: {what} ({n_val:,} characters; training on "
            f"{n_train:,} in {len(corpus.train_files)} file(s))")  # fmt: skip
    if n_val > n_train:
        line += "; more held out than trained on: choose the held-out files with --val-text"
    lines = [line]
    if corpus.not_text:
        lines.append(f"skipped {len(corpus.not_text)} file(s) that are not UTF-8 text: "
                     f"{_names(corpus.not_text, 10)} (--strict-text stops instead)")  # fmt: skip
    return lines


def write_split(folder: str | os.PathLike, corpus: Corpus) -> str:
    """Writes FOLDER/split.json (:func:`split_record`); returns its path.

    Raises:
      DataError: it cannot be written (naming the path and the system's reason).
    """
    path = os.path.join(folder, SPLIT_NAME)
    tmp = os.path.join(folder, f".{SPLIT_NAME}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(split_record(corpus), f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def announce_split(corpus: Corpus, folder: str | os.PathLike, echo) -> None:
    """Says which text is held out (:func:`split_lines`) and writes FOLDER/split.json."""
    for line in split_lines(corpus):
        echo(line)
    write_split(folder, corpus)
