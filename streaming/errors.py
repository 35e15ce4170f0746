"""Errors of a running job that stop it with a one-line message (not a user's typo, but not a bug either)."""


class JobFailed(RuntimeError):
    """The job cannot go on (e.g. workers keep failing); the message says what happened and what to check."""
