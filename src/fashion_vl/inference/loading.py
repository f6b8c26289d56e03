"""``fashion_vl.load``: one call from any model of ours to its inference object.

Sources, and what each needs:

- a Lightning checkpoint written by ``fvl-train``: its ``fvl_config`` (the run's resolved config) says
  what to build; its ``state_dict`` holds every weight;
- a folder written by ``save_pretrained`` / ``fvl-export``: ``config.json`` and ``model.safetensors``
  (frozen hub towers named in ``config.json``'s ``hub_weights`` come from the hub instead);
- a hub id ``org/name``: that folder, from the local Hugging Face cache or the hub;
- a converted authors' checkpoint (``fvl-convert mmf|lavis``): it stores no config, so the caller names
  the experiment it fits (``experiment=``, with Hydra ``overrides=``) or passes a run config (``config=``);
- an open_clip model (``hf-hub:org/name``, ``open_clip:<architecture>[/<tag>]``, a local open_clip
  folder): built by open_clip with its own weights and preprocessing (:mod:`fashion_vl.inference.clip`).

The network is built from the config's ``model`` node with the same ``instantiate`` call ``fvl-train``
and ``fvl-eval`` use; the task parts that live in the LightningModule (the classification head, phase 1's
diffusion branch) with the same classes the LightningModules build. Where the weights come from the
checkpoint, the config's own weight loading (``init_from``, ``checkpoint_path``, ``pretrained``) is
switched off first, so nothing is read twice or downloaded; then every weight of those parts is loaded
strictly. A converted LAVIS checkpoint is the exception: it is read as the training path reads it,
through ``model.qformer.init_from``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from torch import nn

from fashion_vl.inference._project import CONVERTED_SOURCE_KEY, MMF_TASK_EXPERIMENTS, STORED_CONFIG_KEY, api
from fashion_vl.inference.base import Embedder
from fashion_vl.inference.clip import ClipEmbedder, open_clip_source
from fashion_vl.inference.fashionvil import FashionViLEmbedder
from fashion_vl.inference.unifashion import UniFashionEmbedder

log = logging.getLogger(__name__)

FORMAT = "fashion-vl"  # config.json's "format" in a save_pretrained folder
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# the run config's nodes an inference object needs (the rest: trainer, callbacks, paths... is dropped)
RUN_NODES = ("model", "lit", "data")
RUN_VALUES = ("experiment_name", "seed", "task_name", "tags")
# keys of a model-config node that load weights from a file the checkpoint already holds
WEIGHT_FILE_KEYS = ("init_from", "checkpoint_path")
_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class MissingConfigError(ValueError):
    """A checkpoint that does not say which model it is, and no config was given."""


def load(
    source: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    experiment: str | None = None,
    overrides: Sequence[str] = (),
    config: Mapping[str, Any] | str | Path | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Embedder:
    """The inference object of a checkpoint, an exported folder or a hub id (see the module docstring).

    Args:
        source: a ``.ckpt`` of ``fvl-train`` or ``fvl-convert``, a ``save_pretrained`` folder, ``org/name``,
            or an open_clip model (``hf-hub:org/name``, ``open_clip:ViT-B-16/laion2b_s34b_b88k``, a folder
            with ``open_clip_config.json``).
        device: where to run (default: CUDA when available, else CPU).
        dtype: autocast dtype of the forward passes (default: bfloat16 on CUDA, none on CPU).
        experiment, overrides: the experiment (and Hydra overrides) whose model the checkpoint is, for a
            checkpoint that stores no config (``fvl-convert`` output); they also replace a stored one.
        config: instead of ``experiment``, a run config: a mapping, or a YAML file (a run's
            ``.hydra/config.yaml``).
        revision, cache_dir, token: hub download options for a hub id.
    """
    text = str(source)
    path = Path(text).expanduser()
    given = _given_config(experiment, overrides, config)
    open_clip = open_clip_source(text)
    if open_clip is not None:
        if given is not None:
            raise ValueError(f"{text} is an open_clip model: it takes no experiment=, overrides= or config=")
        return ClipEmbedder.from_open_clip(*open_clip, device=device, dtype=dtype, label=text)
    if path.is_dir():
        return load_folder(path, name=text, device=device, dtype=dtype)
    if path.is_file():
        return load_checkpoint(path, given, name=text, device=device, dtype=dtype)
    if _is_hub_id(text):
        folder = _download(text, revision=revision, cache_dir=cache_dir, token=token)
        return load_folder(folder, name=text, device=device, dtype=dtype)
    raise FileNotFoundError(
        f"fashion_vl.load: no checkpoint or folder at {path} (and not a hub id 'org/name')"
    )


# --------------------------------------------------------------------------------------- sources
def load_checkpoint(
    path: Path,
    given: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Embedder:
    """A Lightning checkpoint of ours, or an ``fvl-convert`` output with a ``given`` run config."""
    payload = _read_checkpoint(path)
    converted = payload.get(CONVERTED_SOURCE_KEY) or {}
    stored = payload.get(STORED_CONFIG_KEY)
    if given is None and stored is None:
        raise MissingConfigError(_missing_config_message(path, converted))
    run = run_config(given if given is not None else stored)
    # checkpoints written before the networks owned every weight: their keys renamed as Lightning's do
    state = api().migrate_state_dict(payload.get("state_dict", payload))
    kind = f"converted-{converted.get('format')}" if converted else "lightning"
    metadata = {
        "source_kind": kind,
        "source": str(path),
        "experiment": run.get("experiment_name"),
        "global_step": payload.get("global_step"),
        "training_data": describe_data(run.get("data") or {}),
    }
    if converted:
        metadata["converted_from"] = {
            k: converted.get(k) for k in ("format", "file", "task") if k in converted
        }
    metrics = _run_metrics(path)
    if metrics is not None:
        metadata["metrics"] = metrics
    if converted.get("format") == "lavis":
        # the Q-Former in transformers' BLIP-2 names, read by the builder as the training path reads it;
        # the frozen ViT is the configured one (the converter keeps no EVA weights our ViT reads)
        model = run["model"]
        for node in (model.get("qformer"), model.get("image_encoder")):
            if isinstance(node, dict) and "init_from" in node:
                node["init_from"] = str(path)
        parts = build_parts(run, weights_in_state=False, task_parts=False)
        metadata["hub_weights"] = hub_towers(parts, run, None)
    else:
        parts = build_parts(run, weights_in_state=True)
        metadata["hub_weights"] = hub_towers(parts, run, state)
        load_parts(parts, state, str(path))
    return make_embedder(parts, run, name=name or str(path), device=device, dtype=dtype, metadata=metadata)


def load_folder(
    folder: Path,
    *,
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Embedder:
    """A folder written by ``save_pretrained`` (``config.json``, ``model.safetensors``, tokenizer files)."""
    from safetensors.torch import load_file

    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_FILE}: not a folder written by save_pretrained / fvl-export"
        )
    saved = json.loads(config_file.read_text())
    if saved.get("format") != FORMAT:
        raise ValueError(
            f"{config_file}: not a fashion-vl model (format {saved.get('format')!r}, expected {FORMAT!r})"
        )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    run = run_config(saved)
    for key, relative in (saved.get("files") or {}).items():
        _set_dotted(run, key, str((folder / relative).resolve()))
    hub = saved.get("hub_weights") or []
    parts = build_parts(run, weights_in_state=True, keep_pretrained={h["config"] for h in hub})
    load_parts(parts, load_file(weights), str(weights), from_hub=[p for h in hub for p in h["prefixes"]])
    source = saved.get("source") or {}
    metadata = {
        **source,
        "hub_weights": hub,
        "exported_source_kind": source.get("source_kind"),
        "source_kind": "pretrained",
        "loaded_from": str(folder),
        "metrics": saved.get("metrics"),
    }
    return make_embedder(parts, run, name=name or str(folder), device=device, dtype=dtype, metadata=metadata)


def _download(name: str, **options: Any) -> Path:
    """A hub repository's snapshot folder: from the local cache, else from the hub if it answers; offline,
    the encoders' error (:func:`~fashion_vl.hub.load_pretrained`)."""
    from huggingface_hub import snapshot_download

    kwargs = {k: v for k, v in options.items() if v is not None}
    folder = api().load_pretrained(
        snapshot_download, name, what="fashion-vl model", config_key="source", **kwargs
    )
    return Path(folder)


