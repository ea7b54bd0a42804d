"""The one error type the CLI turns into a one-line message and exit code 2."""


class SwagError(Exception):
    """A user-facing error: bad recipe, missing file, malformed input.

    The CLI prints ``error: <message>`` on one line and exits with code 2; nothing else is
    printed (no traceback). Messages name the file and, where there is one, the field.
    """

    exit_code = 2


class Interrupted(BaseException):
    """A stop by a signal (SIGTERM, a second Ctrl-C) that could not wait for a clean boundary; like
    KeyboardInterrupt it is no ``Exception``, so nothing swallows it on the way out. The CLI exits
    with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
