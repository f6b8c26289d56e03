"""CLIP-family two-tower encoders (open_clip models, transformers CLIP/SigLIP) in our encoder vocabulary.

What fashion retrieval runs on today is a contrastive image tower and text tower: FashionCLIP
(``hf-hub:patrickjohncyh/fashion-clip``), Marqo-FashionCLIP / Marqo-FashionSigLIP
(``hf-hub:Marqo/marqo-fashionCLIP``, ``hf-hub:Marqo/marqo-fashionSigLIP``) and every
``open_clip.list_pretrained()`` pair. :class:`ClipEncoder` wraps one so that our tasks, metrics and
objectives treat it as they treat FashionViL's unimodal path: ``encode_image``, ``encode_text(input_ids,
attention_mask, normalize=)`` and ``normalize``. The model's own preprocessing comes with it:
:func:`open_clip_tokenizer` and :func:`open_clip_transform` build the tokenizer and the image transform
the data modules use (``conf/embedder/*.yaml`` wires them), from the same source as the weights.

Offline, a hub model that is not in the local cache fails at once with
:class:`~fashion_vl.hub.PretrainedUnavailableError` (open_clip itself would retry the hub).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.data.transforms import clip_preprocess
from fashion_vl.hub import (
    PretrainedUnavailableError,
    hub_reachable,
    load_pretrained,
    unavailable_message,
)
from fashion_vl.models.checkpoint import load_from_checkpoint
from fashion_vl.models.encoders.pixels import CLIP_MEAN, CLIP_STD, ImageNormalize

T = TypeVar("T")

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
PACKAGE_PREFIX = "pkg://"
# open_clip clamps the learned logit scale to ln(100) while training; the same bound here
MAX_LOGIT_SCALE = 100.0


def _require_open_clip():
    try:
        import open_clip
    except ImportError as err:  # an optional extra
        raise ImportError(
            "open_clip models need the [clip] extra: pip install 'fashion-vl[clip]' (open_clip_torch)"
        ) from err
    return open_clip


class ClipEncoder(nn.Module):
    """A contrastive two-tower model behind FashionViL's unimodal vocabulary.

    ``normalize(x)`` is ``sqrt(s) * x / ||x||`` with ``s = exp(logit_scale)`` (clamped to 100), so the dot
    product of two normalised embeddings is the model's logit ``s cos`` (without SigLIP's bias), as
    FashionViL's ``s x / ||x||`` makes its dot products its logits: our ``ContrastiveLoss`` then trains
    at the model's own, learned temperature, and rankings are those of the cosine.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` or a transformers ``CLIPModel``/``SiglipModel``.
        name: where it came from (hub id, architecture and tag, local files), for messages and tables.
        init_from: a checkpoint to start from: a Lightning checkpoint of a run on this encoder (its
            ``net.*`` weights) or a plain state dict of it; strict, as FashionViL's, for the encoder; its
            task heads (``heads.*``) are left out, as FashionViL's ``init_from`` leaves them.
        mean, std: the normalisation of ``uint8`` images (the model's own preprocessing; ``None``: an
            open_clip model's ``preprocess_cfg``, else CLIP's). Float images are taken as normalised.
        heads: name -> callable building a task head from this network (``model.heads.pac``: PAC's
            :class:`~fashion_vl.models.heads.CosineClassifier`, ``conf/model/heads/pac.yaml``); the
            objectives read them as ``net.heads[name]``.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        init_from: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        heads: Mapping[str, Callable[[ClipEncoder], nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        own = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        self.input_norm = ImageNormalize(
            mean if mean is not None else own.get("mean", CLIP_MEAN),
            std if std is not None else own.get("std", CLIP_STD),
        )
        self.model = model
        self.name = name
        self.backend = "open_clip" if hasattr(model, "encode_image") else "transformers"
        self._embed_dim: int | None = None
        if init_from:
            load_from_checkpoint(
                self, init_from, prefix=["net.", ""], exclude=["heads"], what=f"CLIP-family encoder {name}"
            )
        self.heads = nn.ModuleDict({name: build(self) for name, build in (heads or {}).items()})

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Size of the image and text embeddings (the joint space), read off one text embedding once."""
        if self._embed_dim is None:
            ids = torch.zeros(1, self.context_length, dtype=torch.long, device=self.model.logit_scale.device)
            with torch.no_grad():
                self._embed_dim = int(self.encode_text(ids, torch.ones_like(ids)).shape[-1])
        return self._embed_dim

    @property
    def hidden_size(self) -> int:
        """FashionViL's name for the size of its unimodal embeddings (PAC's head reads it)."""
        return self.embed_dim

    @property
    def vocab_size(self) -> int:
        """Token ids the text tower embeds (what the data tokenizer must fit)."""
        if self.backend == "open_clip":
            return int(getattr(self.model, "vocab_size", 0) or self.model.text.vocab_size)
        return int(self.model.config.text_config.vocab_size)

    @property
    def context_length(self) -> int:
        if self.backend == "open_clip":
            return int(getattr(self.model, "context_length", 0) or self.model.text.context_length)
        return int(self.model.config.text_config.max_position_embeddings)

    # -- scores ----------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp`` of the learned log-scale, clamped to :data:`MAX_LOGIT_SCALE` (a scalar tensor)."""
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned logit bias; ``None`` for CLIP."""
        return getattr(self.model, "logit_bias", None)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Contrastive embedding ``sqrt(s) * x / ||x||`` (dot products are the logits ``s cos``)."""
        return self.logit_scale.sqrt().to(x.dtype) * F.normalize(x, dim=-1)

    # -- encoders --------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Image embedding ``[B, D]`` from ``images [B, 3, H, W]``: ``uint8`` pixels after the model's
        transform (normalised here) or normalised float."""
        images = self.input_norm(images)
        if self.backend == "open_clip":
            x = self.model.encode_image(images)
        else:
            x = _features(self.model.get_image_features(pixel_values=images))
        return self.normalize(x) if normalize else x

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """Text embedding ``[B, D]``. open_clip towers read the ids only (their tokenizers pad to the
        context length and pool by position); transformers' CLIP reads the mask, SigLIP does not (it is
        trained on texts padded to its length)."""
        if self.backend == "open_clip":
            x = self.model.encode_text(input_ids)
        else:
            kwargs = {"attention_mask": attention_mask} if self._reads_text_mask() else {}
            x = _features(self.model.get_text_features(input_ids=input_ids, **kwargs))
        return self.normalize(x) if normalize else x

    def _reads_text_mask(self) -> bool:
        return getattr(self.model.config, "model_type", "") != "siglip"

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(input_ids, normalize=True),
        }


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns the projected features as an output object's ``pooler_output``."""
    return out if torch.is_tensor(out) else out.pooler_output


