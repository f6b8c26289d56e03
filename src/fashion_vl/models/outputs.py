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
