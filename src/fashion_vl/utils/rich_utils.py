"""Rich renderings: the config tree saved with every run, and results tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

CONFIG_ORDER = ("data", "model", "lit", "callbacks", "logger", "trainer", "paths")
# results-table columns holding names rather than numbers: left-aligned
TEXT_COLUMNS = ("model", "task", "protocol", "run", "metric", "checkpoint", "split")


def config_tree(cfg: DictConfig, resolve: bool = True) -> rich.tree.Tree:
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER and k != "hydra"]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    return tree


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, resolve: bool = True) -> None:
    """Print the config as a tree and write it to ``save_to`` (plain text)."""
    tree = config_tree(cfg, resolve)
    rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with save_to.open("w") as f:
            rich.print(tree, file=f)


def results_table(
    title: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None
) -> Table:
    """A table with one row per mapping; numbers get two decimals."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in TEXT_COLUMNS else "right")
    for r in rows:
        table.add_row(
            *(
                f"{v:.2f}" if isinstance(v, float) else str(v if v is not None else "-")
                for v in (r.get(c) for c in columns)
            )
        )
    return table


def print_table(table: Table, fit: bool = False) -> None:
    """Print without wrapping cells, also when stdout is a log file (rich assumes 80 columns there).
    ``fit``: widen the console to the table's natural width, so that a table wider than the terminal
    keeps one line per row (the terminal wraps the lines) instead of squeezing its columns."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if fit:
        natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
        console = Console(width=max(console.width, natural))
    console.print(table)