# ---------------------------------------------------------------------------------------------------
# open_clip sources: hub ids, (architecture, tag) pairs, local folders and local config + weight files
# ---------------------------------------------------------------------------------------------------
def resolve_config_file(path: str) -> Path:
    """A model-config JSON: a file path, or ``pkg://fashion_vl.conf/<path>`` inside the installed configs
    (the tiny test architecture ships there)."""
    if path.startswith(PACKAGE_PREFIX):
        package, _, inner = path[len(PACKAGE_PREFIX) :].partition("/")
        resolved = Path(str(resources.files(package).joinpath(inner)))
    else:
        resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"model.model_config: no open_clip model config at {resolved}")
    return resolved


def _source(name: str, model_config: str | None) -> str:
    """The open_clip model name to create: a registered local config's stem, a ``local-dir:`` folder
    (a plain existing folder is taken as one), or the name as given (built-in or ``hf-hub:``)."""
    open_clip = _require_open_clip()
    if model_config:
        config = resolve_config_file(model_config)
        open_clip.add_model_config(config)
        if name != config.stem:
            raise ValueError(
                f"model.name={name!r} must be the model config's file stem {config.stem!r} ({config})"
            )
        return name
    if not name.startswith((HF_HUB, LOCAL_DIR)) and Path(name).expanduser().is_dir():
        return LOCAL_DIR + str(Path(name).expanduser())
    return name


