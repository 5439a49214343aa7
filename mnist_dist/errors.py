"""The one base class for mistakes a user can cause: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    pass
