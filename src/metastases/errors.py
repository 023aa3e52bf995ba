"""Errors that are the user's to fix: the stage prints one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input, bad params or a missing upstream output; the message says what and how to fix it."""


class ParamsError(UserError):
    """A value in params.yaml (or on the command line) is invalid."""
