"""``save_pretrained``: an inference object as a Hugging Face style folder.

- ``config.json``: the run's ``model``, ``lit`` and ``data`` config (what :func:`~fashion_vl.load`
  builds from), the family, task and capabilities, where the files below sit, and the source's metrics;
- ``model.safetensors``: the weights of every inference part under their LightningModule names
  (``net.*``: every weight is the network's), nothing of the optimiser;
- the tokenizer files (the text tokenizer at the top, as ``AutoTokenizer.from_pretrained(folder)``
  reads them; other local tokenizers, e.g. a tiny LLM's, under ``tokenizers/``);
- ``README.md``: a model card with the training data, the experiment and its metrics.

Frozen towers built from the hub (the LLM, Stable Diffusion's VAE and text encoder) whose weights in
the source are exactly the hub's are not copied: ``config.json``'s ``hub_weights`` names them with their
hub id, and loading the folder builds them from the hub (or its cache) again, as the training run did.
The loader checks that equality when it reads the source (:func:`~fashion_vl.inference.loading.
hub_towers`); a tower that trained, or whose weights differ in any tensor, is copied.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fashion_vl.inference._project import api
from fashion_vl.inference.base import Embedder
from fashion_vl.inference.loading import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    _config_nodes,
    _set_dotted,
    module_at,
    state_prefix,
)

FORMAT_VERSION = 1
TOKENIZERS_DIR = "tokenizers"


def write_pretrained(model: Embedder, directory: Path) -> None:
    """Write ``model`` into ``directory`` (see the module docstring)."""
    from safetensors.torch import save_file

    from fashion_vl import __version__

    directory.mkdir(parents=True, exist_ok=True)
    hub = list(model.metadata.get("hub_weights") or [])
    skipped = tuple(p for h in hub for p in h["prefixes"])
    state = {
        prefix + key: value
        for prefix, module in model.parts.items()
        for key, value in module.state_dict().items()
        if not (prefix + key).startswith(skipped)
    }
    save_file(_unshared(state), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    keep_fitted_vae_scale(model, config)
    files = write_tokenizers(model, directory, config)
    metadata = model.metadata
    source = {
        k: metadata[k]
        for k in ("source", "source_kind", "experiment", "global_step", "training_data", "converted_from")
        if metadata.get(k) is not None
    }
    if metadata.get("exported_source_kind"):  # a re-export keeps the original's account
        source["source_kind"] = metadata["exported_source_kind"]
    saved = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fashion_vl_version": __version__,
        "family": model.family,
        "task": model.task,
        "capabilities": sorted(model.capabilities),
        "embed_dim": model.embed_dim,
        "vectors_per_image": model.vectors_per_image,
        **config,
        "files": files,
        "hub_weights": hub,
        "source": source,
        "metrics": metadata.get("metrics"),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(saved, indent=1, default=str))
    (directory / "README.md").write_text(model_card(model, saved, state))


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: contiguous, and tied ones (one storage under two names) copied,
    since the format refuses shared storage; loading copies the same values into both names again."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        tensor = value.detach().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if ident in seen and tensor.numel() else tensor
        seen.add(ident)
    return out


def keep_fitted_vae_scale(model: Embedder, config: dict[str, Any]) -> None:
    """A diffusion branch whose VAE was fitted (``vae_from``: a file that also set the VAE's latent
    scale) keeps that scale in the folder's config (``vae.scaling_factor``; its weights are in
    ``model.safetensors``) instead of naming a file the folder does not carry."""
    for root in ("model", "lit"):
        for path, node in _config_nodes(config.get(root), root):
            if not node.get("vae_from") or not isinstance(node.get("vae"), dict):
                continue
            branch = module_at(model.parts, state_prefix(path))
            if branch is not None and hasattr(branch, "vae"):
                node["vae"]["scaling_factor"] = float(branch.vae.config.scaling_factor)
                node["vae_from"] = None


def _tokenizer_keys(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "tokenizer" and isinstance(value, str):
                yield f"{path}.{key}", value
            else:
                yield from _tokenizer_keys(value, f"{path}.{key}")


def write_tokenizers(model: Embedder, directory: Path, config: dict[str, Any]) -> dict[str, str]:
    """Save the text tokenizer at the top of ``directory`` and every other tokenizer the config names
    by a local folder under ``tokenizers/``; point ``config`` at them (paths relative to the folder,
    listed in the returned ``files``). Tokenizers named by hub id stay hub ids."""
    files: dict[str, str] = {}
    data_tokenizer = (config.get("data") or {}).get("tokenizer")
    if model.text is not None and isinstance(data_tokenizer, str):
        # a _target_ tokenizer (an open_clip model's own) is rebuilt from its node: no files to copy
        model.text.tokenizer.save_pretrained(str(directory))
        files["data.tokenizer"] = "."
    for root in ("model", "lit"):
        for key, value in _tokenizer_keys(config.get(root), root):
            if value == data_tokenizer and "data.tokenizer" in files:
                files[key] = "."
            elif Path(value).expanduser().is_dir():
                relative = f"{TOKENIZERS_DIR}/{key}"
                api().load_tokenizer(value).save_pretrained(str(directory / relative))
                files[key] = relative
    for key, relative in files.items():
        _set_dotted(config, key, relative)
    return files


# --------------------------------------------------------------------------------------- model card
TASKS = {
    "retrieval": "image-text retrieval embeddings",
    "composition": "composed (text-guided) image retrieval",
    "classification": "sub-category recognition",
    "outfit": "outfit complementary item retrieval (CSA-Net)",
    "phase1": "image-text retrieval, captioning and generation (phase 1)",
    "phase2": "composed image retrieval (phase 2)",
    "tryon": "virtual try-on editing",
}
FAMILIES = {
    "fashionvil": "FashionViL (Han et al., ECCV 2022)",
    "unifashion": "UniFashion (Zhao et al., EMNLP 2024)",
    "clip": "CLIP-family two-tower",
}


def model_card(model: Embedder, saved: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    source = saved.get("source") or {}
    experiment = saved.get("experiment_name") or source.get("experiment") or "unknown"
    run_metrics = saved.get("metrics") or {}
    lines = [
        "---",
        "library_name: fashion-vl",
        "tags:",
        *(f"- {tag}" for tag in ("fashion-vl", "fashion", "vision-language", model.family, model.task)),
        "---",
        "",
        f"# {experiment}",
        "",
        f"A {FAMILIES.get(model.family, model.family)} model for {TASKS.get(model.task, model.task)}, "
        f"exported by fashion-vl {saved['fashion_vl_version']} from `{source.get('source', model.name)}` "
        f"({source.get('source_kind', 'unknown source')}).",
        "",
        "## Use",
        "",
        "```python",
        "import fashion_vl",
        "",
        'model = fashion_vl.load("<this folder or its hub id>")',
        *_usage(model),
        "```",
        "",
        f"Capabilities: {', '.join(sorted(model.capabilities))}. "
        + (
            f"Embeddings: {model.embed_dim}-d, L2-normalised, {model.vectors_per_image} per image"
            + (" (score an image by the max over them)." if model.vectors_per_image > 1 else ".")
            if model.embed_dim
            else ""
        ),
        "",
        "## Training",
        "",
        f"- experiment: `{experiment}`",
        f"- training data: {source.get('training_data', 'unknown')}",
    ]
    model_cfg = saved.get("model") or {}
    if model_cfg.get("init_from"):
        lines.append(f"- started from: `{model_cfg['init_from']}`")
    if source.get("global_step") is not None:
        lines.append(f"- optimisation steps: {source['global_step']}")
    if source.get("converted_from"):
        conv = source["converted_from"]
        lines.append(f"- converted by `fvl-convert {conv.get('format')}` from `{conv.get('file')}`")
    lines += ["", "## Metrics", ""]
    values = run_metrics.get("metrics") if isinstance(run_metrics, Mapping) else None
    if values:
        lines += [
            f"From the run's `metrics.json` (experiment `{run_metrics.get('experiment')}`, "
            f"step {run_metrics.get('global_step')}):",
            "",
            "| metric | value |",
            "|---|---|",
            *(
                f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                for k, v in sorted(values.items())
            ),
        ]
    else:
        lines.append("No `metrics.json` was found next to the source checkpoint.")
    parameters = sum(v.numel() for v in state.values())
    lines += [
        "",
        "## Files",
        "",
        "- `config.json`: the run's resolved model, task (`lit`) and data config, from which "
        "`fashion_vl.load` rebuilds the model, its evaluation transform and its tokenizer",
        f"- `{WEIGHTS_FILE}`: {len(state)} tensors ({parameters:,} values), no optimiser state",
        "- tokenizer files: the text tokenizer the run used",
    ]
    for ref in saved.get("hub_weights") or []:
        lines.append(
            f"- not copied: `{', '.join(ref['prefixes'])}` (frozen, `{ref['config']}`), loaded from the hub "
            f"as `{ref['name']}` when the model loads"
        )
    return "\n".join(lines) + "\n"


def _usage(model: Embedder) -> list[str]:
    calls = {
        "image": 'images = model.encode_images(["shirt.jpg"])  # paths, PIL images or tensors',
        "text": 'texts = model.encode_texts(["a red silk dress"])',
        "composed": 'query = model.encode_composed(["dress.jpg"], ["is shorter and blue"])',
        "classify": 'probabilities = model.classify(["shirt.jpg"], ["a cotton shirt"])',
        "caption": 'captions = model.caption(["shirt.jpg"])',
        "outfit": 'query = model.encode_outfits([["top.jpg", "shoes.jpg"]], [[0, 5]], [2])',
        "generate": 'pictures = model.generate(["shirt.jpg"], ["a red shirt"])',
        "try_on": "pictures = model.try_on(batch)  # a try-on DataModule batch",
    }
    return [
        calls[c]
        for c in ("image", "text", "composed", "classify", "outfit", "caption", "generate", "try_on")
        if c in model.capabilities
    ]
