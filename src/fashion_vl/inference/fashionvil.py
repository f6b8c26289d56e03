"""FashionViL checkpoints (pre-training and the four fine-tunes) as inference objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.inference._project import api
from fashion_vl.inference.base import Embedder, _sequence
from fashion_vl.inference.preprocess import ImageLike


class FashionViLEmbedder(Embedder):
    """FashionViL's unimodal embeddings (the contrastive space of retrieval), and per fine-tune:

    - composition (``task == "composition"``): :meth:`encode_composed`, the fusion of reference image and
      text read as the mean of its visual outputs, against image embeddings;
    - classification (the network's ``heads.classification``): :meth:`classify`, class probabilities from the fused [CLS];
    - outfit (a CSA-Net network): :meth:`encode_images` embeds candidate items (the blank side) and
      :meth:`encode_outfits` embeds partial outfits as queries for them; no text.

    Each call runs the computation the LightningModule's evaluation runs, then L2-normalises.
    """

    family = "fashionvil"

    def __init__(
        self, parts: Mapping[str, nn.Module], config: Mapping[str, Any], *, task: str, **kwargs: Any
    ):
        super().__init__(parts, config, **kwargs)
        self.task = task
        net = self.net
        self.vectors_per_image = 1
        self.outfit = isinstance(net, api().CSANet)
        if self.outfit:
            self.embed_dim = net.projection.out_features
            self.capabilities = frozenset({"image", "outfit"})
            return
        if not isinstance(net, api().FashionViL):
            raise TypeError(
                f"{self.name}: a FashionViLEmbedder needs a FashionViL or CSA-Net, not {type(net).__name__}"
            )
        self.embed_dim = net.hidden_size
        capabilities = {"image", "text"}
        if task == "composition":
            capabilities.add("composed")
        if "classification" in getattr(net, "heads", {}):
            capabilities.add("classify")
        self.capabilities = frozenset(capabilities)

    # as lit.retrieval.GalleryRetrievalModule, lit.composed.ComposedRetrievalModule and
    # lit.outfits.OutfitRetrievalModule compute them in evaluation
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.outfit:
            return self.net.embed_blank(pixels)
        return self.net.encode_image(pixels, normalize=True)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net.encode_text(input_ids, attention_mask, normalize=True)

    def composed_features(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        fused = self.net.encode_fused(input_ids, attention_mask, pixels)
        return self.net.normalize(fused.visual.mean(dim=1))

    def classify(
        self,
        images: Sequence[ImageLike],
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: bool | None = None,
        to_numpy: bool = False,
    ) -> torch.Tensor | np.ndarray:
        """Class probabilities ``[N, C]`` (float32, CPU) of each (image, its product text) pair from the
        classification head; ``argmax(-1)`` is the predicted (sub-)category id of the run's label."""
        self.require("classify")
        images, texts = _sequence(images, "images"), _sequence(texts, "texts")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        head = self.net.heads["classification"]

        def step(rows: slice) -> torch.Tensor:
            tokens = self.tokens(texts[rows], rows.start)
            fused = self.net.encode_fused(
                tokens["input_ids"], tokens["attention_mask"], self.pixels(images[rows], rows.start)
            )
            return head(fused.pooled).float().softmax(dim=-1).cpu()

        outputs = self.batched(len(images), batch_size, progress, "classify", step)
        num_classes = head.classifier.out_features
        probabilities = torch.cat(outputs) if outputs else torch.zeros(0, num_classes)
        return self._output(probabilities, to_numpy)

    def encode_outfits(
        self,
        outfits: Sequence[Sequence[ImageLike]],
        item_categories: Sequence[Sequence[int]],
        blank_categories: Sequence[int],
        *,
        batch_size: int = 64,
        progress: bool | None = None,
        to_numpy: bool = False,
    ) -> torch.Tensor | np.ndarray:
        """Outfit-completion queries ``[N, D]``: for each partial outfit (its item images and their
        Polyvore category ids) and the category of the missing item, the mean of CSA-Net's
        category-conditioned item embeddings, L2-normalised; score candidates from :meth:`encode_images`
        (of items of ``blank_categories``) by inner product."""
        self.require("outfit")
        outfits = _sequence(outfits, "outfits")
        if not len(outfits) == len(item_categories) == len(blank_categories):
            raise ValueError(
                f"{len(outfits)} outfits, {len(item_categories)} category lists, {len(blank_categories)} blank categories"
            )
        for i, (items, categories) in enumerate(zip(outfits, item_categories, strict=True)):
            if len(items) != len(categories) or not len(items):
                raise ValueError(
                    f"outfit {i}: {len(items)} items and {len(categories)} categories (need >= 1 each)"
                )

        def step(rows: slice) -> torch.Tensor:
            chosen = range(rows.start, rows.stop)
            images = [image for i in chosen for image in outfits[i]]
            owner = torch.tensor([i - rows.start for i in chosen for _ in outfits[i]], device=self.device)
            question = torch.tensor([c for i in chosen for c in item_categories[i]], device=self.device)
            blank = torch.tensor([blank_categories[i] for i in chosen], device=self.device)
            items = self.net.embed_question(self.pixels(images), question, blank[owner]).float()
            summed = items.new_zeros(len(chosen), items.shape[1]).index_add_(0, owner, items)
            return F.normalize(summed / torch.bincount(owner, minlength=len(chosen))[:, None], dim=-1).cpu()

        outputs = self.batched(len(outfits), batch_size, progress, "outfits", step)
        return self._output(torch.cat(outputs) if outputs else torch.zeros(0, self.embed_dim), to_numpy)
