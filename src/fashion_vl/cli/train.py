"""``fvl-train``: train a task from a Hydra config (``fvl-train experiment=demo_itc``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from fashion_vl.build import build, check_data_dir
from fashion_vl.cli._run import (
    CONFIG_ROOT,
    _is_rank_zero,
    extras,
    log,
    prepare_ddp_relaunch,
    reset_distributed,
    resolve_ckpt_path,
)
from fashion_vl.cli.errors import reported_errors
from fashion_vl.cli.preflight import preflight
from fashion_vl.cli.run_files import checkpoint_step, clean_checkpoint_dir, finished_metrics
from fashion_vl.cli.run_files import write_metrics as write_run_metrics


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build the run from ``cfg`` (:func:`fashion_vl.build.build`: data, model, task, callbacks,
    loggers, trainer); fit; optionally test.

    Returns the final metrics (``trainer.callback_metrics`` as floats) and the objects built.
    """
    preflight(cfg, "fvl-train")
    check_data_dir(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if _is_rank_zero():
        clean_checkpoint_dir(output_dir / "checkpoints")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir) if cfg.get("train", True) else None
    finished = finished_metrics(output_dir, ckpt_path, cfg.trainer.get("max_steps"))
    if finished is not None:
        log.info(
            "%s already finished (step %s, trainer.max_steps=%s): nothing to train; its results stay in %s "
            "(raise trainer.max_steps to train on, or pick another run_name)",
            output_dir, finished.get("global_step"), cfg.trainer.max_steps, output_dir / "metrics.json",
        )  # fmt: skip
        return finished["metrics"], dict(cfg=cfg)
    prepare_ddp_relaunch()
    run = build(cfg, stage="fit")
    datamodule, lit, trainer = run.datamodule, run.lit, run.trainer
    objects = dict(cfg=cfg, datamodule=datamodule, net=run.net, lit=lit, trainer=trainer)
    try:
        if cfg.get("train", True):
            start = checkpoint_step(ckpt_path) if ckpt_path else 0
            trainer.fit(lit, datamodule=datamodule, ckpt_path=ckpt_path)
            if ckpt_path and trainer.global_step == start:
                recover_metrics(trainer, lit, datamodule, output_dir)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = next(
                (c.best_model_path for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), ""
            )
            trainer.test(lit, datamodule=datamodule, ckpt_path=best or None)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        reset_distributed()
    if trainer.is_global_zero:
        write_metrics(
            Path(cfg.paths.output_dir) / "metrics.json", cfg, metrics, trainer, resumed=bool(ckpt_path)
        )
    return metrics, objects


def write_metrics(
    path: Path, cfg: DictConfig, metrics: dict[str, float], trainer: Any, resumed: bool = False
) -> None:
    """The run's final metrics, what it started from and where its checkpoints are, as JSON (written
    atomically; an attempt that ``resumed`` the run never replaces it by one with fewer metrics)."""
    last = next((c for c in trainer.checkpoint_callbacks if getattr(c, "save_last", False)), None)
    best = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    payload = {
        "experiment": cfg.get("experiment_name"),
        "init_from": cfg.model.get("init_from"),
        "global_step": trainer.global_step,
        "metrics": metrics,
        "last_checkpoint": str(Path(last.dirpath) / "last.ckpt") if last and last.dirpath else None,
        "best_checkpoint": best.best_model_path if best else None,
    }
    if write_run_metrics(path, payload, keep_richer=resumed):
        log.info("metrics written to %s", path)


def recover_metrics(trainer: Any, lit: Any, datamodule: Any, output_dir: Path) -> None:
    """A resumed run with nothing left to train (requeued after its last save): validate the checkpoint
    so that a run killed before writing ``metrics.json`` still gets its results."""
    log.info("resumed at step %d with nothing left to train", trainer.global_step)
    if not (output_dir / "metrics.json").is_file() and trainer.limit_val_batches != 0:
        trainer.validate(lit, datamodule=datamodule)


@hydra.main(version_base="1.3", config_path=CONFIG_ROOT, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reported_errors("fvl-train"):
        preflight(cfg, "fvl-train")  # before extras imports Lightning and torch
        check_data_dir(cfg)  # the annotation files, before Lightning too (train() skips it then)
        extras(cfg)
        metrics, _ = train(cfg)
    metric = cfg.get("metric")
    if metric and metric in metrics:
        return metrics[metric]  # what a Hydra sweeper optimises
    return None


if __name__ == "__main__":
    main()
