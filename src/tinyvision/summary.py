"""What the console shows at the end of a run."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from tinyvision.console import log_to_file


@rank_zero_only
def print_summary(metrics: dict[str, Any], console: Console | None = None) -> None:
    """A short table: test accuracy, best validation accuracy, time and the run dir."""
    console = console or Console()
    table = Table(title="tinyvision run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    table.add_row("test accuracy", percent(metrics.get("test/acc")))
    table.add_row("best val accuracy", percent(metrics.get("val/acc_best")))
    table.add_row("epochs", str(metrics.get("epochs")))
    table.add_row("time", f"{metrics.get('wall_seconds', 0):.1f} s ({metrics.get('train_samples_per_second') or 0:,.0f} training images/s)")
    table.add_row("run dir", _short(metrics.get("run_dir")))
    console.print(table)
    for warning in metrics.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {warning}")
    # The log file gets the figures as one line; the console has just shown them in the table.
    log_to_file(f"test/acc={metrics.get('test/acc')} val/acc_best={metrics.get('val/acc_best')} run_dir={metrics.get('run_dir')}")


def _short(path: str | None) -> str:
    """A run dir relative to the working directory when it lies inside it."""
    if not path:
        return "-"
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
