"""Reading and writing: the corpus and its streams, files, the split, the checkpoint format."""
