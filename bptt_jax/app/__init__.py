"""The application: the command line, training, data, checkpoints, sampling, plots."""
