"""The frozen ViT whose patch tokens the Q-Former reads."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from fashion_vl.models.checkpoint import load_from_checkpoint, read_state_dict
from fashion_vl.models.encoders.image import create_timm_trunk

log = logging.getLogger(__name__)

RUN_PREFIX = "net.image_encoder."  # a UniFashion run's Lightning checkpoint

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or null, not {dtype!r}")
    return _DTYPES[dtype]


class FrozenViT(nn.Module):
    """A timm ViT trunk as a frozen token encoder: ``[B, 3, H, W] -> [B, 1 + N, C]`` (class token first).

    BLIP-2 reads EVA-CLIP ViT-g/14 with its last block dropped and without a final norm (LAVIS builds
    39 of its 40 blocks and applies its own ``ln_vision``, which lives in the Q-Former here); timm's
    ``eva_giant_patch14_clip_224.laion400m`` with ``num_blocks: 39, final_norm: false`` is that
    network. A tiny random timm ViT serves CPU tests.

    When ``frozen`` (the default) the parameters have ``requires_grad=False`` (so no optimizer state),
    the forward runs without autograd, and the module stays in eval mode whatever ``train()`` asks.

    Args:
        name: timm model name; pretrained, checkpoint_path: as :func:`create_timm_trunk`.
        num_blocks: keep only the first ``num_blocks`` transformer blocks (``None``: all).
        final_norm: keep the trunk's final LayerNorm.
        dtype: store and run the trunk in this dtype (``float16`` as LAVIS's ``vit_precision``); the
            output is float32.
        frozen: see above.
        init_from: a Lightning checkpoint of a UniFashion run whose frozen ViT (``net.image_encoder.*``)
            this one must be, loaded strictly after the trunk is built. The configs point it at the run
            the Q-Former comes from (``model.qformer.init_from``): a Q-Former reads the tokens of the
            ViT it was trained on, and a randomly initialised ViT (the CPU configs) built under another
            seed, or a different local copy of the pretrained one, would silently give it other tokens.
            A checkpoint that holds no image-encoder weights (a converted LAVIS/UniFashion checkpoint,
            made for the pretrained ViT) leaves the ViT as built, and says so in the log.
        timm_kwargs: passed to ``timm.create_model`` (``img_size``, and sizes for a tiny variant).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        num_blocks: int | None = None,
        final_norm: bool = False,
        dtype: str | None = None,
        frozen: bool = True,
        init_from: str | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        trunk = create_timm_trunk(name, pretrained, checkpoint_path, **timm_kwargs)
        if not hasattr(trunk, "blocks"):
            raise ValueError(f"model.image_encoder.name={name} is not a ViT (no .blocks)")
        if num_blocks is not None:
            if not 0 < num_blocks <= len(trunk.blocks):
                raise ValueError(
                    f"model.image_encoder.num_blocks={num_blocks}: {name} has {len(trunk.blocks)}"
                )
            trunk.blocks = trunk.blocks[:num_blocks]
        if not final_norm:
            trunk.norm = nn.Identity()
        self.dtype = resolve_dtype(dtype)
        if self.dtype is not None:
            trunk = trunk.to(self.dtype)
        self.trunk = trunk
        if init_from:
            self._load_run_weights(init_from)
        self.num_features: int = trunk.num_features
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    def _load_run_weights(self, path: str) -> None:
        state = read_state_dict(path)
        if not any(k.startswith(RUN_PREFIX) for k in state):
            log.info("%s holds no image-encoder weights: the ViT stays as built", path)
            return
        key = RUN_PREFIX + "trunk.pos_embed"
        ours = getattr(self.trunk, "pos_embed", None)
        if key in state and ours is not None and state[key].shape != ours.shape:
            state = {**state, key: self._resampled_pos_embed(state[key], path)}
        load_from_checkpoint(self, path, prefix=RUN_PREFIX, what="frozen image encoder", state=state)
        log.info("frozen image encoder loaded from %s", path)

    def _resampled_pos_embed(self, pos_embed: torch.Tensor, path: str) -> torch.Tensor:
        """A run's position embeddings at this ViT's patch grid: the run read another image size (the
        try-on demo reads 64 px, phase 1 112 px). Interpolated over the grid with the prefix tokens kept,
        as LAVIS's ``interpolate_pos_embed`` does when BLIP-2 changes resolution (timm's resampler)."""
        from timm.layers import resample_abs_pos_embed

        prefix = getattr(self.trunk, "num_prefix_tokens", 1)
        old = pos_embed.shape[1] - prefix
        side = math.isqrt(old)
        if side * side != old or pos_embed.shape[2] != self.trunk.pos_embed.shape[2]:
            return pos_embed  # not a square grid of the same width: the strict load names the mismatch
        grid = list(self.trunk.patch_embed.grid_size)
        log.info(
            "%s: position embeddings resampled from a %dx%d to a %dx%d patch grid", path, side, side, *grid
        )
        resampled = resample_abs_pos_embed(pos_embed.float(), grid, [side, side], num_prefix_tokens=prefix)
        return resampled.to(pos_embed.dtype)

    def train(self, mode: bool = True) -> FrozenViT:
        return super().train(False if self.frozen else mode)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            images = images.to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.trunk.forward_features(images)
        return tokens.float()
