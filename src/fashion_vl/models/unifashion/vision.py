"""The frozen ViT whose patch tokens the Q-Former reads."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fashion_vl.models.checkpoint import load_from_checkpoint, read_state_dict
from fashion_vl.models.encoders.image import create_timm_trunk
from fashion_vl.models.encoders.pixels import CLIP_MEAN, CLIP_STD, ImageNormalize

log = logging.getLogger(__name__)

RUN_PREFIX = "net.image_encoder."  # a UniFashion run's Lightning checkpoint
# the vision tower of a converted LAVIS/UniFashion checkpoint (fvl-convert lavis: transformers' BLIP-2 names)
CONVERTED_PREFIXES = ("vision_model.embeddings.", "vision_model.encoder.")

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
        init_from: a checkpoint whose ViT this one must be, loaded strictly after the trunk is built:
            a Lightning checkpoint of a UniFashion run (``net.image_encoder.*``), or a checkpoint written
            by ``fvl-convert lavis`` whose source held the authors' EVA ViT (``visual_encoder.*``, stored
            under transformers' BLIP-2 names ``vision_model.*`` and renamed back to timm's EVA names
            here, :func:`timm_eva_state_dict`). The configs point it at
            the checkpoint the Q-Former comes from (``model.qformer.init_from``): a Q-Former reads the
            tokens of the ViT it was trained with, and a randomly initialised ViT (the CPU configs) built
            under another seed, or another copy of the pretrained one, would silently give it other
            tokens. A checkpoint without ViT weights (LAVIS saves only trainable tensors, so its files
            usually lack the frozen ViT) leaves the ViT as built.
        mean, std: the normalisation of ``uint8`` input (CLIP's, as EVA-CLIP was trained; float input is
            taken as normalised already).
        timm_kwargs: passed to ``timm.create_model`` (``img_size``, and sizes for a tiny variant).

    One log line per build says which weights the ViT runs with (:attr:`weights_source`): timm's
    pretrained ones, a local weight file, a random initialisation, a run's checkpoint or a converted one.
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
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.input_norm = ImageNormalize(mean, std)
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
        if checkpoint_path is not None:
            self.weights_source = f"timm weights from the local file {checkpoint_path}"
        elif pretrained:
            self.weights_source = f"timm's pretrained weights of {name}"
        else:
            self.weights_source = "a random initialisation (pretrained=false)"
        if init_from:
            self._load_weights(init_from)
        log.info("frozen ViT %s: %s", name, self.weights_source)
        self.num_features: int = trunk.num_features
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    def _load_weights(self, path: str) -> None:
        """Load ``init_from`` (see the class docstring) and record where the weights came from."""
        state = read_state_dict(path)
        if any(k.startswith(RUN_PREFIX) for k in state):
            state = self._fitted_pos_embed(state, RUN_PREFIX + "trunk.pos_embed", path)
            load_from_checkpoint(self, path, prefix=RUN_PREFIX, what="frozen image encoder", state=state)
            self.weights_source = f"the run checkpoint {path} ({RUN_PREFIX}*)"
        elif any(k.startswith(CONVERTED_PREFIXES) for k in state):
            timm_state = self._fitted_pos_embed(timm_eva_state_dict(state, source=path), "pos_embed", path)
            load_from_checkpoint(
                self.trunk,
                path,
                what="frozen ViT (the converted checkpoint's vision tower)",
                state=timm_state,
            )
            self.weights_source = (
                f"the converted LAVIS/UniFashion checkpoint {path} (the authors' visual_encoder, "
                "stored as vision_model.*)"
            )
        else:
            self.weights_source += f"; {path} holds no ViT weights"

    def _fitted_pos_embed(self, state: dict, key: str, path: str) -> dict:
        ours = getattr(self.trunk, "pos_embed", None)
        if key in state and ours is not None and state[key].shape != ours.shape:
            return {**state, key: self._resampled_pos_embed(state[key], path)}
        return state

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
        images = self.input_norm(images)
        if self.dtype is not None:
            images = images.to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.trunk.forward_features(images)
        return tokens.float()


# The vision tower's names in a converted file (fvl-convert lavis: transformers' BLIP-2 names) -> timm's
# EVA (which are LAVIS's eva_vit names). A plain table rather than convert/'s Rule: the network reads
# these files itself and sits below the converters.
_VL = r"vision_model\.encoder\.layers\.(?P<i>\d+)\."
_P = "(?P<p>weight|bias)"
_TO_TIMM = [
    (r"vision_model\.embeddings\.class_embedding", "cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "pos_embed"),
    (rf"vision_model\.embeddings\.patch_embedding\.{_P}", "patch_embed.proj.{p}"),
    (_VL + rf"layer_norm(?P<n>1|2)\.{_P}", "blocks.{i}.norm{n}.{p}"),
    (_VL + r"self_attn\.qkv\.weight", "blocks.{i}.attn.qkv.weight"),
    (_VL + rf"self_attn\.projection\.{_P}", "blocks.{i}.attn.proj.{p}"),
    (_VL + rf"mlp\.(?P<m>fc1|fc2)\.{_P}", "blocks.{i}.mlp.{m}.{p}"),
]


def timm_eva_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The vision tower of a converted checkpoint (``vision_model.*``, transformers' BLIP-2 names, as
    ``fvl-convert lavis`` writes the authors' ``visual_encoder.*``) under timm's EVA names, which are
    LAVIS's ``eva_vit`` names: what :class:`FrozenViT` loads. ``qkv.bias = cat(q_bias, 0, v_bias)`` is
    split back into ``q_bias`` and ``v_bias`` (EVA has no key bias: a non-zero key part is refused).
    ``vision_model.post_layernorm`` (LAVIS's ``ln_vision``) belongs to the Q-Former and is left out; any
    other key is refused by name."""
    from fashion_vl.models.checkpoint import CheckpointMismatchError

    tower = {
        k: v
        for k, v in state.items()
        if k.startswith("vision_model.") and not k.startswith("vision_model.post_layernorm.")
    }
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in tower.items():
        bias = re.fullmatch(_VL + r"self_attn\.qkv\.bias", key)
        if bias:
            q, k, v = value.chunk(3)
            if bool(k.any()):
                raise CheckpointMismatchError(
                    f"{source}: {key} has a non-zero key bias, which EVA's attention (timm, LAVIS) does not have"
                )
            out[f"blocks.{bias['i']}.attn.q_bias"], out[f"blocks.{bias['i']}.attn.v_bias"] = q, v
            continue
        for pattern, target in _TO_TIMM:
            match = re.fullmatch(pattern, key)
            if match:
                out[target.format(**match.groupdict())] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointMismatchError(
            f"{source}: vision tower keys with no timm EVA counterpart: {sorted(unmapped)[:10]}"
        )
    return out
