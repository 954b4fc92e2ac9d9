"""``bptt-jax train``'s work: configuration, the model it describes, step, loop and its state,
validation, the training checkpoint's schema, the run folder."""
