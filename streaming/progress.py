"""Progress bars (rich) that turn themselves off when asked to or when output is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


def bar_columns(extra: str = "") -> list[ProgressColumn]:
    """Columns of a bar: description, bar, done/total, elapsed, remaining, then the ``extra`` text.

    In a narrow terminal the ``extra`` text wraps onto more lines; the counts and times never shrink to "...".
    """
    def keep() -> Column:
        return Column(no_wrap=True)

    columns = [TextColumn("[bold]{task.description}", table_column=keep()), BarColumn(24, table_column=keep()),
               MofNCompleteColumn(table_column=keep()), TimeElapsedColumn(table_column=keep()),
               TimeRemainingColumn(table_column=keep())]
    if extra:
        columns.append(TextColumn(extra, table_column=Column(overflow="fold")))
    return columns


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True, extra: str = "",
                 fields: dict | None = None) -> Iterator[_Bar]:
    """A rich progress bar; ``extra`` is a format string over task ``fields``, e.g. ``"loss {task.fields[loss]}"``."""
    if not enabled:
        yield _Bar(None, None)
        return
    with Progress(*bar_columns(extra), transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, **(fields or {})))
