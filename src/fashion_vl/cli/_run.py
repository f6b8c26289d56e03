"""What ``fvl-train`` and ``fvl-eval`` share besides building the run (:mod:`fashion_vl.build`): process
set-up, checkpoint paths, and DDP plumbing under a Hydra multirun."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from fashion_vl.build import CONFIG_MODULE
from fashion_vl.utils.rich_utils import print_config_tree

log = logging.getLogger("fashion_vl")

CONFIG_ROOT = f"pkg://{CONFIG_MODULE}"


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
    set_num_threads(cfg)
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


def set_num_threads(cfg: DictConfig) -> None:
    """``num_threads``: torch's intra-op threads (``null``: torch's default, the core count). CPU results
    depend on the thread count (reductions split differently), so pinning it makes figures comparable
    across machines with different core counts."""
    if cfg.get("num_threads"):
        import torch

        torch.set_num_threads(int(cfg.num_threads))


def _drop_advertising(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage() and "litmodels" not in record.getMessage()


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


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
        from fashion_vl.cli.run_files import resume_checkpoint

        last = resume_checkpoint(Path(output_dir) / "checkpoints")  # last.ckpt, else last.prev.ckpt
        if last is not None:
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: no %s yet, starting fresh", Path(output_dir) / "checkpoints" / "last.ckpt")
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