def _needs_hub(source: str, pretrained: str | None) -> bool:
    if source.startswith(HF_HUB):
        return True
    if source.startswith(LOCAL_DIR):
        return False
    return bool(pretrained) and not Path(pretrained).expanduser().is_file()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration: its calls read the cache and never the network."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def from_hub(create: Callable[[], T], source: str, what: str, config_key: str = "model.name") -> T:
    """Run ``create`` (which may download from the hub) so that an offline machine fails at once: when
    the hub does not answer a quick probe, it runs against the local cache only, and a miss raises
    :class:`~fashion_vl.hub.PretrainedUnavailableError` with the project's usual advice."""
    if hub_reachable():
        return create()
    with _hub_offline():
        try:
            return create()
        except (OSError, RuntimeError, ValueError) as err:
            raise PretrainedUnavailableError(
                unavailable_message(source.removeprefix(HF_HUB), what, config_key)
            ) from err


def build_open_clip(
    name: str,
    pretrained: str | None = None,
    model_config: str | None = None,
    init_from: str | None = None,
    image_size: int | None = None,
    heads: Mapping[str, Callable[[ClipEncoder], nn.Module]] | None = None,
) -> ClipEncoder:
    """An open_clip model as a :class:`ClipEncoder`.

    Args:
        name: an ``hf-hub:org/repo`` id (Marqo-FashionSigLIP...), a built-in architecture
            (``ViT-B-16``; ``open_clip.list_models()``), a ``local-dir:`` folder (or a plain folder) holding
            ``open_clip_config.json`` and the weights, or the stem of ``model_config``.
        pretrained: with a built-in architecture: a tag of ``open_clip.list_pretrained()`` or a local
            weight file; ``None`` builds it randomly initialised. Ignored by hub ids and folders.
        model_config: a model-config JSON (open_clip's format) registered under its file stem; a path or
            ``pkg://fashion_vl.conf/...``.
        init_from: see :class:`ClipEncoder`.
        image_size: override the image tower's input size (open_clip's ``force_image_size``).
    """
    open_clip = _require_open_clip()
    source = _source(name, model_config)
    kwargs: dict[str, Any] = {
        "pretrained": pretrained if not source.startswith((HF_HUB, LOCAL_DIR)) else None
    }
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    if source.startswith((HF_HUB, LOCAL_DIR)) or pretrained:
        kwargs["require_pretrained"] = (
            True  # a repo, folder or tag without weights is an error, not random init
        )
    create = lambda: open_clip.create_model(source, **kwargs)  # noqa: E731
    if source.startswith(HF_HUB):
        model = from_hub(create, source, "open_clip model")
    elif _needs_hub(source, pretrained):  # a tag: its weights live in a hub repo (or at a URL)
        model = from_hub(create, _tag_repo(source, pretrained), "open_clip weights", "model.pretrained")
    else:
        model = create()
    label = source if not kwargs["pretrained"] else f"{source} ({pretrained})"
    return ClipEncoder(model, label, init_from=init_from, heads=heads)


def _tag_repo(name: str, tag: str) -> str:
    """The hub repo (or URL) of an architecture's pretrained tag; a tag it does not have is an error."""
    open_clip = _require_open_clip()
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"model.pretrained={tag!r} is neither a local weight file nor a tag of {name} "
            f"(tags: {', '.join(tags) or 'none'}; open_clip.list_pretrained())"
        )
    return str(cfg.get("hf_hub") or cfg.get("url") or f"{name} ({tag})").strip("/")


