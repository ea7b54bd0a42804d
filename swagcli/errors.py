"""The one error type the CLI turns into a one-line message and exit code 2."""


class SwagError(Exception):
    """A user-facing error: bad recipe, missing file, malformed input.

    The CLI prints ``error: <message>`` on one line and exits with code 2; nothing else is
    printed (no traceback). Messages name the file and, where there is one, the field.
    """

    exit_code = 2
