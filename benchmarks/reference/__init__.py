"""Published reference data for the validation of the solvers (Ghia et al. 1982; Schafer & Turek 1996)."""
