"""The one exception type that reaches users as a single line on stderr."""


class KwsError(Exception):
    """Bad input or an impossible request: the CLI prints ``error: <message>`` and exits 1.

    Raise it with a message that names the file or option at fault and, where possible, what to do.
    """
