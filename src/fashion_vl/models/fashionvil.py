"""FashionViL: an image encoder and one BERT that is both text encoder and fusion encoder.

Three ways of feeding the shared model (Han et al., ECCV 2022; `docs/reference.md` FashionViL §1):

- image only: the transformer is bypassed; the 49 grid features are projected and mean-pooled;
- text only: BERT over the text, mean over real tokens;
- fused: BERT over ``[text ; visual]`` where visual tokens carry their own position and token-type
  embeddings (initialised from BERT's tables) and share BERT's embedding LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel
from transformers.masking_utils import create_bidirectional_mask

from fashion_vl.models.checkpoint import load_from_checkpoint
from fashion_vl.models.encoders.image import GridImageEncoder
from fashion_vl.models.outputs import FusedOutput


class ContrastiveNorm(nn.Module):
    """``f(x) = s * x / ||x||`` with one learnable scale shared by every modality.

    With temperature 1, logits between two such vectors are ``s^2 cos``; ``s0 = 4`` is an effective
    temperature of 1/16 at init, learnt from there.
    """

    def __init__(self, init_scale: float = 4.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1)


class VisualEmbeddings(nn.Module):
    """Grid features to BERT's hidden size, plus visual position and token-type tables."""

    def __init__(self, feature_dim: int, hidden_size: int, num_positions: int) -> None:
        super().__init__()
        self.projection = nn.Linear(feature_dim, hidden_size)
        self.position_embeddings = nn.Embedding(num_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(1, hidden_size)

    @torch.no_grad()
    def copy_tables_from(self, bert: BertModel) -> None:
        """Start the visual tables from BERT's text position rows 0..N-1 and token type 0."""
        n = self.position_embeddings.num_embeddings
        text_positions = bert.embeddings.position_embeddings.weight
        if text_positions.shape[0] < n:
            raise ValueError(f"BERT has {text_positions.shape[0]} positions, fewer than {n} visual tokens")
        self.position_embeddings.weight.copy_(text_positions[:n])
        self.token_type_embeddings.weight.copy_(bert.embeddings.token_type_embeddings.weight[:1])

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """Un-normalised embeddings ``[B, N, D]`` for the fusion input."""
        n = grid.shape[1]
        positions = torch.arange(n, device=grid.device)
        return (
            self.projection(grid)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0][None, None]
        )


# What a task builds for itself and ``init_from`` therefore never loads: the heads and MPFC's image
# tokenizer. A pre-training checkpoint holds its heads (ITM, MLM, MPFC, PAC) and its VQ tokenizer; a
# fine-tuning task starting from it reads the encoder and ignores them.
TASK_PARTS = ("heads", "image_tokenizer")


