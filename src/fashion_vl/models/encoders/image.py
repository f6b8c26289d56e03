"""Image encoders that return a grid of feature tokens (FashionViL reads a 7x7 ResNet grid)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from einops import rearrange
from torch import nn

from fashion_vl.hub import PretrainedUnavailableError, hub_reachable, unavailable_message
from fashion_vl.models.encoders.pixels import FASHION_MEAN, FASHION_STD, ImageNormalize


def create_timm_trunk(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    config_key: str = "model.image_encoder.name",
    **timm_kwargs,
) -> nn.Module:
    """A timm model without its classifier and pooling, loaded offline-safely.

    ``checkpoint_path`` is a local weight file (timm ``pretrained_cfg_overlay``); otherwise pretrained
    weights come from the local Hugging Face cache, or the hub if it answers.
    """
    kwargs = dict(num_classes=0, global_pool="", **timm_kwargs)
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{config_key.rsplit('.', 1)[0]}.checkpoint_path: no file at {path}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    cached = _cached_timm_weights(name)
    if cached is not None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    if not hub_reachable():
        raise PretrainedUnavailableError(unavailable_message(name, "image encoder", config_key))
    return timm.create_model(name, pretrained=True, **kwargs)


def _cached_timm_weights(name: str) -> str | None:
    """Path of a timm model's weights in the local Hugging Face cache, if present."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return hit
    return None


class GridImageEncoder(nn.Module):
    """A CNN trunk whose last feature map is read as a sequence of grid tokens.

    ResNet-50 at 224 px gives a 7x7x2048 map, i.e. 49 tokens of 2048 features. Any timm CNN works,
    so a narrow ResNet at 112 px with output stride 16 (also 7x7) serves CPU tests.

    Args:
        name: timm model name, e.g. ``resnet50.tv_in1k`` (torchvision's ImageNet weights).
        pretrained: load the weights that go with ``name``.
        checkpoint_path: a local weight file instead of the hub.
        channels_last: run convolutions in NHWC (faster with bf16 on tensor cores).
        mean, std: the normalisation of ``uint8`` input (:class:`ImageNormalize`, the encoder's first
            step; float input is taken as normalised already).
        timm_kwargs: passed to ``timm.create_model`` (``output_stride``, ``channels``, ...).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        channels_last: bool = False,
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.input_norm = ImageNormalize(mean, std)
        self.trunk = create_timm_trunk(name, pretrained, checkpoint_path, **timm_kwargs)
        self.num_features: int = self.trunk.num_features
        self.channels_last = channels_last
        if channels_last:
            self.trunk = self.trunk.to(memory_format=torch.channels_last)

    def forward_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, C, H, W]`` of ``uint8`` pixels or normalised float images."""
        images = self.input_norm(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.trunk.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Grid tokens ``[B, H*W, C]`` in row-major order."""
        return rearrange(self.forward_grid(images), "b c h w -> b (h w) c")