def _is_hub_id(text: str) -> bool:
    """``org/name`` (or ``name``), unless it reads as a path: a file suffix, a path form, or a first part
    that is a local folder (``exported/my-model`` when ``exported/`` exists is a missing folder)."""
    parent = Path(text).parent
    return (
        not api().looks_like_path(text)
        and not text.lower().endswith(_FILE_SUFFIXES)
        and _HUB_ID.fullmatch(text) is not None
        and not (str(parent) != "." and parent.is_dir())
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (pre-zip) file cannot be mapped
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(payload).__name__}, not a dict)")
    return payload


def _missing_config_message(path: Path, converted: Mapping[str, Any]) -> str:
    instead = "or config=<a run's .hydra/config.yaml>"
    if converted.get("format") == "mmf":
        task = converted.get("task", "pretrain")
        example = MMF_TASK_EXPERIMENTS.get(task, "finetune_retrieval_fashiongen")
        return (
            f"{path} is an fvl-convert mmf checkpoint ({task}) and stores no config: pass the experiment it "
            f"fits, e.g. fashion_vl.load({str(path)!r}, experiment={example!r}) {instead}"
        )
    if converted.get("format") == "lavis":
        return (
            f"{path} is an fvl-convert lavis checkpoint and stores no config: pass the experiment it fits, "
            f"e.g. fashion_vl.load({str(path)!r}, experiment='unifashion_phase2_fashioniq') {instead}"
        )
    return (
        f"{path} stores no config (no '{STORED_CONFIG_KEY}': not written by fvl-train): pass the experiment "
        f"its model is, fashion_vl.load({str(path)!r}, experiment='<name>', overrides=[...]) {instead}"
    )


