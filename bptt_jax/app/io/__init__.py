"""Reading and writing: files, the corpus and its streams, the split, the checkpoint format, and
the checks made before any work (a writable folder, enough memory)."""
