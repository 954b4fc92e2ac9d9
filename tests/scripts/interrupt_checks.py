"""Run in a subprocess by tests/app/training/test_loop.py: a run stopped at step 5 by a real
SIGINT (and by a KeyboardInterrupt from a caller's own handler), resumed, against
an uninterrupted run.

Signals are sent only to this process, never to the test process: a SIGINT in
pytest's process can land anywhere, inside another library's callback among them
(it once raised KeyboardInterrupt in hypothesis's garbage-collection hook). Prints
one JSON object for the test to assert on.
"""

import dataclasses
import json
import os
import signal
import sys
import tempfile

import jax
import numpy as np

from bptt_jax.app.io.checkpoint import load_checkpoint
from bptt_jax.app.io.corpus import load_corpus
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train

TINY = dict(max_files=12, batch_size=16, seq_len=32, hidden_size=48, eval_every=0,
            save_every=0, val_chars=8192, schedule="constant", warmup=0, steps=12)  # fmt: skip
STOP = 5

# A process started with SIGINT ignored (a pytest-xdist worker's child, a background
# job) keeps it ignored, and train() then leaves it so: restore Python's handler, as a
# terminal's process has it.
signal.signal(signal.SIGINT, signal.default_int_handler)

corpus = load_corpus(max_files=TINY["max_files"])
quiet = dict(corpus=corpus, progress=False, echo=lambda s: None)
tmp = tempfile.mkdtemp()


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state, state.h))]


def bitwise_equal(a, b):
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )


def send_sigint(state):
    """A real Ctrl-C, delivered between steps: train()'s handler sets its flag."""
    if state.step == STOP:
        os.kill(os.getpid(), signal.SIGINT)


def raise_keyboard_interrupt(state):
    """What a caller's own SIGINT handler raises (train() in a thread installs none)."""
    if state.step == STOP:
        raise KeyboardInterrupt


out = {"sigint_handler_restored": None}
references = {}
for how in ("sigint_at_5", "sigint_at_5_cosine", "keyboard_interrupt_at_5"):
    config = TrainConfig(**TINY, out=f"{tmp}/{how}")
    if how.endswith("cosine"):  # the resumed run continues the schedule where it was
        config = dataclasses.replace(config, schedule="cosine", warmup=3)
    key = (config.schedule, config.warmup)
    if key not in references:
        full = dataclasses.replace(config, out=f"{tmp}/full-{config.schedule}")
        references[key] = train(full, **quiet)
    uninterrupted = references[key]
    before = signal.getsignal(signal.SIGINT)
    on_step = raise_keyboard_interrupt if how.startswith("keyboard") else send_sigint
    first = train(config, on_step=on_step, **quiet)
    out["sigint_handler_restored"] = signal.getsignal(signal.SIGINT) is before
    saved_step = load_checkpoint(first.checkpoint)[0]["step"]  # before the resume rewrites it
    resumed = train(config, resume=first.checkpoint, **quiet)
    out[how] = {
        "interrupted": first.interrupted,
        "signum": first.signum,
        "step": first.state.step,
        "saved_step": saved_step,
        "first_equals_uninterrupted": bitwise_equal(first.state, uninterrupted.state),
        "resumed_step": resumed.state.step,
        "resumed_chunk_is_uninterrupted_chunk": resumed.state.chunk == uninterrupted.state.chunk,
        "resumed_equals_uninterrupted": bitwise_equal(resumed.state, uninterrupted.state),
    }

json.dump(out, sys.stdout)
