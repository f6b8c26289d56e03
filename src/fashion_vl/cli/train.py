"""``fvl-train``: train a task from a Hydra config (``fvl-train experiment=demo_itc``)."""

from __future__ import annotations

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
    callbacks = instantiate_list(cfg.get("callbacks"), "callbacks")
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
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(lit, datamodule=datamodule, ckpt_path=best or None)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        reset_distributed()
    if trainer.is_global_zero and trainer.checkpoint_callback is not None:
        log.info("checkpoints in %s", Path(trainer.checkpoint_callback.dirpath or ""))
    return metrics, objects


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
