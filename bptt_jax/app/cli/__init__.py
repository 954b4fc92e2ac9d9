"""The ``bptt-jax`` command line: :mod:`.main` and one module per command."""
