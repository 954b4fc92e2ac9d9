"""The ``bptt-jax`` command line (also ``python -m bptt_jax``): the parser and :func:`main`.

The flags of ``train`` are declared in :mod:`bptt_jax.app.cli.main.flags`, what each
command does in :mod:`bptt_jax.app.cli.main.commands`.

Exit status, the same for every command: 0 success; 1 an error, reported as
one line ``bptt-jax COMMAND: error: ...`` on stderr with no traceback (bad
arguments included, and a failed ``check`` or ``bench``); 128 + N when signal
N stopped it (130 Ctrl-C, 143 SIGTERM). ``--debug`` or ``BPTT_JAX_DEBUG=1``
gives the traceback back, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

from ..io.checkpoint import CheckpointError
from ..io.corpus import DataError
from ..io.preflight import UsageError
from ..training.config import TrainingError
from ..training.distributed import ClusterError
from ..training.outputs import silence_stdout
from ..training.signals import (
    Interrupted,
    owns_process,
    release_early_signals,
    signal_name,
    take_early_signal,
)
from . import bench, check, diagnose, eval_cmd, sample, tag, train
from .errors import error, one_line

try:  # the installed version (pyproject.toml), as bptt_jax.__version__
    VERSION = importlib.metadata.version("bptt_jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
    VERSION = "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 1."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The command modules, in the order ``--help`` lists them.
_COMMANDS = (check, diagnose, bench, train, sample, tag, eval_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``bptt-jax`` command."""
    parser = Parser(
        prog="bptt-jax",
        description="Backpropagation through time derived by hand, checked against jax.grad. "
        "Commands: train (the main job), sample, tag, eval, check, diagnose, bench.",
    )
    parser.add_argument("--version", action="version", version=f"bptt-jax {VERSION}",
                        help="print the version and exit")  # fmt: skip
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error (also: BPTT_JAX_DEBUG=1)",
    )
    commands_ = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands_)
    return parser


_HANDLERS = {
    "check": check.handle,
    "diagnose": diagnose.handle,
    "bench": bench.handle,
    "train": train.handle,
    "sample": sample.handle,
    "tag": tag.handle,
    "eval": eval_cmd.handle,
}

# The errors a user can cause: their message is the whole report.
_USER_ERRORS = (DataError, CheckpointError, TrainingError, UsageError, ClusterError)


def debugging(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` or ``BPTT_JAX_DEBUG`` set (to anything but ``""`` or ``0``)."""
    flag = os.environ.get("BPTT_JAX_DEBUG", "") not in ("", "0")
    return flag or bool(getattr(args, "debug", False))


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status (see the module's docstring).

    Bad arguments raise ``SystemExit(1)`` (after printing one line), as
    ``--help`` raises ``SystemExit(0)``.
    """
    args = parse(build_parser(), argv)
    command = args.command
    early = take_early_signal()  # held since the first import (bptt-jax on the command line)
    if early is not None:
        print(f"bptt-jax {command}: interrupted by {signal_name(early)} before it started; "
              "nothing was done", file=sys.stderr)  # fmt: skip
        return 128 + early
    if command != "train":  # train holds them to the end; the others stop by exception
        release_early_signals()
    status = _run(command, args)
    late = take_early_signal()  # after train's run: everything was written by then
    if late is not None and status == 0:
        print(f"bptt-jax {command}: {signal_name(late)} after the run had finished; "
              "its outputs are complete", file=sys.stderr)  # fmt: skip
        return 128 + late
    return status


def _run(command: str, args: argparse.Namespace) -> int:
    """The command's exit status; every error it raises becomes one line on stderr."""
    try:
        return _HANDLERS[command](args)
    except Interrupted as e:
        print(f"bptt-jax {command}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:  # outside train's loop (sample, tag, ...): nothing to save
        if debugging(args):
            raise
        print(f"bptt-jax {command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        if debugging(args):
            raise
        return error(command, one_line(e))
    except (ValueError, TypeError) as e:  # the library's argument checks
        if debugging(args):
            raise
        return error(command, one_line(e))
    except BrokenPipeError as e:  # standard output closed early (| head)
        if debugging(args):
            raise
        silence_stdout()
        return error(command, f"cannot write standard output: {e.strerror or e}")
    except MemoryError:
        if debugging(args):
            raise
        return error(command, "out of memory; choose smaller sizes")
    except Exception as e:  # a bug: still one line, and how to get the traceback
        if debugging(args):
            raise
        return error(
            command,
            f"internal error {type(e).__name__}: {one_line(e)} (a bug in bptt-jax; "
            "run again with BPTT_JAX_DEBUG=1 for the traceback and report it)",
        )


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with an unknown flag reported by its command's parser:
    ``bptt-jax train: error: unrecognized arguments: --foo`` (exit status 1)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands_ = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands_.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def run() -> None:
    """Console-script entry point: exits with :func:`main`'s status."""
    owns_process()
    sys.exit(main())
