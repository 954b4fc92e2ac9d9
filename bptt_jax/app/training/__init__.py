"""``bptt-jax train``'s work: configuration, step, loop and its state, validation, run folder."""
