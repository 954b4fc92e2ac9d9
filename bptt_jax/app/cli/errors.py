"""How a command fails: one line ``bptt-jax COMMAND: error: MESSAGE`` on stderr, status 1."""

from __future__ import annotations

import sys


def error(command: str, message: str) -> int:
    """Prints ``bptt-jax COMMAND: error: MESSAGE`` on stderr; returns the status 1."""
    print(f"bptt-jax {command}: error: {message}", file=sys.stderr)
    return 1


def one_line(e: BaseException) -> str:
    """The exception's message on one line (whitespace collapsed, at most 2000 characters)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."