# ---------------------------------------------------------------------------------------------------
# the model's own preprocessing, for the data modules
# ---------------------------------------------------------------------------------------------------
class OpenClipTokenizer:
    """An open_clip tokenizer behind the Hugging Face call our data collators make.

    open_clip towers read exactly ``context_length`` ids and pool by position (CLIP: the end-of-text
    token; SigLIP: the last position), so texts are always padded or truncated to the model's length,
    whatever ``padding``/``max_length`` the caller asks; ``attention_mask`` marks the non-pad ids.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, name: str) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.name = name
        inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer wraps a transformers tokenizer
        pad = getattr(inner, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"OpenClipTokenizer({self.name!r}, context_length={self.context_length})"

    def __call__(self, texts: Sequence[str], **_: Any) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts)).long()
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}


def open_clip_tokenizer(
    name: str, pretrained: str | None = None, model_config: str | None = None
) -> OpenClipTokenizer:
    """The tokenizer of an open_clip model (arguments as :func:`build_open_clip`), for ``data.tokenizer``."""
    open_clip = _require_open_clip()
    source = _source(name, model_config)
    config = _model_config(source, pretrained)
    hf_tokenizer = config.get("text_cfg", {}).get("hf_tokenizer_name") or "siglip" in source.lower()
    create = lambda: open_clip.get_tokenizer(source)  # noqa: E731
    if not source.startswith(LOCAL_DIR) and (source.startswith(HF_HUB) or hf_tokenizer):
        tokenizer = from_hub(create, source, "open_clip tokenizer")  # a Hugging Face tokenizer by hub name
    else:
        tokenizer = create()  # open_clip's own BPE, shipped with the package
    vocab = int(config.get("text_cfg", {}).get("vocab_size", 0)) or len(getattr(tokenizer, "tokenizer", []))
    return OpenClipTokenizer(tokenizer, vocab, source)


def _model_config(source: str, pretrained: str | None) -> dict[str, Any]:
    """open_clip's model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of a source."""
    open_clip = _require_open_clip()
    return _full_config(source, pretrained, open_clip).get("model_cfg", {})


def _full_config(source: str, pretrained: str | None, open_clip: Any) -> dict[str, Any]:
    """``{"model_cfg": ..., "preprocess_cfg": ...}`` as open_clip resolves them for ``create_model``."""
    if source.startswith((HF_HUB, LOCAL_DIR)):
        if source.startswith(LOCAL_DIR):
            path = Path(source[len(LOCAL_DIR) :]) / "open_clip_config.json"
            if not path.is_file():
                raise FileNotFoundError(f"model.name: {path} does not exist (an open_clip folder holds one)")
            return json.loads(path.read_text())
        from open_clip.factory import _get_hf_config  # the hub's open_clip_config.json

        return from_hub(lambda: _get_hf_config(source[len(HF_HUB) :]), source, "open_clip model config")
    model_cfg = open_clip.get_model_config(source)
    if model_cfg is None:
        raise ValueError(f"model.name={source!r} is not an open_clip architecture (open_clip.list_models())")
    preprocess = open_clip.get_pretrained_cfg(source, pretrained) if pretrained else {}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def preprocess_config(name: str, pretrained: str | None = None, model_config: str | None = None) -> dict:
    """open_clip's image preprocessing of a model: ``size``, ``mean``, ``std``, ``interpolation``,
    ``resize_mode``, ``fill_color`` (its defaults, the model's image size, then the source's values)."""
    open_clip = _require_open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    source = _source(name, model_config)
    full = _full_config(source, pretrained, open_clip)
    merged = merge_preprocess_dict(asdict(PreprocessCfg()), full.get("preprocess_cfg") or {})
    image_size = full.get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
    if image_size is not None and not (full.get("preprocess_cfg") or {}).get("size"):
        merged["size"] = image_size
    return merged


