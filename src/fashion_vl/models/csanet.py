"""CSA-Net for outfit complementary item retrieval (reference §3d; Lin et al., CVPR 2020).

A CNN embeds each item (global average pool, then a linear map to ``feature_dim``). A question item
is re-weighted by category-specific attention: ``num_conditions`` learnable masks over the feature
dimensions, mixed by softmax weights that an MLP computes from the two-hot (question category, blank
category). The blank side is the plain projection. Both go through FashionViL's learnable-scale
normalisation. The CNN starts from FashionViL's image encoder (``init_from``), its last stage and all
BatchNorm layers frozen as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.models.checkpoint import load_from_checkpoint
from fashion_vl.models.encoders.image import create_timm_trunk
from fashion_vl.models.encoders.pixels import FASHION_MEAN, FASHION_STD, ImageNormalize
from fashion_vl.models.fashionvil import ContrastiveNorm


class ConditionalSimilarityAttention(nn.Module):
    """``mean_k( x * mask_k * w_k(c) )`` with ``w(c) = softmax(MLP(two-hot c))``."""

    def __init__(
        self, feature_dim: int, num_categories: int, num_conditions: int = 5, hidden: int = 64
    ) -> None:
        super().__init__()
        self.num_categories = num_categories
        self.weights = nn.Sequential(
            nn.Linear(2 * num_categories, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_conditions),
            nn.Softmax(dim=-1),
        )
        self.masks = nn.Embedding(num_conditions, feature_dim)  # N(0, 1) init, as the reference

    def forward(
        self, x: torch.Tensor, question_category: torch.Tensor, blank_category: torch.Tensor
    ) -> torch.Tensor:
        two_hot = torch.cat(
            [
                F.one_hot(question_category, self.num_categories),
                F.one_hot(blank_category, self.num_categories),
            ],
            dim=1,
        ).to(x.dtype)
        w = self.weights(two_hot)  # [B, K]
        return (x[:, None, :] * self.masks.weight[None] * w[..., None]).mean(dim=1)


class CSANet(nn.Module):
    """CSA-Net with a timm CNN.

    Args:
        name, pretrained, timm_kwargs: the CNN (``resnet50.tv_in1k`` for real runs).
        feature_dim: embedding size (256).
        num_categories: Polyvore categories (153).
        num_conditions: attention masks (5).
        init_from: a FashionViL checkpoint (pre-training or fine-tuning) whose image encoder starts the
            CNN; a plain state dict of the CNN works too. Strict.
        frozen_stages: CNN submodules whose weights do not train (the reference freezes ``layer4``).
        freeze_batchnorm: keep every BatchNorm in eval mode with frozen affine parameters.
        mean, std: the normalisation of ``uint8`` input (float input is taken as normalised already).
    """

    def __init__(
        self,
        name: str = "resnet50.tv_in1k",
        pretrained: bool = False,
        feature_dim: int = 256,
        num_categories: int = 153,
        num_conditions: int = 5,
        init_from: str | None = None,
        frozen_stages: Sequence[str] = ("layer4",),
        freeze_batchnorm: bool = True,
        contrastive_scale: float = 4.0,
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.input_norm = ImageNormalize(mean, std)
        self.trunk = create_timm_trunk(name, pretrained, config_key="model.name", **timm_kwargs)
        if init_from:
            load_from_checkpoint(
                self.trunk, init_from, prefix=["net.image_encoder.trunk.", "image_encoder.trunk.", "trunk.", ""],
                what="CSA-Net image encoder",
            )  # fmt: skip
        for stage in frozen_stages:
            module = getattr(self.trunk, stage, None)
            if module is None:
                raise ValueError(f"model.frozen_stages: the CNN '{name}' has no submodule '{stage}'")
            module.requires_grad_(False)
        self.freeze_batchnorm = freeze_batchnorm
        if freeze_batchnorm:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
        self.projection = nn.Linear(self.trunk.num_features, feature_dim)
        self.attention = ConditionalSimilarityAttention(feature_dim, num_categories, num_conditions)
        self.norm = ContrastiveNorm(contrastive_scale)

    def train(self, mode: bool = True) -> CSANet:
        super().train(mode)
        if self.freeze_batchnorm:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled CNN features projected to ``feature_dim``: ``[B, D]``."""
        return self.projection(self.trunk.forward_features(self.input_norm(images)).mean(dim=(2, 3)))

    def embed_blank(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(images))

    def embed_question(
        self, images: torch.Tensor, question_category: torch.Tensor, blank_category: torch.Tensor
    ) -> torch.Tensor:
        return self.norm(self.attention(self.features(images), question_category, blank_category))
