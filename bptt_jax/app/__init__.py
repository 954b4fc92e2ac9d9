"""The application: the command line (cli), training, reading and writing (io), using a trained
model (inference), and the gradients checked, timed and studied (measure)."""
