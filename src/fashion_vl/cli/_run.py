"""What ``fvl-train`` and ``fvl-eval`` share: building objects from config, and run plumbing."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, read_write

from fashion_vl.utils.rich_utils import print_config_tree

log = logging.getLogger("fashion_vl")

CONFIG_ROOT = "pkg://fashion_vl.conf"


# Warnings raised inside third-party code that our users cannot act on.
_THIRD_PARTY_NOISE = (
    r"'set_vital' is deprecated",
    r".*isinstance\(treespec, LeafSpec\)",
    r".*litlogger",
    # our frozen parts (MPFC tokenizer, CSA-Net's BN and layer4, UniFashion's ViT/LLM) stay in eval mode
    # by design; their modules' train() keeps them there
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


def extras(cfg: DictConfig) -> None:
    """Process-level set-up: quiet tokenizer forks, one log line per message, the config tree."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in _THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    if cfg.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    set_matmul_precision(cfg)
    # Lightning attaches its own console handler when imported; Hydra's root handlers already print to
    # the console and to the run's log file, so let Lightning's records go there once.
    import lightning  # noqa: F401  (import now, so its handlers exist to be removed)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)
        lightning_log.propagate = True
        lightning_log.addFilter(_drop_advertising)
    if cfg.get("print_config") and _is_rank_zero():
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")


def set_matmul_precision(cfg: DictConfig) -> None:
    """``float32_matmul_precision`` (highest | high | medium) for CUDA matmuls and cuDNN convolutions;
    CPU runs keep full fp32 whatever the key says, so CPU results do not depend on it."""
    precision = str(cfg.get("float32_matmul_precision", "highest"))
    if precision not in ("highest", "high", "medium"):
        raise ValueError(f"float32_matmul_precision must be highest, high or medium, not {precision!r}")
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"


def _drop_advertising(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage() and "litmodels" not in record.getMessage()


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


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


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``null``: start fresh; ``last``: this run's ``checkpoints/last.ckpt`` if it exists (auto-resume,
    e.g. after a pre-emption with a fixed ``run_name``), else start fresh; anything else: a file."""
    if ckpt_path is None:
        if (Path(output_dir) / "checkpoints" / "last.ckpt").is_file():
            log.warning(
                "%s already holds a run; starting a fresh one there (its checkpoints will be replaced). "
                "Use ckpt_path=last to resume it instead.",
                output_dir,
            )
        return None
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: no %s yet, starting fresh", last)
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {path}")
    return str(path)


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP child processes re-run *this job*, not the whole sweep.

    Lightning starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<run dir>``. Under
    ``-m`` that argv is the sweep, so every child would start a sweep of its own (the known Hydra +
    DDP trap). For a multirun job we rewrite argv to this job's own overrides and point
    ``hydra.run.dir`` at the job's output folder (harmless when the job does not use DDP).
    """
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc.run):
        hc.run.dir = hc.runtime.output_dir


def reset_distributed() -> None:
    """After a DDP job inside a multirun, tear the process group down so the next job can start one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in ("MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if key != "LOCAL_RANK" or os.environ.get("LOCAL_RANK") == "0":
            os.environ.pop(key, None)


def check_data_dir(cfg: DictConfig) -> None:
    """Fail first, and plainly, when the data folder every experiment reads is missing."""
    data_dir = Path(str(cfg.paths.data_dir)).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"paths.data_dir={data_dir} does not exist. Generate the synthetic data with "
            f"`fvl-data synth --out {data_dir}` or point paths.data_dir at your datasets/ folder "
            "(see docs/data.md)."
        )
    if cfg.get("data_check", True):
        from fashion_vl.data.check import preflight_check

        num_attributes = (cfg.get("data") or {}).get("num_attributes") or 2232
        reports = preflight_check(data_dir, num_attributes=int(num_attributes))
        found = sorted({r.dataset for r in reports if not r.absent})
        log.info(f"data folder {data_dir}: pre-flight check passed ({', '.join(found) or 'no dataset'})")


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
