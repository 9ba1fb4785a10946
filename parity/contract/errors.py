"""The single exception type parity raises for anything a user can fix."""
from __future__ import annotations


class ParityError(Exception):
    """An error with a message meant for the user: what failed, what was seen, what is valid.

    The CLI prints ``str(error)`` as one line and exits non-zero; nothing else should
    reach the user as a traceback.
    """

    exit_code = 1


class UsageError(ParityError):
    """Bad command-line usage (exit code 2)."""

    exit_code = 2
