"""One exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input (a name, a path, a value): the message names the value and the fix."""
