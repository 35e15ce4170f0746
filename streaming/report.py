"""The end-of-run summary table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(summary: dict) -> None:
    """Print the main numbers of a run's ``summary.json`` as a table."""
    table = Table(title=f"run {summary.get('run_dir', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = summary.get("last_val", {})
    rows = [
        ("gradient steps", summary.get("steps")),
        ("wall time (s)", summary.get("seconds")),
        ("final train loss", summary.get("final_loss")),
        ("exported surrogate: step (chosen by)", f"{summary.get('best_step')} ({summary.get('select')})"),
        ("  its val one-step rel. L2", summary.get("best_val_one_step_rel_l2")),
        ("  its val rollout rel. L2", summary.get("best_val_rollout_rel_l2")),
        ("last val rollout rel. L2", last.get("val_rollout_rel_l2")),
        ("simulations done / dropped", f"{summary.get('sims_done')} / {summary.get('sims_dropped')}"),
        ("samples received (duplicates)", f"{summary.get('samples_received')} ({summary.get('duplicates')})"),
        ("MB received", summary.get("megabytes_received")),
    ]
    ext = summary.get("external")
    if ext:  # external clients: counts by reason, e.g. {"token": 1, "timeout": 2}
        for key, label in (("rejected_connections", "external connections closed/refused"),
                           ("dropped_sims", "external simulations dropped")):
            counts = ext.get(key, {})
            detail = ", ".join(f"{k} {v}" for k, v in counts.items())
            rows.append((label, f"{sum(counts.values())}" + (f" ({detail})" if detail else "")))
    for name, value in rows:
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    for msg in summary.get("dropped", [])[:5]:
        Console().print(f"[yellow]dropped:[/] {msg}")
