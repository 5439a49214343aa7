"""The run folder: its file names and readers (rundir), whole-file writes (atomic), the lock that makes one run its
only writer (lock), training-state checkpoints (checkpoint) and the model a run leaves (artifact)."""