class FashionViL(nn.Module):
    """The FashionViL network: the encoder, and the heads and frozen image tokenizer of its task.

    Build order (it fixes which random numbers each part's initialisation draws): the image and text
    encoders (given), the visual embeddings and the contrastive scale, the ``init_from`` weights, the
    image tokenizer, then the heads in the order given.

    Args:
        image_encoder: grid image encoder (ResNet-50 trunk at real size).
        text_encoder: a ``BertModel`` (text encoder and fusion encoder).
        num_visual_tokens: grid tokens per image (49 for a 7x7 map); sizes the visual position table.
        contrastive_scale: initial ``s`` of :class:`ContrastiveNorm`.
        init_from: a checkpoint to start the encoder from: a pre-training (or any task's) Lightning
            checkpoint, whose ``net.*`` weights are this model, or a plain state dict of it. The load is
            strict for the encoder; the checkpoint's heads and image tokenizer (:data:`TASK_PARTS`) are
            ignored, as this network builds its own.
        reinit: encoder modules not taken from ``init_from`` (fine-tuning re-initialises the contrastive
            scale).
        image_tokenizer: MPFC's frozen VQ tokenizer (images -> codebook indices), or a callable that
            builds it (so that it is built after the encoder); ``None``: none (every task but
            pre-training).
        heads: name -> callable building the head from this network (``heads.ItmHead`` and the like,
            as partials); the objectives and tasks read them as ``net.heads[name]``.
    """

    def __init__(
        self,
        image_encoder: GridImageEncoder,
        text_encoder: BertModel,
        num_visual_tokens: int = 49,
        contrastive_scale: float = 4.0,
        init_from: str | None = None,
        reinit: tuple[str, ...] = ("contrastive_norm",),
        image_tokenizer: nn.Module | Callable[[], nn.Module] | None = None,
        heads: Mapping[str, Callable[[FashionViL], nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        hidden = text_encoder.config.hidden_size
        self.visual_embeddings = VisualEmbeddings(image_encoder.num_features, hidden, num_visual_tokens)
        self.visual_embeddings.copy_tables_from(text_encoder)
        self.contrastive_norm = ContrastiveNorm(contrastive_scale)
        if init_from:
            load_from_checkpoint(
                self,
                init_from,
                prefix=["net.", ""],
                exclude=(*reinit, *TASK_PARTS),
                what="FashionViL encoder",
            )
        if image_tokenizer is not None and not isinstance(image_tokenizer, nn.Module):
            image_tokenizer = image_tokenizer()
        self.image_tokenizer = image_tokenizer
        self.heads = nn.ModuleDict()
        for name, build in (heads or {}).items():
            if build is not None:
                self.heads[name] = build(self)

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_encoder.config.vocab_size

    def compile_units(self) -> dict[str, nn.Module]:
        """The parts ``torch.compile`` takes one by one: the grid image encoder, BERT's embeddings and its
        layer stack. Every entry point (image only, text only, fused) runs through them, while the glue between
        (masking the grid, concatenating text and visual tokens) stays eager, so no entry point needs a
        graph of its own."""
        bert = self.text_encoder
        return {
            "image_encoder": self.image_encoder,
            "text_encoder.embeddings": bert.embeddings,
            "text_encoder.encoder": bert.encoder,
        }

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Contrastive embedding ``s * x / ||x||``."""
        return self.contrastive_norm(x)

    def image_grid(self, images: torch.Tensor, grid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CNN grid features ``[B, N, C]``; positions where ``grid_mask`` is True are zeroed (MPFC)."""
        grid = self.image_encoder(images)
        if grid_mask is not None:
            grid = grid.masked_fill(grid_mask[..., None], 0.0)
        return grid

    def encode_image(
        self, images: torch.Tensor | None = None, *, grid: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Image-only embedding ``[B, D]``: projection of the grid, mean over tokens, no transformer."""
        if grid is None:
            grid = self.image_grid(images)
        x = self.visual_embeddings.projection(grid).mean(dim=1)
        return self.normalize(x) if normalize else x

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool = False
    ) -> torch.Tensor:
        """Text-only embedding ``[B, D]``: BERT, then the mean over real tokens ([CLS]/[SEP] included)."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = masked_mean(hidden, attention_mask)
        return self.normalize(x) if normalize else x

    def encode_fused(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        *,
        grid: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
    ) -> FusedOutput:
        """BERT over ``[text ; visual]``.

        Args:
            input_ids, attention_mask: ``[B, L]`` text tokens and their mask (1 = real token).
            images or grid: the image ``[B, 3, H, W]`` or its (possibly masked) grid ``[B, N, C]``.
            visual_attention_mask: ``[B, N]`` (1 = attend); all ones when omitted.
        """
        if grid is None:
            grid = self.image_grid(images)
        embeddings = self.text_encoder.embeddings
        text = embeddings(input_ids=input_ids)
        # BERT's embedding LayerNorm and dropout act per token, so applying them to the visual tokens
        # separately equals applying them to the concatenation, as VisualBERT-style models do.
        visual = embeddings.dropout(embeddings.LayerNorm(self.visual_embeddings(grid)))
        hidden = torch.cat([text, visual], dim=1)
        if visual_attention_mask is None:
            visual_attention_mask = attention_mask.new_ones(grid.shape[:2])
        mask = torch.cat([attention_mask, visual_attention_mask.to(attention_mask.dtype)], dim=1)
        mask4d = create_bidirectional_mask(
            config=self.text_encoder.config, inputs_embeds=hidden, attention_mask=mask
        )
        out = self.text_encoder.encoder(hidden, attention_mask=mask4d).last_hidden_state
        length = input_ids.shape[1]
        pooler = self.text_encoder.pooler
        return FusedOutput(
            text=out[:, :length],
            visual=out[:, length:],
            pooled=pooler(out) if pooler is not None else None,
        )


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, L, D]`` over positions where ``mask [B, L]`` is nonzero."""
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
