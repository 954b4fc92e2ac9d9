"""``bptt-jax eval``: a checkpoint scored on files, bits/char (lm) or accuracy (tag).

(``eval_cmd``, not ``eval``: the builtin's name.) The work is
:func:`bptt_jax.app.inference.eval_report.run_eval`.
"""

from __future__ import annotations

import argparse
import json

from ..inference.eval_report import format_report, run_eval
from ..training.config import TASKS

#: ``bptt-jax eval``'s line in the list of commands, and its description (argparse
#: reflows it).
HELP = "score a checkpoint on files: bits/char (lm) or accuracy (tag)"
DESCRIPTION = """\
Scores the model of CHECKPOINT on the files PATH... (folders are read recursively), each
file from a zero state with the state carried through the whole file. lm: bits/char,
nats/char, perplexity; tag: accuracy, per class and the confusion table against tokenize.
Characters outside the model's vocabulary are counted and reported.
"""


def add_parser(commands) -> None:
    """Declares ``bptt-jax eval`` and its flags."""
    ev = commands.add_parser("eval", help=HELP, description=DESCRIPTION)
    a = ev.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train")
    a("paths", metavar="PATH", nargs="+", help="UTF-8 text files or folders")
    a("--task", choices=TASKS, default=None,
      help="refuse a checkpoint of the other task (default: the checkpoint's)")  # fmt: skip
    a("--json", action="store_true",
      help="print one JSON object (lm: bits_per_char, chars, ...; tag: accuracy, "
      "chars, ...) (default: a text report)")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    """Prints the report (``--json``: one JSON object); status 0."""
    report = run_eval(args.checkpoint, args.paths, task=args.task)
    print(json.dumps(report) if args.json else format_report(report))
    return 0
