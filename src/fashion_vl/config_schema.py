"""Typed schemas of the config groups users override most: ``trainer``, ``data``, ``lit.optimizer``,
``lit.scheduler``, ``paths`` and the root keys of ``train.yaml``/``eval.yaml``.

They are OmegaConf structured configs (dataclasses). :func:`validate_config` merges each composed
sub-tree into its schema, so ``trainer.max_steps=abc`` fails at once, naming the key, the value and the
type; the values it converts (``"7"`` -> ``7``) are written back. The schemas are open: keys they do not
list (a Trainer argument not named here, a DataModule's own options, ``_target_``) pass unchecked, since
each DataModule and scheduler takes its own set; the ones listed are those every experiment shares. The
ranges (batch size > 0...) are checked by :mod:`fashion_vl.cli.preflight`.

Imports nothing heavy (no torch, no Lightning): the pre-flight runs before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

# typing.Optional rather than `X | None`: OmegaConf reads the annotations of structured configs and
# does not understand PEP 604 unions on Python 3.11.
# ruff: noqa: UP045


class ConfigError(ValueError):
    """A config value of the wrong type or out of range, in one line: the key, the value and what the
    key expects."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{key}={_show(value)}: expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected


class MissingFileConfigError(ConfigError, FileNotFoundError):
    """A config key naming a file or folder that does not exist (``ckpt_path``, ``model.init_from``,
    ``paths.data_dir``)."""


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainerSchema:
    """The ``trainer`` group (``lightning.pytorch.Trainer`` arguments)."""

    accelerator: str = "auto"
    devices: Any = "auto"  # int, "auto" or a list of device ids
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: Optional[int] = field(default=None, metadata=_help("-1 for no limit"))
    min_epochs: Optional[int] = None
    max_steps: int = field(default=-1, metadata=_help("-1 for no limit"))
    min_steps: Optional[int] = None
    check_val_every_n_epoch: Optional[int] = 1
    val_check_interval: Any = None  # steps (int) or a fraction of an epoch (float)
    log_every_n_steps: Optional[int] = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    num_sanity_val_steps: Optional[int] = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    enable_checkpointing: Optional[bool] = None
    deterministic: Any = None  # true, false or "warn"
    benchmark: Optional[bool] = None
    use_distributed_sampler: bool = True
    sync_batchnorm: bool = False
    detect_anomaly: bool = False


@dataclass
class DataSchema:
    """What every ``data`` DataModule config shares."""

    batch_size: int = 64
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    max_text_length: Optional[int] = None
    pin_memory: Optional[bool] = None
    seed: int = 0
    strict_images: bool = False
    jpeg_draft: bool = True
    max_image_pixels: Optional[int] = field(default=None, metadata=_help("null for no limit"))
    empty_captions: str = "keep"


@dataclass
class OptimizerSchema:
    """``lit.optimizer`` (a ``torch.optim`` partial; AdamW for every task)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class WarmupMultiStepSchema:
    """``lit.scheduler`` when it is ``fashion_vl.optim.warmup_multistep``."""

    warmup_steps: int = 0
    warmup_factor: float = 0.25
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class PathsSchema:
    root_dir: str = "."
    data_dir: str = "data/synthetic"
    log_dir: str = "logs"
    output_dir: str = "."
    work_dir: str = "."


@dataclass
class RunSchema:
    """Root keys of ``train.yaml`` and ``eval.yaml``."""

    task_name: str = "train"
    experiment_name: str = "default"
    run_name: str = "default"
    seed: int = 42
    # a hub name, or a ``_target_`` mapping (open_clip's tokenizers: conf/embedder/)
    tokenizer: Any = "bert-base-uncased"
    image_size: int = 224
    resize_size: int = 256
    ckpt_path: Optional[str] = field(default=None, metadata=_help("null, last or a checkpoint file"))
    metric: Optional[str] = None
    metric_mode: str = "max"
    data_check: bool = True
    float32_matmul_precision: str = "high"
    num_threads: Optional[int] = field(default=None, metadata=_help("null for torch's default"))
    print_config: bool = True
    ignore_warnings: bool = False
    train: bool = True
    test: bool = False
    split: str = "test"


# (config path, schema, when): the sub-trees validated; ``when`` picks the schema by ``_target_``.
SCHEMAS: tuple[tuple[str, type, str | None], ...] = (
    ("", RunSchema, None),
    ("paths", PathsSchema, None),
    ("trainer", TrainerSchema, None),
    ("data", DataSchema, None),
    ("lit.optimizer", OptimizerSchema, None),
    ("lit.scheduler", WarmupMultiStepSchema, "fashion_vl.optim.warmup_multistep"),
)

_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_PLURALS = {"int": "integers", "float": "numbers", "str": "strings"}


def _expected(schema: type, name: str) -> str:
    """``an integer (-1 for no limit)``: a schema field's annotation in words, and its help."""
    f = next(f for f in fields(schema) if f.name == name)
    base = str(f.type)  # the annotation as written (postponed annotations)
    optional = base.startswith("Optional[")
    if optional:
        base = base[len("Optional[") : -1]
    if base.lower().startswith(("list[", "tuple[")):
        inner = base.split("[", 1)[1].split(",")[0].rstrip("]")
        word = f"a list of {_PLURALS.get(inner, inner)}"
    else:
        word = _WORDS.get(base, base)
    if optional:
        word += " or null"
    helptext = f.metadata.get("help")
    return f"{word} ({helptext})" if helptext else word


def _subtree(cfg: DictConfig, path: str) -> DictConfig | None:
    node = cfg if not path else OmegaConf.select(cfg, path, throw_on_missing=False)
    return node if isinstance(node, DictConfig) else None


def _resolved_items(node: DictConfig, names: set[str]) -> dict[str, Any]:
    """The schema's keys present in ``node``, resolved; a value whose interpolation cannot be resolved
    yet is left out (it fails, or resolves, later)."""
    out = {}
    for name in names & set(node.keys()):
        try:
            value = node[name]
        except OmegaConfBaseException:
            continue
        out[name] = (
            OmegaConf.to_container(value, resolve=True)
            if isinstance(value, DictConfig | ListConfig)
            else value
        )
    return out


def validate_config(cfg: DictConfig) -> None:
    """Merge each sub-tree of :data:`SCHEMAS` into its schema; raise :class:`ConfigError` at the first
    value of the wrong type; write converted values back into ``cfg``."""
    for path, schema, target in SCHEMAS:
        node = _subtree(cfg, path)
        if node is None or (target is not None and node.get("_target_") != target):
            continue
        names = {f.name for f in fields(schema)}
        given = _resolved_items(node, names)
        typed = OmegaConf.structured(schema)
        try:
            merged = OmegaConf.merge(typed, OmegaConf.create(given))
        except OmegaConfBaseException as err:
            key = str(getattr(err, "full_key", "") or "")
            name = key.split("[")[0].split(".")[0]
            if name not in names:
                raise
            full = f"{path}.{name}" if path else name
            raise ConfigError(full, given.get(name), _expected(schema, name)) from None
        with open_dict(node):
            for name, value in given.items():
                converted = merged[name]
                if not isinstance(value, list | dict) and type(converted) is not type(value):
                    node[name] = converted
