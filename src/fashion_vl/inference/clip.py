"""CLIP-family models (open_clip, transformers CLIP/SigLIP behind
:class:`~fashion_vl.models.openclip.ClipEncoder`) as inference objects.

Two ways in, one object:

- an open_clip model itself: ``fashion_vl.load("hf-hub:Marqo/marqo-fashionSigLIP")``,
  ``fashion_vl.load("open_clip:ViT-B-16/laion2b_s34b_b88k")`` (an architecture of
  ``open_clip.list_models()``, then a tag of ``open_clip.list_pretrained()`` or a local weight file; no
  tag: random init), or a local open_clip folder (``open_clip_config.json`` and the weights). Its config
  is the one ``conf/model/openclip.yaml`` and ``conf/embedder/_open_clip.yaml`` give a run: the
  model's own tokenizer and evaluation transform, read from the same source as the weights;
- a checkpoint of ours whose network is a ``ClipEncoder`` (``finetune_openclip_fashionall``,
  ``demo_finetune_openclip``): built by :func:`~fashion_vl.inference.loading.load_checkpoint` like every
  other run, with the run's own transform and tokenizer.

Embeddings are those the two-tower evaluation computes (``lit.two_tower``: ``encode_image`` /
``encode_text`` with ``normalize=True``), L2-normalised. ``encode_composed`` is the two-tower zero-shot
rule of the comparison (``docs/compare.md``: the sum of the unit image and unit text embeddings); a
two-tower model has no fusion encoder, so this is a baseline, not a trained composition.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from fashion_vl.inference.base import Embedder

OPEN_CLIP_PREFIX = "open_clip:"
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_FOLDER_FILE = "open_clip_config.json"
# open_clip model configs that ship with fashion-vl (the tiny test architecture), by file stem
PACKAGED_CONFIGS = "model/open_clip"


class ClipEmbedder(Embedder):
    """A :class:`~fashion_vl.models.openclip.ClipEncoder` with its own preprocessing (see the module
    docstring). Capabilities: ``image``, ``text`` and ``composed`` (the zero-shot sum rule)."""

    family = "clip"

    def __init__(
        self,
        parts: Mapping[str, nn.Module],
        config: Mapping[str, Any],
        *,
        task: str = "retrieval",
        **kwargs: Any,
    ) -> None:
        super().__init__(parts, config, **kwargs)
        from fashion_vl.models.openclip import ClipEncoder

        if not isinstance(self.net, ClipEncoder):
            raise TypeError(f"{self.name}: a ClipEmbedder needs a ClipEncoder, not {type(self.net).__name__}")
        self.task = task
        self.embed_dim = self.net.embed_dim
        self.vectors_per_image = 1
        self.capabilities = frozenset({"image", "text", "composed"})

    @classmethod
    def from_open_clip(
        cls,
        name: str,
        pretrained: str | None = None,
        model_config: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        label: str | None = None,
    ) -> ClipEmbedder:
        """An open_clip model with its own preprocessing (arguments as
        :func:`~fashion_vl.models.openclip.build_open_clip`)."""
        run = open_clip_run_config(name, pretrained, model_config)
        with torch.random.fork_rng(
            devices=[]
        ):  # a random-init model comes out as fvl-train (seed 0) builds it
            torch.manual_seed(int(run["seed"]))
            net = instantiate(run["model"], _convert_="all")
        source = label or name
        metadata = {"source_kind": "open_clip", "source": source, "experiment": None}
        return cls({"net.": net}, run, name=source, device=device, dtype=dtype, metadata=metadata)

    # as lit.two_tower computes them in evaluation
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(pixels, normalize=True)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net.encode_text(input_ids, attention_mask, normalize=True)

    def composed_features(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # lit.two_tower.ComposedBaselineModule's "sum" query (normalised again by the base class)
        image = F.normalize(self.image_features(pixels), dim=-1)
        return image + F.normalize(self.text_features(input_ids, attention_mask), dim=-1)


def open_clip_run_config(
    name: str, pretrained: str | None = None, model_config: str | None = None
) -> dict[str, Any]:
    """The ``model`` and ``data`` config of a run on an open_clip model, as ``conf/model/openclip.yaml``
    and the ``conf/embedder/`` presets compose it (the model, its evaluation transform, its tokenizer)."""
    source = {"name": name, "pretrained": pretrained, "model_config": model_config}
    return copy.deepcopy(
        {
            "model": {
                "_target_": "fashion_vl.models.openclip.build_open_clip",
                **source,
                "image_size": None,
                "init_from": None,
            },
            "data": {
                "eval_transform": {
                    "_target_": "fashion_vl.models.openclip.open_clip_transform",
                    "train": False,
                    **source,
                    "image_size": None,
                },
                "tokenizer": {"_target_": "fashion_vl.models.openclip.open_clip_tokenizer", **source},
                "max_text_length": 77,  # open_clip tokenizers pad to the model's own context length anyway
                "pad_to_max_length": False,
            },
            "seed": 0,
        }
    )


def open_clip_source(text: str) -> tuple[str, str | None, str | None] | None:
    """``(name, pretrained, model_config)`` when ``text`` names an open_clip model, else None:
    ``hf-hub:org/name``; ``open_clip:<architecture>[/<tag or weight file>]`` (an architecture that ships
    with fashion-vl, e.g. ``fvl-tiny-clip``, gets its packaged config); a folder holding
    ``open_clip_config.json`` and no fashion-vl ``config.json``."""
    if text.startswith(HF_HUB_PREFIX):
        return text, None, None
    if text.startswith(OPEN_CLIP_PREFIX):
        arch, _, pretrained = text[len(OPEN_CLIP_PREFIX) :].partition("/")
        if not arch:
            raise ValueError(f"{text!r}: name an architecture, e.g. open_clip:ViT-B-16/laion2b_s34b_b88k")
        model_config = packaged_model_config(arch)
        if model_config is None:
            from fashion_vl.models.openclip import _require_open_clip

            if arch not in _require_open_clip().list_models():
                raise ValueError(
                    f"{text!r}: {arch!r} is not an open_clip architecture (open_clip.list_models()); "
                    "for a hub model use hf-hub:org/name"
                )
        return arch, pretrained or None, model_config
    path = Path(text).expanduser()
    if path.is_dir() and (path / OPEN_CLIP_FOLDER_FILE).is_file() and not _fashion_vl_folder(path):
        return str(path.resolve()), None, None
    return None


def packaged_model_config(arch: str) -> str | None:
    """``pkg://fashion_vl.conf/model/open_clip/<arch>.json`` when fashion-vl ships that config."""
    if resources.files("fashion_vl.conf").joinpath(f"{PACKAGED_CONFIGS}/{arch}.json").is_file():
        return f"pkg://fashion_vl.conf/{PACKAGED_CONFIGS}/{arch}.json"
    return None


def _fashion_vl_folder(path: Path) -> bool:
    import json

    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == "fashion-vl"
    except (json.JSONDecodeError, AttributeError):
        return False
