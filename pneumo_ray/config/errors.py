"""The one exception for a user's mistake (a flag, a folder, a file, an earlier result).

The library raises `UserError` with one line that names the path or flag, what is wrong and what to
do; the commands in study/ print it as `error: …` and exit with status 2 (`--debug` shows the
traceback). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message is the whole one-line explanation."""