def open_clip_transform(
    train: bool,
    name: str,
    pretrained: str | None = None,
    model_config: str | None = None,
    image_size: int | None = None,
    scale: Sequence[float] = (0.9, 1.0),
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own image transform on ``uint8 [3,H,W]`` tensors (see
    :func:`~fashion_vl.data.transforms.clip_preprocess`); ``image_size`` overrides its size, as
    :func:`build_open_clip`'s; training adds open_clip's random resized crop (``scale``)."""
    cfg = preprocess_config(name, pretrained, model_config)
    size = image_size if image_size is not None else cfg["size"]
    return clip_preprocess(
        train,
        size=size if isinstance(size, int) else tuple(size),
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
        fill=cfg["fill_color"],
        scale=scale,
    )


# ---------------------------------------------------------------------------------------------------
# transformers CLIP / SigLIP
# ---------------------------------------------------------------------------------------------------
def build_transformers_clip(
    name: str = "openai/clip-vit-base-patch16",
    pretrained: bool = True,
    model_type: str = "clip",
    init_from: str | None = None,
    heads: Mapping[str, Callable[[ClipEncoder], nn.Module]] | None = None,
    text_config: dict | None = None,
    vision_config: dict | None = None,
    **config_overrides: Any,
) -> ClipEncoder:
    """A transformers ``CLIPModel``/``SiglipModel`` as a :class:`ClipEncoder`: by hub id or local folder
    (``pretrained: true``, offline-safe), or randomly initialised from ``model_type`` (``clip`` or
    ``siglip``) with ``text_config``/``vision_config``/other overrides (tiny test models)."""
    from transformers import AutoModel, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    if pretrained:
        model = load_pretrained(
            AutoModel.from_pretrained, name, what="CLIP-family model", config_key="model.name"
        )
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise ValueError(
                f"model.name={name!r} is a {type(model).__name__}, not a CLIP/SigLIP two-tower model"
            )
        from transformers import AutoImageProcessor

        processor = load_pretrained(  # its mean/std: what transformers_clip_transform no longer applies
            AutoImageProcessor.from_pretrained, name, what="image processor", config_key="model.name"
        )
        return ClipEncoder(
            model, name, init_from=init_from, mean=processor.image_mean, std=processor.image_std, heads=heads
        )
    classes = {"clip": (CLIPConfig, CLIPModel), "siglip": (SiglipConfig, SiglipModel)}
    if model_type not in classes:
        raise ValueError(f"model.model_type must be one of {sorted(classes)}, not {model_type!r}")
    config_cls, model_cls = classes[model_type]
    config = config_cls(text_config=text_config or {}, vision_config=vision_config or {}, **config_overrides)
    return ClipEncoder(model_cls(config), f"{name} (random {model_type})", init_from=init_from, heads=heads)


_RESAMPLE = {2: "bilinear", 3: "bicubic", 0: "nearest"}  # PIL codes in transformers' image processors


def transformers_clip_transform(
    train: bool, name: str, image_size: int | None = None, scale: Sequence[float] = (0.9, 1.0)
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The image preprocessing of a transformers CLIP/SigLIP checkpoint (its image processor's size,
    crop, mean/std and resampling; offline-safe), as :func:`open_clip_transform` builds open_clip's:
    CLIP resizes the short side and centre-crops, SigLIP resizes to a square."""
    from transformers import AutoImageProcessor

    processor = load_pretrained(
        AutoImageProcessor.from_pretrained, name, what="image processor", config_key="model.name"
    )
    size = dict(getattr(processor, "size", None) or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    if "shortest_edge" in size:
        side, mode = crop.get("height", size["shortest_edge"]), "shortest"
    else:
        side, mode = size.get("height", 224), "squash"
    return clip_preprocess(
        train,
        size=image_size or side,
        interpolation=_RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic"),
        resize_mode=mode,
        scale=scale,
    )
