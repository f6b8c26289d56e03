"""Combined results of several ``fvl-eval`` runs: one row per run, one column per metric.

Each run is the ``metrics.json`` that ``fvl-eval`` writes in its run folder (keys ``experiment``,
``ckpt_path``, ``split``, ``metrics``, ``config``). FashionViL and UniFashion log the same keys for the
same task (``test/full/t2i_r@10``, ``test/mean_r@10``...), so their rows share columns; a run without a
metric (FashionViL has no ``caption/*``) leaves its cell blank. Columns drop the split prefix
(``full/t2i_r@10``; the split is a column of its own) and are ordered by task (:data:`TASKS`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from rich.table import Table

from fashion_vl.utils.rich_utils import results_table

METRICS_FILE = "metrics.json"
REQUIRED_KEYS = ("experiment", "ckpt_path", "split", "metrics")
LABEL_COLUMNS = ("run", "model", "checkpoint", "split")

# (task, test on a metric name without its split prefix), in column order; the first match wins.
TASKS: tuple[tuple[str, Any], ...] = (
    ("cross-modal retrieval", lambda m: m.startswith(("full/", "sample100/"))),
    ("composed retrieval", lambda m: re.fullmatch(r"(\w+_)?r@\d+|avg", m) is not None),
    ("composed retrieval, ITM re-ranked", lambda m: m.startswith("rerank/")),
    ("composed retrieval, two-tower baselines", lambda m: m.startswith(("image/", "text/", "sum/"))),
    ("Marqo's queries", lambda m: m.startswith("marqo/")),
    ("captioning", lambda m: m.startswith("caption/")),
    ("other", lambda m: True),
)

# model._target_ (or the experiment name) -> the model family shown in the table
FAMILIES = (
    ("unifashion", "UniFashion"),
    ("fashionvil", "FashionViL"),
    ("csanet", "CSA-Net"),
    ("openclip", "CLIP-family"),
)


class ResultsError(ValueError):
    """A ``metrics.json`` that cannot be read as an ``fvl-eval`` result; the message names the file."""


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: where its ``metrics.json`` is, what produced it and its metrics (names
    without the split prefix: ``full/t2i_r@10``, not ``test/full/t2i_r@10``)."""

    path: Path
    experiment: str
    family: str
    checkpoint: str
    split: str
    metrics: dict[str, float]

    def label_row(self) -> dict[str, str]:
        return {
            "run": self.experiment,
            "model": self.family,
            "checkpoint": self.checkpoint,
            "split": self.split,
        }


def metrics_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``metrics.json`` files named by ``paths``: a file as given; a run folder's own
    ``metrics.json``; otherwise every ``metrics.json`` below the folder (the jobs of a multirun folder),
    in job order. A path that yields none is an error."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif (path / METRICS_FILE).is_file():
            files.append(path / METRICS_FILE)
        elif path.is_dir() and (found := sorted(path.rglob(METRICS_FILE), key=_natural_key)):
            files.extend(found)
        else:
            what = "no such file or folder" if not path.exists() else f"no {METRICS_FILE} in or below it"
            raise ResultsError(f"{path}: {what} (pass fvl-eval run folders or their {METRICS_FILE})")
    return files


