"""The exception types the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or an unusable environment, explained in one line for the user."""

    exit_code = 2


class WeightsError(UserError):
    """A weights file that cannot be used, with a one-line reason."""


class IndexError_(UserError):
    """An index that is missing, locked, mismatched or damaged."""


class CodesError(UserError):
    """Binary codes missing, mismatched or unreadable."""


class NotFoundError(IndexError_):
    """No indexed file with that id (never was, deleted since, or failed to index)."""


class OutsideError(IndexError_):
    """A catalogued file that now resolves (through a symlink) outside the indexed folders."""
