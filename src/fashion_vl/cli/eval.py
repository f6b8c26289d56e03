"""``fvl-eval``: evaluate a checkpoint (or a randomly initialised model) and print a results table.

``fvl-eval experiment=demo_itc ckpt_path=logs/.../last.ckpt`` runs the experiment's test split,
prints the metrics as a table and writes ``metrics.json`` in the run folder; a captioning model also
writes the generated captions with their references (``captions.json``, this process's share).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from fashion_vl.build import build, check_data_dir, resolved_config
from fashion_vl.cli._run import CONFIG_ROOT, extras, log
from fashion_vl.cli.errors import reported_errors
from fashion_vl.cli.preflight import preflight
from fashion_vl.utils.atomic import write_json_atomic
from fashion_vl.utils.rich_utils import print_table, results_table


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build the run from ``cfg`` (:func:`fashion_vl.build.build`), then test (or validate) the
    checkpoint ``cfg.ckpt_path`` (``null``: the randomly initialised model) and report its metrics."""
    preflight(cfg, "fvl-eval")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).expanduser().is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    run = build(cfg, stage="eval")
    datamodule, lit, trainer = run.datamodule, run.lit, run.trainer
    if ckpt is None:
        log.warning("ckpt_path is null: evaluating the randomly initialised model")
    # Lightning asks for the training callbacks when a checkpoint is given; evaluation needs none.
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
    split = cfg.get("split", "test")
    if split == "val":
        results = trainer.validate(lit, datamodule=datamodule, ckpt_path=ckpt)
    else:
        results = trainer.test(lit, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    out = Path(cfg.paths.output_dir) / "metrics.json"
    if trainer.is_global_zero:
        payload = {
            "experiment": cfg.get("experiment_name"),
            "ckpt_path": str(ckpt) if ckpt else None,
            "split": split,
            "metrics": metrics,
            "config": resolved_config(cfg),
        }
        write_json_atomic(out, payload)
        rows = [{"metric": k, "value": v} for k, v in sorted(metrics.items())]
        title = (
            f"{cfg.get('experiment_name')} - {'random init' if ckpt is None else Path(ckpt).name} ({split})"
        )
        print_table(results_table(title, rows, ["metric", "value"]))
        log.info("metrics written to %s", out)
        captions = write_captions(lit, out.parent / "captions.json")
        if captions is not None:
            log.info("captions written to %s", captions)
        if cfg.get("viz") and split != "val":
            from fashion_vl.viz.examples import save_examples

            name = (
                "generated_examples.png" if getattr(lit, "test_examples", None) else "retrieval_examples.png"
            )
            grid = save_examples(lit, datamodule, Path(cfg.paths.output_dir) / name)
            if grid is None:
                log.warning("viz: this task has no result grid")
            else:
                log.info("result grid written to %s", grid)
    return metrics, dict(trainer=trainer, lit=lit, datamodule=datamodule)


def write_captions(lit: Any, path: Path) -> Path | None:
    """The test captions a captioning module generated (``test_captions``: a
    :class:`~fashion_vl.metrics.captioning.CaptionScores`), each with its references, as JSON; ``None``
    when the module captioned nothing."""
    captions = getattr(lit, "test_captions", None)
    if captions is None or not len(captions):
        return None
    rows = [
        {"caption": h, "references": list(r)}
        for h, r in zip(captions.hypotheses, captions.references, strict=True)
    ]
    path.write_text(json.dumps(rows, indent=1))
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_ROOT, config_name="eval")
def main(cfg: DictConfig) -> None:
    with reported_errors("fvl-eval"):
        preflight(cfg, "fvl-eval")  # before extras imports Lightning and torch
        check_data_dir(cfg)  # the annotation files, before Lightning too (evaluate() skips it then)
        extras(cfg)
        evaluate(cfg)


if __name__ == "__main__":
    main()
