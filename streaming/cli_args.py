"""Command-line pieces shared by the ``pdestream`` subcommands: ``--set`` parsing and the user-error type."""

from __future__ import annotations

from collections.abc import Sequence


def parse_set(items: Sequence[str] | None) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}``; a malformed item is a user error."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r}: expected key=value, e.g. --set dt=0.001")
        out[key.strip()] = value.strip()
    return out


class CliError(ValueError):
    """A malformed command line."""
