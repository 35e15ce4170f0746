"""Errors raised by surrogates for a user's mistake (unknown model, bad hyper-parameter, bad shape)."""


class SurrogateError(ValueError):
    """A user's mistake in a surrogate call or config; the message names the problem and the fix."""
