"""Progress bars (rich) that turn themselves off when asked to or when output is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True, extra: str = "",
                 fields: dict | None = None) -> Iterator[_Bar]:
    """A rich progress bar; ``extra`` is a format string over task ``fields``, e.g. ``"loss {task.fields[loss]}"``."""
    if not enabled:
        yield _Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    with Progress(*columns, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, **(fields or {})))
