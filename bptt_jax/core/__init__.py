"""The numerical core: the model, the hand BPTT and its building blocks.

Pure: no I/O, no global state, no argument checks (those are in :mod:`bptt_jax.api`).
"""
