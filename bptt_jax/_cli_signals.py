"""Imported first of all by ``bptt_jax/__init__.py``: in the ``bptt-jax`` command line,
Ctrl-C and SIGTERM are held from here on, before JAX loads, so that one sent in the
first second is honoured (:func:`bptt_jax.app.training.signals.hold_early_signals`; a no-op
when a program imports ``bptt_jax``)."""

from .app.training.signals import hold_early_signals

hold_early_signals()
