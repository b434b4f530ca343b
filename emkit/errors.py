"""Errors a user can cause and fix.

An EmkitError carries one sentence that names the file, line or key at fault and what to
do; the CLI prints it and exits with code 2. Anything else is a bug and keeps its traceback.
"""


class EmkitError(Exception):
    """Bad input or environment: a sentence for the user, exit code 2."""

    exit_code = 2


class JudgeErrorsExceeded(EmkitError):
    """Too many judge calls failed; the finished judgments are stored."""

    exit_code = 1
