"""Task heads on top of FashionViL's hidden states (BERT-style, from transformers where it has them).

The network owns them (``FashionViL.heads``): each is built by the network, after its encoder, from a
partial completed with the network itself (``heads.<name>: {_target_: ..., _partial_: true}`` in the
model config), because a head reads the encoder's sizes and MLM ties its decoder to the word embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForPreTraining
from transformers.models.bert.modeling_bert import (
    BertLMPredictionHead,
    BertOnlyNSPHead,
    BertPredictionHeadTransform,
)

from fashion_vl.hub import load_pretrained

if TYPE_CHECKING:
    from fashion_vl.models.fashionvil import FashionViL


class ItmHead(BertOnlyNSPHead):
    """Image-text matching: pooled [CLS] of the fusion -> 2 logits (1 = matched), BERT's NSP head shape."""

    def __init__(self, net: FashionViL) -> None:
        super().__init__(net.text_encoder.config)


class MlmHead(nn.Module):
    """BERT's LM prediction head (transform + decoder), the decoder tied to the word embeddings.

    With ``pretrained`` the transform and bias start from ``name``'s ``cls.predictions`` as in the
    reference (FashionViL starts from bert-base-uncased's pre-training heads).
    """

    def __init__(self, net: FashionViL, pretrained: bool = False, name: str = "bert-base-uncased") -> None:
        super().__init__()
        text_encoder = net.text_encoder
        self.predictions = BertLMPredictionHead(text_encoder.config)
        if pretrained:
            source = load_pretrained(
                BertForPreTraining.from_pretrained,
                name,
                what="BERT pre-training heads",
                config_key="model.heads.mlm.name",
            )
            self.predictions.load_state_dict(source.cls.predictions.state_dict())
        self.predictions.decoder.weight = text_encoder.embeddings.word_embeddings.weight
        self.predictions.decoder.bias = self.predictions.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class MpfcHead(nn.Module):
    """Masked patch feature classification: transform (Linear, GELU, LayerNorm) -> codebook logits.

    Args:
        codebook_size: classes; ``None``: the network's image tokenizer's (``codebook_size``).
    """

    def __init__(self, net: FashionViL, codebook_size: int | None = None) -> None:
        super().__init__()
        if codebook_size is None:
            codebook_size = getattr(net.image_tokenizer, "codebook_size", None)
        if codebook_size is None:
            raise ValueError("model.heads.mpfc: give codebook_size or a model.image_tokenizer")
        config = net.text_encoder.config
        self.transform = BertPredictionHeadTransform(config)
        self.classifier = nn.Linear(config.hidden_size, codebook_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(hidden))


class CosineClassifier(nn.Module):
    """PAC head: cosine similarity between a feature and each class vector.

    ``logits = scale * normalize(x) @ normalize(W, dim=0)``; the reference uses ``scale = 1`` (logits in
    [-1, 1]) with ``W ~ N(0, 1)``. One head serves both modalities.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, num_classes))
        self.scale = scale

    @classmethod
    def for_network(cls, net: FashionViL, num_classes: int, scale: float = 1.0) -> CosineClassifier:
        """The classifier over the network's embeddings (``num_classes``: the attribute vocabulary)."""
        return cls(net.hidden_size, num_classes, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=0)


class ClassificationHead(nn.Module):
    """Pooled [CLS] of the fusion -> BERT head transform -> linear classifier (reference §3c)."""

    def __init__(self, net: FashionViL, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.transform = BertPredictionHeadTransform(net.text_encoder.config)
        self.classifier = nn.Linear(net.hidden_size, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(pooled))
