"""One exception type for bad input: its message names the file and the fix."""


class PgolfError(Exception):
    """A problem the user can fix; the CLI prints the message alone, without a traceback."""
