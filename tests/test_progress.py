"""The progress bar keeps its counts readable in a narrow terminal."""

import io

from rich.console import Console
from rich.progress import Progress

from streaming.progress import bar_columns


def render(width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width)
    bar = Progress(*bar_columns("loss {task.fields[loss]} val {task.fields[val]} | {task.fields[rate]}"),
                   console=console)
    task = bar.add_task("train", total=400, loss="4.765e-03", val="1.355e-02",
                        rate="18.2 it/s 1165 smp/s buf 4096/4096")
    bar.update(task, advance=200)
    console.print(bar.make_tasks_table(bar.tasks))
    return buf.getvalue()


def test_counts_stay_whole_and_the_rates_wrap_at_80_columns():
    out = render(80)
    assert "200/400" in out and "…" not in out, out  # rich squeezed the count to "…" before
    assert "4096/4096" in out and len(out.splitlines()) > 1, out  # the text wrapped instead of being cut
    assert max(len(line) for line in out.splitlines()) <= 80


def test_one_line_when_the_terminal_is_wide():
    assert len(render(160).strip().splitlines()) == 1
