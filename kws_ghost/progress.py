"""When to show progress bars: only to a person watching a terminal.

A bar redraws its line with ``\\r``; in a log file or a pipe that becomes thousands of fragments,
and with ``--json`` the output is for a program. Commands pass the result to tqdm as
``disable=not progress_enabled(...)``.
"""

from __future__ import annotations

import sys
from typing import Optional


def progress_enabled(requested: Optional[bool] = None, as_json: bool = False) -> bool:
    """Whether to draw progress bars on stderr.

    ``requested``: an explicit choice (True or False) wins; None (the default) means "when stderr
    is a terminal". ``as_json``: the command prints JSON, so never.
    """
    if as_json or requested is False:
        return False
    if requested:
        return True
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
