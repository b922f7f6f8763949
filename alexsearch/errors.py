"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or an unusable environment, explained in one line for the user."""

    exit_code = 2
