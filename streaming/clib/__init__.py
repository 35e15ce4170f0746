"""Sources of the C and Fortran clients of external solvers (package data); see streaming.client_config."""
