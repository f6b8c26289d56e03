"""The one way from a config to a run: :func:`compose` (the Hydra config ``fvl-train`` / ``fvl-eval``
would compose) and :func:`build` (the DataModule, the network, the LightningModule and the Trainer).

``fvl-train``, ``fvl-eval``, the benchmarks, the tests' fixtures and the notebooks all go through these,
so a run built anywhere is the run the CLI builds (same order of construction, hence the same random
initialisation for a seed)::

    from fashion_vl.build import build, compose

    cfg = compose("train", ["experiment=demo_itc", "paths.data_dir=data/synthetic"], output_dir="logs/nb")
    run = build(cfg)
    run.trainer.fit(run.lit, datamodule=run.datamodule)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("fashion_vl")

CONFIG_MODULE = "fashion_vl.conf"
STAGES = ("fit", "eval")


def compose(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> DictConfig:
    """The config ``fvl-train`` (``config_name="train"``) or ``fvl-eval`` (``"eval"``) composes from
    ``overrides``, with Hydra's compose API (no working-directory change, no logging set-up).

    With ``output_dir`` it is a config a run can take: the Hydra part included, every path
    (``paths.output_dir``, ``log_dir``...) pointing there, and set as the current Hydra config, as the
    CLI does (callbacks and loggers read it). ``data_dir`` sets ``paths.data_dir``.
    """
    GlobalHydra.instance().clear()
    run = output_dir is not None
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=run)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        if run:
            for key in ("root_dir", "output_dir", "work_dir"):
                cfg.paths[key] = str(output_dir)
            cfg.paths.log_dir = str(Path(output_dir) / "logs")
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
    if run:
        HydraConfig().set_config(cfg)
    return cfg


@dataclass
class Run:
    """What :func:`build` made from a config."""

    cfg: DictConfig
    datamodule: Any
    net: Any
    lit: Any
    trainer: Any


def build(cfg: DictConfig, *, stage: str = "fit", data: bool = True, trainer: bool = True) -> Run:
    """The run of ``cfg``: seeded (``cfg.seed``), then the DataModule (``cfg.data``, after the data
    folder's pre-flight check), the network (``cfg.model``), the LightningModule (``cfg.lit`` with the
    network) and the Trainer (``cfg.trainer`` with the ``callbacks`` and ``logger`` groups), in this
    order, which fixes every initial weight for a seed.

    Args:
        stage: ``fit`` (``fvl-train``: checkpoints also store the resolved config, loggers get it as
            hyper-parameters) or ``eval`` (``fvl-eval``).
        data: build the DataModule (and check the data folder and that the tokenizer fits the model);
            ``False`` for a network and LightningModule alone (a notebook loading a checkpoint).
        trainer: build the Trainer.
    """
    from lightning import seed_everything

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    seed_everything(cfg.seed, workers=True)
    datamodule = None
    if data:
        check_data_dir(cfg)
        datamodule = instantiate(cfg.data, _convert_="partial")
    net = instantiate(cfg.model, _convert_="all")
    lit = instantiate(cfg.lit, net=net, _convert_="partial")
    if datamodule is not None:
        check_tokenizer_fits(datamodule, net)
    run_trainer = None
    if trainer:
        from fashion_vl.lit.callbacks import ConfigInCheckpoint

        callbacks = trainer_callbacks(cfg)
        if stage == "fit":
            callbacks.append(ConfigInCheckpoint(resolved_config(cfg)))
        loggers = instantiate_list(cfg.get("logger"), "logger")
        run_trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial"
        )
        if stage == "fit":
            for logger in run_trainer.loggers:
                logger.log_hyperparams(resolved_config(cfg))
    return Run(cfg=cfg, datamodule=datamodule, net=net, lit=lit, trainer=run_trainer)


def build_from_checkpoint(path: str | Path, *, data: bool = False, trainer: bool = False) -> Run:
    """The run a ``fvl-train`` checkpoint came from, with its weights: the resolved config the
    checkpoint stores (``fvl_config``) built by :func:`build` (``stage="eval"``), then the checkpoint
    loaded as Lightning loads one (the module's ``on_load_checkpoint``, then a strict load). The modules
    are left in training mode, as built; call ``.eval()`` to use them.

    A checkpoint without a stored config (an ``fvl-convert`` output) or with one of an older config
    layout: :func:`compose` its experiment and :func:`build` it, then load the weights the same way.
    """
    import torch

    checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    stored = checkpoint.get("fvl_config")
    if not stored:
        raise ValueError(f"{path} stores no run config (fvl_config): compose its experiment and build it")
    run = build(OmegaConf.create(stored), stage="eval", data=data, trainer=trainer)
    run.lit.on_load_checkpoint(checkpoint)
    run.lit.load_state_dict(checkpoint["state_dict"], strict=True)
    return run


# ------------------------------------------------------------------------------------------- pieces


def instantiate_list(cfg: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a callbacks/logger config group."""
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{what} config must be a mapping of name -> object config")
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def trainer_callbacks(cfg: DictConfig) -> list[Any]:
    """The ``callbacks`` group's objects, less the progress bar when ``trainer.enable_progress_bar`` is
    false (Lightning refuses a progress-bar callback then, and the default group holds one)."""
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = instantiate_list(cfg.get("callbacks"), "callbacks")
    if cfg.get("trainer", {}).get("enable_progress_bar", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


# Data folders that passed the annotation check in this process (the CLIs check before importing
# Lightning, then :func:`build` would again; a multirun's jobs share their folder).
_DATA_CHECKED: set[tuple[str, int]] = set()


def check_data_dir(cfg: DictConfig) -> None:
    """Fail first, and plainly, when the data folder every experiment reads is missing (the annotation
    check runs once per folder and process)."""
    data_dir = Path(str(cfg.paths.data_dir)).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"paths.data_dir={data_dir} does not exist. Generate the synthetic data with "
            f"`fvl-data synth --out {data_dir}` or point paths.data_dir at your datasets/ folder "
            "(see docs/data.md)."
        )
    if cfg.get("data_check", True):
        from fashion_vl.data.check import preflight_check
        from fashion_vl.data.formats import NUM_PSEUDO_ATTRIBUTES

        num_attributes = (cfg.get("data") or {}).get("num_attributes") or NUM_PSEUDO_ATTRIBUTES
        key = (str(data_dir.resolve()), int(num_attributes))
        if key in _DATA_CHECKED:
            return
        reports = preflight_check(data_dir, num_attributes=int(num_attributes))
        found = sorted({r.dataset for r in reports if not r.absent})
        log.info(f"data folder {data_dir}: pre-flight check passed ({', '.join(found) or 'no dataset'})")
        _DATA_CHECKED.add(key)


def check_tokenizer_fits(datamodule: Any, net: Any) -> None:
    """The tokenizer's ids must index the model's embedding table."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    vocab = getattr(net, "vocab_size", None)
    if tokenizer is None or vocab is None:
        return
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer '{datamodule.tokenizer_name}' has {len(tokenizer)} tokens but the model's "
            f"model.text_encoder.vocab_size is {vocab}: raise the vocab size or use the model's own tokenizer"
        )


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
