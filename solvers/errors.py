"""Errors raised by solvers for a user's mistake (bad config, parameter out of range, blow-up)."""


class SolverError(ValueError):
    """A user's mistake in a solver call or config; the message names the problem and the fix."""


class SimulationBlowUp(SolverError):
    """A simulation produced NaN or Inf; the message names the simulation's parameters."""
