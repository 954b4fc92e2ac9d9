"""The ``bptt-jax`` command line (also ``python -m bptt_jax``): the parser and :func:`main`.

The flags of ``train`` are declared in :mod:`bptt_jax.app.arguments`, what each
command does in :mod:`bptt_jax.app.commands`.

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

from ..core.activations import ACTIVATIONS
from ..core.checks import MATMUL_DTYPES
from ..core.init import INITS
from . import commands
from .arguments import (
    add_train_parser,
    integer_list,
    integer_range,
    nonnegative,
    nonnegative_float,
    number_list,
    positive,
    positive_float,
    seed,
)
from .check import INPUTS, TOLERANCES
from .checkpoint import CheckpointError
from .config import DTYPES, TASKS, TrainingError
from .data import DataError
from .distributed import ClusterError
from .outputs import silence_stdout
from .preflight import UsageError
from .sample import LENGTH, MAX_LENGTH, MAX_SAMPLES, PRIME, TEMPERATURE
from .signals import (
    Interrupted,
    owns_process,
    release_early_signals,
    signal_name,
    take_early_signal,
)

try:  # the installed version (pyproject.toml), as bptt_jax.__version__
    VERSION = importlib.metadata.version("bptt_jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
    VERSION = "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 1."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_check_parser(commands_) -> None:
    check = commands_.add_parser(
        "check",
        help="compare the hand gradients with jax.grad and finite differences",
        description=(
            "Runs the hand-derived BPTT on an embedded model and prints, per parameter, "
            "the max relative error against jax.grad and against float64 central finite "
            "differences. Exits with status 1 if any gradient disagrees."
        ),
    )
    a = check.add_argument
    a("--vocab-size", "-K", type=positive, default=11, help="K (default 11)")
    a("--hidden-size", "-H", type=positive, default=16, help="H (default 16)")
    a("--num-classes", "-C", type=positive, default=7, help="C output classes (default 7)")
    a("--batch", "-B", type=positive, default=3, help="B sequences (default 3)")
    a("--steps", "-T", type=nonnegative, default=12, help="T steps per sequence (default 12)")
    a("--inputs", choices=INPUTS, default="ids",
      help="token ids (gather/scatter path) or dense input vectors (default ids)")  # fmt: skip
    a("--dtype", choices=tuple(TOLERANCES), default="float64",
      help="precision of the model under test (default float64)")  # fmt: skip
    a("--seed", type=seed, default=0, help="random seed (default 0)")


def _add_diagnose_parser(commands_) -> None:
    diagnose = commands_.add_parser(
        "diagnose",
        help="measure and plot vanishing/exploding gradients (the seed's §6)",
        description=(
            "Measures every ‖δ_k^(t)‖ = ‖∂E_t/∂s_k‖ of a model by the hand recursion, "
            "prints it against the §6 bound γ^(t−k), and writes PNG plots into --out: "
            "the heat map, the decay with distance against the bound, the sweep of the "
            "scale of U for tanh, sigmoid and ReLU, and (with --delays) training curves "
            "on the delay task y_t = x_(t−d)."
        ),
    )
    a = diagnose.add_argument
    a("--out", "-o", default="diagnose", help="folder for the PNGs (default diagnose)")
    a("--vocab-size", "-K", type=positive, default=8, help="K (default 8)")
    a("--hidden-size", "-H", type=positive, default=32, help="H (default 32)")
    a("--batch", "-B", type=positive, default=8, help="B (default 8)")
    a("--steps", "-T", type=positive, default=40, help="T (default 40)")
    a("--activation", choices=tuple(ACTIVATIONS), default="tanh", help="f (default tanh)")
    a("--init", choices=INITS, default="uniform", help="init_params(init=...) (default uniform)")
    a("--spectral-radius", type=positive_float, default=None, help="rescale U to this ρ(U) > 0")
    a(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="skip the sweep of U's scale (default: sweep)",
    )
    a("--sweep-scales", type=number_list, default=None,
      help="comma-separated scales σ of U for the sweep (default 0.25..6)")  # fmt: skip
    a("--delays", type=integer_list, default=[],
      help="comma-separated delays d: also train on the delay task (e.g. 2,5,10,20)")  # fmt: skip
    a("--iterations", type=positive, default=1000, help="Adam steps per delay (default 1000)")
    a("--seed", type=seed, default=0, help="random seed (default 0)")


def _add_bench_parser(commands_) -> None:
    bench = commands_.add_parser(
        "bench",
        help="time the hand BPTT against autodiff on this machine",
        description=(
            "Times one loss-and-gradient evaluation of the seed's RNN three ways on this "
            "machine's default JAX device: the hand BPTT (with the options below), "
            "jax.jit(jax.value_and_grad(loss)) of the same forward, and autodiff of the "
            "naive step-by-step loss. Prints the median time, GFLOP/s, compile time, XLA's "
            "temp bytes and the hand result's relative error against autodiff; exits with "
            "status 1 if they disagree. The full grid with plots: benchmarks/bench_bptt.py."
        ),
    )
    a = bench.add_argument
    a("--vocab-size", "-K", type=positive, default=65, help="K (default 65)")
    a("--hidden-size", "-H", type=positive, default=256, help="H (default 256)")
    a("--batch", "-B", type=positive, default=32, help="B (default 32)")
    a("--steps", "-T", type=positive, default=64, help="T (default 64)")
    a("--repeats", type=positive, default=20, help="timed calls (default 20)")
    a("--dtype", choices=DTYPES, default="float32", help="(default float32)")
    a("--chunk", type=positive, default=None,
      help="steps per backward chunk (default: the backend's, about 512 rows of chunk*B on "
      "the CPU, at most T/4 steps)")  # fmt: skip
    a("--recompute", action="store_true",
      help="store h_t every ~sqrt(T) steps only (default: every h_t)")  # fmt: skip
    a("--unroll", type=positive, default=None,
      help="lax.scan unroll (default: the backend's, 1 on the CPU, 8 on a GPU)")  # fmt: skip
    a(
        "--matmul-dtype",
        choices=MATMUL_DTYPES,
        default=None,
        help="bf16 matrix products with float32 accumulation (default: products in --dtype)",
    )
    a("--seed", type=seed, default=0, help="random seed (default 0)")


def _add_use_parsers(commands_) -> None:
    sample = commands_.add_parser(
        "sample",
        help="generate text with a trained language model",
        description=(
            "Generates --length characters after --prime with the language model of "
            "CHECKPOINT and prints them as they are generated (a jitted lax.scan per chunk "
            "of characters). Every sample starts from the zero state and reads --prime. "
            "The same --seed gives the same text; --temperature 0 gives the greedy "
            "(argmax) sequence."
        ),
    )
    a = sample.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train")
    a("--prime", default=PRIME,
      help="text read from the zero state before generating; '' starts from the zero state "
      f"itself (default {PRIME!r})")  # fmt: skip
    a(
        "--length",
        type=integer_range(1, MAX_LENGTH),
        default=LENGTH,
        help=f"characters to generate, 1..{MAX_LENGTH:,} (default {LENGTH})",
    )
    a(
        "--temperature",
        type=nonnegative_float,
        default=TEMPERATURE,
        help="divide the logits by this; lower is more conservative, 0 is greedy "
        f"(default {TEMPERATURE})",
    )
    a("--top-k", type=positive, default=None, metavar="K",
      help="sample only among the K most likely characters (default: all)")  # fmt: skip
    a("--top-p", type=positive_float, default=1.0, metavar="P",
      help="nucleus sampling: only among the most likely characters whose probabilities "
      "add up to at least P, in (0, 1] (default 1.0: all)")  # fmt: skip
    a("--num-samples", type=integer_range(1, MAX_SAMPLES), default=1, metavar="N",
      help=f"N independent samples, each from the zero state, 1..{MAX_SAMPLES:,} "
      "(default 1)")  # fmt: skip
    a("--seed", type=seed, default=0, help="random seed of the sampling (default 0)")

    tag = commands_.add_parser(
        "tag",
        help="print a Python file with each character's predicted token type",
        description=(
            "Runs the tagging model of CHECKPOINT (trained with --task tag) over FILE and "
            "prints it with each character's predicted token type: coloured in a terminal, "
            "otherwise with a line of one-letter codes under each line. When tokenize can "
            "read FILE, also prints the accuracy against its token types; --diff marks the "
            "characters where they disagree; --json prints one JSON object instead."
        ),
    )
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


def _add_eval_parser(commands_) -> None:
    ev = commands_.add_parser(
        "eval",
        help="score a checkpoint on files: bits/char (lm) or accuracy (tag)",
        description=(
            "Scores the model of CHECKPOINT on the files PATH... (folders are read "
            "recursively), each file from a zero state with the state carried through the "
            "whole file. lm: bits/char, nats/char, perplexity; tag: accuracy, per class and "
            "the confusion table against tokenize. Characters outside the model's "
            "vocabulary are counted and reported."
        ),
    )
    a = ev.add_argument
    a("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by bptt-jax train")
    a("paths", metavar="PATH", nargs="+", help="UTF-8 text files or folders")
    a("--task", choices=TASKS, default=None,
      help="refuse a checkpoint of the other task (default: the checkpoint's)")  # fmt: skip
    a("--json", action="store_true",
      help="print one JSON object (lm: bits_per_char, chars, ...; tag: accuracy, "
      "chars, ...) (default: a text report)")  # fmt: skip


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
    _add_check_parser(commands_)
    _add_diagnose_parser(commands_)
    _add_bench_parser(commands_)
    add_train_parser(commands_)
    _add_use_parsers(commands_)
    _add_eval_parser(commands_)
    return parser


_HANDLERS = {
    "check": commands.check,
    "diagnose": commands.diagnose,
    "bench": commands.bench,
    "train": commands.train_command,
    "sample": commands.sample_command,
    "tag": commands.tag,
    "eval": commands.eval_command,
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
        return commands.error(command, _one_line(e))
    except (ValueError, TypeError) as e:  # the library's argument checks
        if debugging(args):
            raise
        return commands.error(command, _one_line(e))
    except BrokenPipeError as e:  # standard output closed early (| head)
        if debugging(args):
            raise
        silence_stdout()
        return commands.error(command, f"cannot write standard output: {e.strerror or e}")
    except MemoryError:
        if debugging(args):
            raise
        return commands.error(command, "out of memory; choose smaller sizes")
    except Exception as e:  # a bug: still one line, and how to get the traceback
        if debugging(args):
            raise
        return commands.error(
            command,
            f"internal error {type(e).__name__}: {_one_line(e)} (a bug in bptt-jax; "
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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


def run() -> None:
    """Console-script entry point: exits with :func:`main`'s status."""
    owns_process()
    sys.exit(main())
