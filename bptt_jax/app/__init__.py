"""The application, a folder per concern, each importing only those below it; from the top:
cli (the command line), inference (using a trained model), training, measure (check, bench,
diagnose, the plots), io (reading and writing)."""
