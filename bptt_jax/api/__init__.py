"""The public layer: argument checks and the dispatch on the model type, once."""
