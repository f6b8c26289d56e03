"""Typed outputs of the models' entry points."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FusedOutput:
    """The fusion encoder's output over ``[text ; visual]`` (text first)."""

    text: torch.Tensor  # [B, L, D] hidden states at the text positions
    visual: torch.Tensor  # [B, N, D] hidden states at the visual positions
    pooled: torch.Tensor | None  # [B, D] BERT pooler on the text [CLS], None if the model has no pooler


@dataclass
class ImageTextEncoding:
    """UniFashion's shared passes over an image-text batch, computed once and read by every objective."""

    image_tokens: torch.Tensor  # [B, N, C] frozen ViT tokens after ln_vision
    query_states: torch.Tensor  # [B, Q, H] Q-Former query outputs over the image (no text)
    image_feats: torch.Tensor  # [B, Q, E] normalised contrastive features of the queries
    text_feat: torch.Tensor  # [B, E] normalised contrastive feature of the text [CLS]


@dataclass
class ComposedEncoding:
    """UniFashion phase 2's passes over a composed-retrieval batch, computed once per step."""

    composed_feat: torch.Tensor  # [B, E] normalised fused [CLS] of (reference image, modification text)
    target_tokens: torch.Tensor  # [B, N, C] frozen ViT tokens of the target image after ln_vision
    target_states: torch.Tensor  # [B, P, H] prompt-query outputs over the target image
    target_feats: torch.Tensor  # [B, P, E] their normalised contrastive features
    caption_feat: torch.Tensor | None  # [B, E] normalised text [CLS] of the target caption, if any
    temperature: torch.Tensor  # [] the contrastive temperature, clamped once per step
    reference_tokens: torch.Tensor | None = None  # [B, N, C] frozen ViT tokens of the reference image