def _run_metrics(path: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (``<run>/metrics.json`` next to ``<run>/checkpoints/``), if any."""
    if path.parent.name != "checkpoints":
        return None
    file = path.parent.parent / "metrics.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON: the model card will have no metrics", file)
        return None


# --------------------------------------------------------------------------------------- configs
def _given_config(
    experiment: str | None, overrides: Sequence[str], config: Mapping[str, Any] | str | Path | None
) -> dict[str, Any] | None:
    if experiment is not None and config is not None:
        raise ValueError("pass experiment= (with overrides=) or config=, not both")
    if isinstance(overrides, str):
        raise TypeError("overrides: pass a list of 'key=value' strings, not one string")
    if experiment is not None:
        return compose_experiment(experiment, overrides)
    if config is None:
        if overrides:
            raise ValueError("overrides= need experiment=")
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, (str, Path)):
        file = Path(config).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"config: no file at {file}")
        config = OmegaConf.load(file)
    if isinstance(config, DictConfig):
        return _plain(config)
    return copy.deepcopy(dict(config))


def compose_experiment(experiment: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The ``fvl-train`` config of ``experiment`` with ``overrides``, as plain values."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if hydra.is_initialized():  # e.g. inside a Hydra app: compose there, with its own search path
        return _plain(compose("train", overrides=[f"experiment={experiment}", *overrides]))
    with initialize_config_module("fashion_vl.conf", version_base="1.3"):
        return _plain(compose("train", overrides=[f"experiment={experiment}", *overrides]))


def _plain(cfg: Any) -> dict[str, Any]:
    """The nodes of a composed config an inference object reads, resolved (the rest, e.g. Hydra's own
    ``paths.output_dir``, cannot be resolved outside a run and is not needed)."""
    from omegaconf import OmegaConf

    out = {}
    for key in (*RUN_NODES, *RUN_VALUES):
        if key in cfg:
            value = cfg[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the nodes of a run config an inference object reads."""
    if "model" not in config:
        raise KeyError("the model's config has no 'model' node")
    return {k: copy.deepcopy(config[k]) for k in (*RUN_NODES, *RUN_VALUES) if k in config}


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


def _target(node: Mapping[str, Any]) -> Any:
    try:
        return get_object(str(node["_target_"]))
    except Exception:  # an unknown or unimportable target is simply not one of ours
        return None


def hub_architectures() -> tuple[Any, ...]:
    """Builders whose architecture itself comes from the hub when pretrained (their ``pretrained``
    stays on): the LLM, a Stable Diffusion branch."""
    return (api().LanguageModel, api().build_diffusion_branch)


def without_weight_loading(node: Any, path: str, keep_pretrained: Iterable[str] = ()) -> Any:
    """A copy of a config node whose builders load no weights: ``init_from`` / ``checkpoint_path`` off,
    ``pretrained`` false, except where the architecture itself comes from the hub (the LLM, a Stable
    Diffusion branch) and at the config paths in ``keep_pretrained`` (towers an exported folder
    references by hub name). A ``vae_from`` file (it also sets the VAE's latent scale) is kept while it
    exists."""
    keep = set(keep_pretrained)
    if isinstance(node, list):
        return [without_weight_loading(v, f"{path}.{i}", keep) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {k: without_weight_loading(v, f"{path}.{k}", keep) for k, v in node.items()}
    if "_target_" not in out or path in keep:
        return out
    for key in WEIGHT_FILE_KEYS:
        if out.get(key):
            out[key] = None
    if out.get("pretrained") and _target(out) not in hub_architectures():
        out["pretrained"] = False
    vae_from = out.get("vae_from")
    if vae_from and not Path(str(vae_from)).expanduser().is_file():
        log.warning(
            "%s.vae_from=%s is gone: the VAE keeps its configured latent scale (its weights come from the "
            "checkpoint)", path, vae_from,
        )  # fmt: skip
        out["vae_from"] = None
    return out


# --------------------------------------------------------------------------------------- building
def _config_nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _config_nodes(value, f"{path}.{key}")


def state_prefix(config_path: str) -> str:
    """The state-dict prefix of the module a config node builds: config nesting mirrors module nesting
    (``model.a.b`` -> ``net.a.b.``; ``lit.a.b`` -> ``a.b.``, the LightningModule's own attributes)."""
    root, _, rest = config_path.partition(".")
    inner = f"{rest}." if rest else ""
    return f"net.{inner}" if root == "model" else inner


def module_at(parts: Mapping[str, nn.Module], prefix: str) -> nn.Module | None:
    """The module whose state-dict keys start with ``prefix`` (``net.llm.`` -> ``parts["net."].llm``)."""
    for part, module in parts.items():
        if prefix.startswith(part):
            inner = prefix[len(part) :].rstrip(".")
            try:
                return module.get_submodule(inner) if inner else module
            except AttributeError:
                return None
    return None


def _frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def hub_towers(
    parts: Mapping[str, nn.Module], run: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None
) -> list[dict[str, Any]]:
    """The frozen modules built from the hub (``pretrained: true`` LLMs and Stable Diffusion branches)
    whose weights ``state`` leaves as the hub's: per config node, its hub id and the state-dict prefixes
    of those modules (the whole tower when it does not train at all, else its frozen children). Called
    after building and before loading ``state``, while the modules still hold the hub's weights; with
    ``state=None`` (nothing will overwrite them) every frozen hub tower counts. An exported folder names
    these instead of copying them."""
    found = []
    for root in ("model", "lit"):
        for path, node in _config_nodes(run.get(root), root):
            if _target(node) not in hub_architectures() or not node.get("pretrained"):
                continue
            prefix = state_prefix(path)
            module = module_at(parts, prefix)
            if module is None:
                continue
            children = [(prefix, module)] if _frozen(module) else [
                (f"{prefix}{name}.", child) for name, child in module.named_children() if _frozen(child)
            ]  # fmt: skip
            unchanged = [
                p
                for p, child in children
                if state is None
                or all(
                    p + k in state and state[p + k].dtype == v.dtype and torch.equal(state[p + k], v)
                    for k, v in child.state_dict().items()
                )
            ]
            if unchanged:
                found.append({"config": path, "name": node.get("name"), "prefixes": unchanged})
    return found


def lit_class(run: Mapping[str, Any]) -> type | None:
    lit = run.get("lit") or {}
    return _target(lit) if isinstance(lit, Mapping) and "_target_" in lit else None


def _subclass(cls: Any, base: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


def build_parts(
    run: Mapping[str, Any],
    *,
    weights_in_state: bool,
    keep_pretrained: Iterable[str] = (),
    task_parts: bool = True,
) -> dict[str, nn.Module]:
    """The modules an inference object runs, by the state-dict prefix their weights have in the
    LightningModule: ``net.`` (``instantiate(model)``, as fvl-train builds it, under the run's seed), which
    owns every weight: the classification head (``net.heads.classification``), UniFashion's diffusion
    branch (``net.diffusion``). ``task_parts=False``: the heads are left out (a converted checkpoint's
    encoder alone)."""
    project = api()
    model_cfg = run["model"]
    lit = run.get("lit") or {}
    if weights_in_state:
        model_cfg = without_weight_loading(model_cfg, "model", keep_pretrained)
    with torch.random.fork_rng(devices=[]):
        # fvl-train seeds, then builds: random parts a checkpoint does not hold (a converted LAVIS
        # checkpoint's tiny random ViT) come out as they do there
        torch.manual_seed(int(run.get("seed", 0)))
        net = instantiate(model_cfg, _convert_="all")
        if isinstance(net, project.DiffusionBranch):  # the try-on module wraps a bare branch
            net = project.TryOnEditor(net, condition_drop=float(lit.get("condition_drop", 0.2)))
        if not task_parts and isinstance(getattr(net, "heads", None), nn.ModuleDict):
            net.heads = nn.ModuleDict()
    return {"net.": net}


def load_parts(
    parts: Mapping[str, nn.Module],
    state: Mapping[str, torch.Tensor],
    source: str,
    from_hub: Sequence[str] = (),
) -> None:
    """Load every weight of ``parts`` from ``state`` (keys with the parts' prefixes), strictly: a missing,
    extra or misshapen tensor under those prefixes is an error naming them, and nothing is loaded. Keys
    under ``from_hub`` prefixes may be absent (those towers keep their hub weights); keys outside every
    part (the training objectives' heads, a frozen MPFC tokenizer...) are not used."""
    expected = {p + k: v for p, module in parts.items() for k, v in module.state_dict().items()}

    def ours(key: str) -> bool:
        return any(key.startswith(p) for p in parts)

    missing = [k for k in expected if k not in state and not any(k.startswith(h) for h in from_hub)]
    unexpected = [k for k in state if ours(k) and k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise api().CheckpointMismatchError(
            f"{source} does not fit the model its config builds: {'; '.join(problems)} "
            "(is it a checkpoint of this experiment's model?)"
        )
    for prefix, module in parts.items():
        module.load_state_dict(
            {k[len(prefix) :]: state[k] for k in expected if k.startswith(prefix) and k in state},
            strict=False,
        )
    unused = sum(1 for k in state if not ours(k))
    if unused:
        log.info(
            "%s: %d tensors outside the inference parts (training heads, tokenizers) not used", source, unused
        )


def task_of(run: Mapping[str, Any], net: nn.Module) -> str:
    """What the run trained, from its LightningModule class (and the network for the families)."""
    project = api()
    cls = lit_class(run)
    if isinstance(net, project.TryOnEditor):
        return "tryon"
    if isinstance(net, project.CSANet) or _subclass(cls, project.OutfitRetrievalModule):
        return "outfit"
    if _subclass(cls, project.UniFashionComposedModule):
        return "phase2"
    if isinstance(net, project.UniFashion):
        return "phase1"
    if _subclass(cls, project.ComposedRetrievalModule):
        return "composition"
    if _subclass(cls, project.ClassificationModule):
        return "classification"
    return "retrieval"


def make_embedder(parts: Mapping[str, nn.Module], run: Mapping[str, Any], **kwargs: Any) -> Embedder:
    project, net = api(), parts["net."]
    if isinstance(net, project.ClipEncoder):
        family = ClipEmbedder
    elif isinstance(net, (project.FashionViL, project.CSANet)):
        family = FashionViLEmbedder
    elif isinstance(net, (project.UniFashion, project.TryOnEditor)):
        family = UniFashionEmbedder
    else:
        raise TypeError(
            f"{kwargs.get('name')}: its model is a {type(net).__name__} (experiment "
            f"{run.get('experiment_name')}); fashion_vl.load takes FashionViL, CSA-Net, UniFashion and "
            "CLIP-family (ClipEncoder) models"
        )
    return family(parts, run, task=task_of(run, net), **kwargs)


def describe_data(data: Mapping[str, Any]) -> str:
    """One line on what a run trained on, from its data config (for the model card)."""
    if not data:
        return "unknown"
    module = str(data.get("_target_", "")).rsplit(".", 1)[-1] or "unknown DataModule"
    sources = data.get("train_sources") or {}
    parts = [f"{name} ({(src or {}).get('split', 'train')} split)" for name, src in sources.items()]
    if data.get("categories"):
        parts.append(f"categories {', '.join(map(str, data['categories']))}")
    if data.get("variant"):
        parts.append(f"{data['variant']} split")
    data_dir = data.get("data_dir") or next(
        (s.get("data_dir") for s in sources.values() if isinstance(s, Mapping) and s.get("data_dir")), None
    )
    line = f"{module}" + (f": {', '.join(parts)}" if parts else "")
    if data_dir:
        synthetic = (Path(str(data_dir)).expanduser() / "synthetic_manifest.json").is_file()
        line += f"; data folder {data_dir}" + (
            " (synthetic data written by `fvl-data synth`)" if synthetic else ""
        )
    return line
