"""One comparison table of several models over several protocols (``fvl-compare``, ``make compare``).

Each (model, protocol) pair is one ``fvl-eval`` job of a Hydra multirun (``embedder=<model>
experiment=<protocol>``); a job folder holds its ``metrics.json`` and ``.hydra/hydra.yaml`` (whose
``runtime.choices`` name the embedder and the experiment). The table has one row per model and, per
protocol, its headline metrics (:data:`PROTOCOLS`), then the model's parameter count and encode
throughput; the CSV and JSON keep every metric. The plot draws recall@K against K, one panel per
protocol, one line per model.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fashion_vl.utils.results import METRICS_FILE, ResultsError, read_run

log = logging.getLogger("fashion_vl")


@dataclass(frozen=True)
class Protocol:
    """An evaluation experiment as the table shows it: a short label, the headline metrics (names without
    the split prefix) and the recall@K curve drawn for it (``{k}`` in ``curve`` is replaced by each K)."""

    label: str
    headline: tuple[str, ...]
    curve: str | None = None
    ks: tuple[int, ...] = ()


PROTOCOLS: dict[str, Protocol] = {
    "eval_openclip_fashiongen": Protocol(
        "FashionGen retrieval",
        ("sample100/rsum", "full/t2i_r@10", "full/rsum", "marqo/text/mrr",
         "marqo/category/precision@10", "marqo/subcategory/precision@10"),
        "full/t2i_r@{k}", (1, 5, 10),
    ),
    "eval_openclip_fashion200k_t2i": Protocol(
        "Fashion200k text-to-image", ("full/t2i_r@10", "marqo/text/recall@10", "marqo/text/mrr"),
        "full/t2i_r@{k}", (1, 5, 10),
    ),
    "eval_openclip_fashion200k_composed": Protocol(
        "Fashion200k composed", ("sum/r@10", "image/r@10", "text/r@10"), "sum/r@{k}", (1, 10, 50)
    ),
    "eval_openclip_fashioniq": Protocol(
        "FashionIQ composed", ("sum/mean_r@10", "sum/mean_r@50", "image/mean_r@10", "text/mean_r@10"),
        "sum/mean_r@{k}", (10, 50),
    ),
    "eval_openclip_subcategory": Protocol("FashionGen sub-category", ("acc", "macro_f1")),
    "eval_openclip_category": Protocol("FashionGen category", ("acc", "macro_f1")),
    "eval_openclip_polyvore": Protocol("Polyvore outfits", ("r@10", "r@30"), "r@{k}", (10, 30, 50)),
}  # fmt: skip

MODEL_COLUMNS = ("parameters (M)", "images/s", "texts/s")


@dataclass
class ModelRow:
    """One model's figures: protocol -> metric -> value, and its size and throughput."""

    name: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def job_choices(metrics_path: Path) -> tuple[str, str]:
    """(embedder, experiment) of the job that wrote ``metrics_path``, from its ``.hydra/hydra.yaml``."""
    hydra_file = metrics_path.parent / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        raise ResultsError(f"{metrics_path}: no {hydra_file.name} beside it (not an fvl-eval job folder)")
    choices = (
        (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
    )
    embedder, experiment = choices.get("embedder"), choices.get("experiment")
    if not embedder or not experiment:
        raise ResultsError(f"{hydra_file}: the job has no embedder=... or experiment=... choice")
    return str(embedder), str(experiment)


def collect_rows(sweep_dir: str | Path, models: Sequence[str] | None = None) -> list[ModelRow]:
    """The rows of a multirun folder: every job's metrics under its embedder and experiment, in the
    order of ``models`` (as found when not given)."""
    files = sorted(Path(sweep_dir).rglob(METRICS_FILE), key=_natural_key)
    if not files:
        raise ResultsError(f"{sweep_dir}: no {METRICS_FILE} below it (did the sweep run?)")
    rows: dict[str, ModelRow] = {}
    for path in files:
        embedder, experiment = job_choices(path)
        run = read_run(path)
        rows.setdefault(embedder, ModelRow(embedder)).metrics[experiment] = run.metrics
    order = list(models) if models else list(rows)
    missing = [m for m in order if m not in rows]
    if missing:
        raise ResultsError(f"{sweep_dir}: no job of the model(s) {', '.join(missing)}")
    return [rows[m] for m in order]


def protocol_order(rows: Sequence[ModelRow]) -> list[str]:
    """The protocols any row has: the known ones in :data:`PROTOCOLS` order, then the others."""
    seen = {p for row in rows for p in row.metrics}
    return [p for p in PROTOCOLS if p in seen] + sorted(seen - set(PROTOCOLS))


def headline_columns(rows: Sequence[ModelRow]) -> list[tuple[str, str]]:
    """(protocol, metric) of every table column."""
    columns = []
    for protocol in protocol_order(rows):
        known = PROTOCOLS.get(protocol)
        names = known.headline if known else sorted({m for r in rows for m in r.metrics.get(protocol, {})})
        columns += [(protocol, m) for m in names]
    return columns


def _label(protocol: str) -> str:
    return PROTOCOLS[protocol].label if protocol in PROTOCOLS else protocol


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _info_cells(info: Mapping[str, Any]) -> list[str]:
    params = info.get("parameters")
    return [
        _cell(params / 1e6 if params is not None else None),
        _cell(info.get("images_per_s"), 1),
        _cell(info.get("texts_per_s"), 1),
    ]


def to_markdown(rows: Sequence[ModelRow], title: str = "Every model on the same protocols") -> str:
    """The table: one row per model; per protocol its headline metrics (percent); parameters and
    throughput last. A metric a model was not scored on stays blank."""
    columns = headline_columns(rows)
    header = ["model", *(f"{_label(p)}: {m}" for p, m in columns), *MODEL_COLUMNS]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [
            row.name,
            *(_cell(row.metrics.get(p, {}).get(m)) for p, m in columns),
            *_info_cells(row.info),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({str(r.info.get("device")) for r in rows if r.info.get("device")})
    if devices:
        sizes = sorted({r.info.get("batch_size") for r in rows if r.info.get("batch_size")})
        lines += [
            "",
            f"Throughput: encode calls on {', '.join(devices)}, batches of {sizes}, median of 3 after warm-up.",
        ]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[ModelRow], path: Path) -> Path:
    """Every metric of every protocol (``<protocol>/<metric>`` columns), one row per model."""
    columns = sorted(
        {f"{p}/{m}" for r in rows for p, values in r.metrics.items() for m in values}, key=_natural_key
    )
    info = ["parameters", "images_per_s", "texts_per_s", "device"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *columns, *info])
        for row in rows:
            flat = {f"{p}/{m}": v for p, values in row.metrics.items() for m, v in values.items()}
            writer.writerow(
                [row.name, *(flat.get(c, "") for c in columns), *(row.info.get(k, "") for k in info)]
            )
    return path


