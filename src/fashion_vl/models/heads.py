"""Pre-training heads on top of FashionViL's hidden states (BERT-style, from transformers where it has them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForPreTraining, BertModel
from transformers.models.bert.modeling_bert import (
    BertLMPredictionHead,
    BertOnlyNSPHead,
    BertPredictionHeadTransform,
)

from fashion_vl.models.hub import load_pretrained


class ItmHead(BertOnlyNSPHead):
    """Image-text matching: pooled [CLS] of the fusion -> 2 logits (1 = matched), BERT's NSP head shape."""

    def __init__(self, text_encoder: BertModel) -> None:
        super().__init__(text_encoder.config)


class MlmHead(nn.Module):
    """BERT's LM prediction head (transform + decoder), the decoder tied to the word embeddings.

    With ``pretrained`` the transform and bias start from ``name``'s ``cls.predictions`` as in the
    reference (FashionViL starts from bert-base-uncased's pre-training heads).
    """

    def __init__(
        self, text_encoder: BertModel, pretrained: bool = False, name: str = "bert-base-uncased"
    ) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(text_encoder.config)
        if pretrained:
            source = load_pretrained(
                BertForPreTraining.from_pretrained,
                name,
                what="BERT pre-training heads",
                config_key="lit.objectives.mlm.head.name",
            )
            self.predictions.load_state_dict(source.cls.predictions.state_dict())
        self.predictions.decoder.weight = text_encoder.embeddings.word_embeddings.weight
        self.predictions.decoder.bias = self.predictions.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class MpfcHead(nn.Module):
    """Masked patch feature classification: transform (Linear, GELU, LayerNorm) -> codebook logits."""

    def __init__(self, text_encoder: BertModel, codebook_size: int = 1024) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(text_encoder.config)
        self.classifier = nn.Linear(text_encoder.config.hidden_size, codebook_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(hidden))


class CosineClassifier(nn.Module):
    """PAC head: cosine similarity between a feature and each class vector.

    ``logits = scale * normalize(x) @ normalize(W, dim=0)``; the reference uses ``scale = 1`` (logits in
    [-1, 1]) with ``W ~ N(0, 1)``. One head serves both modalities.
    """

    def __init__(self, in_features: int, num_classes: int = 2232, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, num_classes))
        self.scale = scale

    @classmethod
    def for_encoder(
        cls, text_encoder: BertModel, num_classes: int = 2232, scale: float = 1.0
    ) -> CosineClassifier:
        return cls(text_encoder.config.hidden_size, num_classes, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=0)