def read_run(path: str | Path) -> RunResult:
    """One ``metrics.json`` as a :class:`RunResult`; :class:`ResultsError` names the file when it is
    not JSON, lacks one of :data:`REQUIRED_KEYS` or holds a non-numeric metric."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(payload, dict):
        raise ResultsError(
            f"{path}: expected a JSON object written by fvl-eval, got {type(payload).__name__}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ResultsError(f"{path}: missing key(s) {', '.join(missing)} (not a metrics.json from fvl-eval?)")
    split = str(payload["split"])
    raw = payload["metrics"]
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}: 'metrics' must map metric names to numbers")
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ResultsError(f"{path}: metric {key!r} is {value!r}, not a number")
        metrics[key.removeprefix(f"{split}/")] = float(value)
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    experiment = str(payload["experiment"] or config.get("experiment_name") or path.parent.name)
    return RunResult(
        path=path,
        experiment=experiment,
        family=model_family(config, experiment),
        checkpoint=checkpoint_name(payload["ckpt_path"]),
        split=split,
        metrics=metrics,
    )


def collect(paths: Iterable[str | Path]) -> list[RunResult]:
    """The runs of ``paths`` (files or folders, see :func:`metrics_files`), in the order given."""
    return [read_run(p) for p in metrics_files(paths)]


def model_family(config: Mapping[str, Any], experiment: str = "") -> str:
    """FashionViL, UniFashion... from the saved config's ``model._target_``, else the experiment name;
    a model of no known family shows its class name, a run with neither shows ``?``."""
    model = config.get("model")
    target = str(model.get("_target_", "")) if isinstance(model, Mapping) else ""
    for text in (target, experiment):
        for needle, family in FAMILIES:
            if needle in text.lower():
                return family
    return target.rsplit(".", 1)[-1] if target else "?"


def checkpoint_name(ckpt_path: str | None) -> str:
    """``<run folder>/last.ckpt`` for ``.../<run folder>/checkpoints/last.ckpt`` (the file name alone
    says little), the file name otherwise, ``random init`` without a checkpoint."""
    if not ckpt_path:
        return "random init"
    path = Path(ckpt_path)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def task_of(metric: str) -> str:
    """The task a metric name (without split prefix) belongs to, one of :data:`TASKS`."""
    return next(task for task, matches in TASKS if matches(metric))


def columns_by_task(runs: Sequence[RunResult], patterns: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Every metric any run has (or those matching one of the ``fnmatch`` ``patterns``), grouped by
    task in :data:`TASKS` order, each group in natural order (``r@5`` before ``r@10``)."""
    names = {m for run in runs for m in run.metrics}
    if patterns:
        names = {m for m in names if any(fnmatch(m, p) for p in patterns)}
    groups: dict[str, list[str]] = {task: [] for task, _ in TASKS}
    for name in sorted(names, key=_natural_key):
        groups[task_of(name)].append(name)
    return {task: names for task, names in groups.items() if names}


def table_rows(runs: Sequence[RunResult], columns: Sequence[str]) -> list[dict[str, str]]:
    """One mapping per run: the label columns, then each metric column as text (``""`` where the run
    lacks it). Two decimals (recalls are percentages), four in a column whose values are all below 1
    (caption scores are fractions: BLEU-4 0.0312)."""
    decimals = {c: 4 if all(abs(r.metrics[c]) < 1 for r in runs if c in r.metrics) else 2 for c in columns}
    return [
        {
            **run.label_row(),
            **{c: f"{run.metrics[c]:.{decimals[c]}f}" if c in run.metrics else "" for c in columns},
        }
        for run in runs
    ]


def combined_table(
    runs: Sequence[RunResult], patterns: Sequence[str] | None = None, title: str = "fvl-eval results"
) -> Table:
    """The rich table: one row per run, one column per metric, shared metrics in one column."""
    columns = [c for group in columns_by_task(runs, patterns).values() for c in group]
    return results_table(title, table_rows(runs, columns), [*LABEL_COLUMNS, *columns])


def to_markdown(runs: Sequence[RunResult], patterns: Sequence[str] | None = None) -> str:
    """The same table in Markdown (blank cells where a run lacks a metric), after a line per task
    naming its columns."""
    groups = columns_by_task(runs, patterns)
    columns = [c for group in groups.values() for c in group]
    header = [*LABEL_COLUMNS, *columns]
    lines = [f"- {task}: {', '.join(f'`{c}`' for c in names)}" for task, names in groups.items()]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table_rows(runs, columns):
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in header) + " |")
    return "\n".join(lines) + "\n"


def to_json(runs: Sequence[RunResult], patterns: Sequence[str] | None = None) -> dict[str, Any]:
    """The table as data: the columns by task and, per run, its labels, file and metrics (unrounded)."""
    groups = columns_by_task(runs, patterns)
    columns = {c for group in groups.values() for c in group}
    return {
        "columns": groups,
        "runs": [
            {
                **run.label_row(),
                "path": str(run.path),
                "metrics": {k: v for k, v in run.metrics.items() if k in columns},
            }
            for run in runs
        ],
    }


def write_results(
    runs: Sequence[RunResult], out_dir: str | Path, patterns: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(to_json(runs, patterns), indent=1))
    md_path.write_text(to_markdown(runs, patterns))
    return json_path, md_path


def _natural_key(item: str | Path) -> list[object]:
    """Sort key comparing digit runs as numbers (``r@5`` < ``r@10``, job ``2`` < job ``10``)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(item))]