def plot_recall_curves(rows: Sequence[ModelRow], path: Path) -> Path | None:
    """Recall@K against K per protocol (panels), one line per model; ``None`` without matplotlib or
    without any protocol that has a curve."""
    protocols = [p for p in protocol_order(rows) if p in PROTOCOLS and PROTOCOLS[p].curve]
    if not protocols:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'fashion-vl[clip]'): no recall@K plot")
        return None
    fig, axes = plt.subplots(1, len(protocols), figsize=(3.6 * len(protocols), 3.2), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        spec = PROTOCOLS[protocol]
        for row in rows:
            values = row.metrics.get(protocol, {})
            points = [
                (k, values[spec.curve.format(k=k)]) for k in spec.ks if spec.curve.format(k=k) in values
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=row.name)
        ax.set_title(f"{spec.label}\n{spec.curve.format(k='K')}", fontsize=9)
        ax.set_xlabel("K")
        ax.set_ylim(0, 100)
        ax.set_xticks(list(spec.ks))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall@K (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(
    rows: Sequence[ModelRow], out_dir: str | Path, title: str | None = None
) -> dict[str, Path]:
    """``compare.md``, ``compare.csv``, ``compare.json`` and (with matplotlib) ``recall_at_k.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"markdown": out / "compare.md", "csv": out / "compare.csv", "json": out / "compare.json"}
    written["markdown"].write_text(to_markdown(rows, *(title,) if title else ()))
    write_csv(rows, written["csv"])
    payload = {"protocols": {p: _label(p) for p in protocol_order(rows)},
               "models": [{"name": r.name, "metrics": r.metrics, "info": r.info} for r in rows]}  # fmt: skip
    written["json"].write_text(json.dumps(payload, indent=1))
    plot = plot_recall_curves(rows, out / "recall_at_k.png")
    if plot is not None:
        written["plot"] = plot
    return written


def _natural_key(item: str | Path) -> list[object]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(item))]
