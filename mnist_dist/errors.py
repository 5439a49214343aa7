"""How a run ends, for the shell: UserError is a mistake a user can cause (the CLI prints it as one line and
exits 2); PREEMPTED_EXIT_CODE is a run that saved its state and wants to be started again."""

USER_ERROR_EXIT_CODE = 2  # as argparse exits on a usage error
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL; shown by sacct for the job and in the W&B run record
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UserError(Exception):
    pass


class DataError(UserError):
    """A data problem the user can fix (missing or corrupt file, no network); printed as one line."""


class PeerLost(UserError):
    """Another rank of the job died: printed as one line like a user error (its own log says why), so that the
    survivors leave at once instead of waiting for the launcher or a timeout."""
