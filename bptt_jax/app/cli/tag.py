"""``bptt-jax tag``: a Python file printed with each character's predicted token type.

The work is :func:`bptt_jax.app.inference.tagging.predict_tags`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from ..inference.tagging import format_tags, legend, predict_tags, tag_json
from ..io.corpus import DataError, read_text, token_labels
from ..io.files import check_regular
from ..training.checkpoint_schema import load_model

#: ``bptt-jax tag``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = "print a Python file with each character's predicted token type"
DESCRIPTION = """\
Runs the tagging model of CHECKPOINT (trained with --task tag) over FILE and prints it with
each character's predicted token type: coloured in a terminal, otherwise with a line of
one-letter codes under each line. When tokenize can read FILE, also prints the accuracy
against its token types; --diff marks the characters where they disagree; --json prints one
JSON object instead.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax tag`` and its flags."""
    tag = commands.add_parser("tag", help=HELP, description=DESCRIPTION)
    a = tag.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train --task tag")
    a("file", metavar="FILE.py", help="a UTF-8 Python source file")
    a("--color", choices=("auto", "always", "never"), default="auto",
      help="colour the output: auto = only when stdout is a terminal (default auto)")  # fmt: skip
    a("--diff", action="store_true",
      help="mark the characters whose predicted type differs from Python's tokenize "
      "(underlined in colour, else a line of ^ under them) (default: tags only)")  # fmt: skip
    a("--json", action="store_true",
      help="print one JSON object: file, chars, labels, tags (a letter per character), "
      "spans, accuracy and disagreements (null when tokenize cannot read the file) "
      "(default: text)")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Prints the tagged file (and the accuracy against tokenize); status 0."""
    check_regular(args.file)  # a FIFO or /dev/zero: refused before the model loads
    model = load_model(args.checkpoint)
    if model.task != "tag":
        raise DataError(
            f"{args.checkpoint} is a '{model.task}' model; tagging needs one trained with "
            "--task tag"
        )
    text = read_text(pathlib.Path(args.file))
    tags = predict_tags(model, text)
    try:
        truth = token_labels(text)
    except DataError as e:
        if args.diff:
            raise DataError(
                f"{args.file}: --diff compares with tokenize, which fails: {e}"
            ) from None
        truth = None
    if args.json:
        print(json.dumps(tag_json(args.file, text, tags, truth)))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    shown = format_tags(text, tags, color=color, truth=truth if args.diff else None)
    sys.stdout.write(legend(color, args.diff) + "\n" + shown)
    if truth is None:
        print("(tokenize cannot read this file: no accuracy to report)")
    elif len(truth):
        wrong = int(np.sum(tags != truth))
        print(
            f"accuracy against tokenize: {1 - wrong / len(truth):.1%} of {len(truth)} chars"
            + (f" ({wrong} disagree)" if args.diff else "")
        )
    return 0
