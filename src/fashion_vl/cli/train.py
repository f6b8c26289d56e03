"""``fvl-train``: train a task from a Hydra config (``fvl-train experiment=demo_itc``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fashion_vl.cli._run import (
    CONFIG_ROOT,
    check_data_dir,
    check_tokenizer_fits,
    extras,
    instantiate_list,
    log,
    prepare_ddp_relaunch,
    reset_distributed,
    resolve_ckpt_path,
    resolved_config,
    trainer_callbacks,
)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build data, model, task, callbacks, loggers and trainer from ``cfg``; fit; optionally test.

    Returns the final metrics (``trainer.callback_metrics`` as floats) and the objects built.
    """
    from lightning import seed_everything

    from fashion_vl.lit.callbacks import ConfigInCheckpoint

    check_data_dir(cfg)
    seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="partial")
    net = instantiate(cfg.model, _convert_="all")
    lit = instantiate(cfg.lit, net=net, _convert_="partial")
    check_tokenizer_fits(datamodule, net)
    callbacks = trainer_callbacks(cfg)
    callbacks.append(ConfigInCheckpoint(resolved_config(cfg)))
    loggers = instantiate_list(cfg.get("logger"), "logger")
    prepare_ddp_relaunch()
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial")
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved_config(cfg))
    objects = dict(cfg=cfg, datamodule=datamodule, net=net, lit=lit, trainer=trainer)
    try:
        if cfg.get("train", True):
            trainer.fit(
                lit,
                datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir),
            )
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
        write_metrics(Path(cfg.paths.output_dir) / "metrics.json", cfg, metrics, trainer)
    return metrics, objects


def write_metrics(path: Path, cfg: DictConfig, metrics: dict[str, float], trainer: Any) -> None:
    """The run's final metrics, what it started from and where its checkpoints are, as JSON."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    log.info("metrics written to %s", path)


@hydra.main(version_base="1.3", config_path=CONFIG_ROOT, config_name="train")
def main(cfg: DictConfig) -> float | None:
    extras(cfg)
    metrics, _ = train(cfg)
    metric = cfg.get("metric")
    if metric and metric in metrics:
        return metrics[metric]  # what a Hydra sweeper optimises
    return None


if __name__ == "__main__":
    main()
