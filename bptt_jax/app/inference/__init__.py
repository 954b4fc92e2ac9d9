"""Using a trained model: load, sample, tag, eval."""
