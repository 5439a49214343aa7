"""How a run ends, for the shell: UserError is a mistake a user can cause (the CLI prints it as one line and
exits 2); PREEMPTED_EXIT_CODE is a run that saved its state and wants to be started again."""

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL; shown by sacct for the job and in the W&B run record


class UserError(Exception):
    pass
