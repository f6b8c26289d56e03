"""The pre-flight of ``fvl-train`` and ``fvl-eval``: types and values of the composed config, checked
before anything heavy is imported or built, each mistake reported in one line naming the key, the value
and what the key expects (:class:`~fashion_vl.config_schema.ConfigError`).

Types come from the schemas of :mod:`fashion_vl.config_schema`; ranges and files from :func:`check_values`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fashion_vl.config_schema import ConfigError, MissingFileConfigError, validate_config

PRECISIONS = (
    "64-true", "64", 64, "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16",
    "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16",
)  # fmt: skip

# Keys naming a checkpoint file to initialise from, anywhere under `model` (model.init_from,
# model.qformer.init_from, model.vae_from...).
INIT_KEYS = ("init_from", "vae_from")


def preflight(cfg: DictConfig, command: str = "fvl-train") -> None:
    """Types (:func:`~fashion_vl.config_schema.validate_config`), then values and files."""
    validate_config(cfg)
    check_values(cfg, command)


def _get(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """``(present, resolved value)`` of a dotted key; a value that cannot be resolved yet counts as absent."""
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False, default=_ABSENT)
    except OmegaConfBaseException:
        return False, None
    if node is _ABSENT:
        return False, None
    if isinstance(node, DictConfig | ListConfig):
        return True, OmegaConf.to_container(node, resolve=True)
    return True, node


_ABSENT = object()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# (key, test the value must pass, what the key expects); a key absent from the config is not checked.
VALUE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.batch_size", lambda v: v > 0, "a batch size > 0"),
    ("data.eval_batch_size", lambda v: v is None or v > 0, "a batch size > 0 (or null)"),
    ("data.num_workers", lambda v: v >= 0, "a number of DataLoader workers >= 0"),
    ("data.max_text_length", lambda v: v is None or v >= 3, "at least 3 tokens ([CLS], a word, [SEP])"),
    ("data.max_image_pixels", lambda v: v is None or v > 0, "a pixel count > 0 (or null for no limit)"),
    ("data.empty_captions", lambda v: v in ("keep", "skip"), "keep or skip"),
    ("lit.optimizer.lr", lambda v: _number(v) and math.isfinite(v) and v > 0, "a learning rate > 0"),
    ("lit.optimizer.weight_decay", lambda v: v >= 0, "a weight decay >= 0"),
    ("lit.optimizer.eps", lambda v: v > 0, "an epsilon > 0"),
    ("lit.optimizer.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two betas in [0, 1)"),
    ("lit.lr_multiplier", lambda v: _number(v) and v > 0, "a factor > 0"),
    ("lit.scheduler.warmup_steps", lambda v: v >= 0, "a number of steps >= 0"),
    ("lit.scheduler.warmup_factor", lambda v: 0 < v <= 1, "a factor in (0, 1]"),
    ("lit.scheduler.gamma", lambda v: v > 0, "a factor > 0"),
    ("trainer.max_steps", lambda v: v == -1 or v > 0, "a number of steps > 0 (or -1 for no limit)"),
    ("trainer.max_epochs", lambda v: v is None or v == -1 or v > 0, "a number of epochs > 0 (or -1)"),
    ("trainer.accumulate_grad_batches", lambda v: v >= 1, "a number of batches >= 1"),
    ("trainer.log_every_n_steps", lambda v: v is None or v >= 1, "a number of steps >= 1"),
    ("trainer.precision", lambda v: v in PRECISIONS, "a Lightning precision: 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true"),
    ("trainer.val_check_interval", lambda v: v is None or (_number(v) and v > 0), "steps (int) or a fraction of an epoch (float) > 0"),
    ("trainer.devices", lambda v: v == "auto" or (isinstance(v, int) and (v > 0 or v == -1)) or isinstance(v, list | str), "a device count > 0, -1, auto or a list of ids"),
    ("callbacks.checkpoint_last.every_n_train_steps", lambda v: isinstance(v, int) and v > 0, "a number of steps > 0"),
    ("callbacks.nonfinite.max_consecutive_skips", lambda v: isinstance(v, int) and v >= 1, "a number of steps >= 1"),
    ("image_size", lambda v: v > 0, "a size in pixels > 0"),
    ("resize_size", lambda v: v > 0, "a size in pixels > 0"),
    ("metric_mode", lambda v: v in ("max", "min"), "max or min"),
    ("num_threads", lambda v: v is None or v > 0, "a thread count > 0 (or null for torch's default)"),
    ("float32_matmul_precision", lambda v: v in ("highest", "high", "medium"), "highest, high or medium"),
    ("split", lambda v: v in ("test", "val"), "test or val"),
)  # fmt: skip


def check_values(cfg: DictConfig, command: str = "fvl-train") -> None:
    """Ranges (:data:`VALUE_RULES`), the data folder, ``ckpt_path`` and the ``model`` init files."""
    for key, rule, expected in VALUE_RULES:
        present, value = _get(cfg, key)
        if not present:
            continue
        try:
            ok = bool(rule(value))
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(key, value, expected)
    present, data_dir = _get(cfg, "paths.data_dir")
    if present and data_dir is not None and not Path(str(data_dir)).expanduser().is_dir():
        raise MissingFileConfigError(
            "paths.data_dir",
            data_dir,
            f"an existing folder (write the synthetic data with `fvl-data synth --out {data_dir}` or point it "
            "at your datasets/ folder, see docs/data.md)",
        )
    present, ckpt = _get(cfg, "ckpt_path")
    if present and ckpt is not None:
        resumable = command == "fvl-train"
        if not (resumable and ckpt == "last") and not Path(str(ckpt)).expanduser().is_file():
            raise MissingFileConfigError(
                "ckpt_path", ckpt, "an existing checkpoint file, null" + (" or last" if resumable else "")
            )
    model = cfg.get("model")
    if isinstance(model, DictConfig):
        for key, value in _init_files(model, "model"):
            if not Path(str(value)).expanduser().is_file():
                raise MissingFileConfigError(key, value, "an existing checkpoint file or null")


def _init_files(node: DictConfig, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of every non-null :data:`INIT_KEYS` entry below ``node``, resolved."""
    for name in node:
        key = f"{prefix}.{name}"
        try:
            value = node[name]
        except OmegaConfBaseException:
            continue
        if isinstance(value, DictConfig):
            yield from _init_files(value, key)
        elif name in INIT_KEYS and value is not None:
            yield key, value
