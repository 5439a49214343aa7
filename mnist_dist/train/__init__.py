"""Training: the loop (loop.py, read top to bottom), its state and resume contract (resume), the distributed
runtime the Accelerator gives it (runtime), how a run stops and comes back (stopping), and the one writer of the
main process's files (writer)."""
