"""The one exception type that reaches users as a single line on stderr, and the default sink
of warnings and notes."""

import sys


class KwsError(Exception):
    """Bad input or an impossible request: the CLI prints ``error: <message>`` and exits 1.

    Raise it with a message that names the file or option at fault and, where possible, what to do.
    """


def print_stderr(message: str) -> None:
    """One line on stderr: where warnings and notes go when no other sink is given."""
    print(message, file=sys.stderr)
