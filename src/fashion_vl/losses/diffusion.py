"""UniFashion's diffusion loss: Stable Diffusion learns to draw the batch images from the Q-Former's
query outputs of the same images and their product texts (``shared/reference/unifashion.md`` §1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fashion_vl.data.transforms import CLIP_MEAN, CLIP_STD
from fashion_vl.losses.objective import output
from fashion_vl.models.unifashion.diffusion import DiffusionBranch, to_vae_range

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


class DiffusionObjective(nn.Module):
    """Noise-prediction MSE of a :class:`~fashion_vl.models.unifashion.diffusion.DiffusionBranch`
    conditioned on the step's image query outputs (``encoding.query_states``) and the product texts
    (``batch["text"]``, so the DataModule needs ``return_text: true``).

    The objective owns the branch (VAE, UNet, CLIP text encoder, ProjLayer): the UniFashion network
    stays what phase 1 and phase 2 share, and the frozen VAE and text encoder are out of the optimizer
    (``requires_grad=False``) like the frozen ViT.

    The batch images are normalised for the ViT; the VAE wants ``[-1, 1]`` at the branch's resolution,
    so they are un-normalised with the data transform's ``mean`` / ``std`` and resized (bilinear,
    antialiased). At real size a 224-px ViT input resized to SD's 512 px is a blurry target: a data
    key with a 512-px copy (``image_key``) is the fix, still to come in the data code.

    Args:
        branch: the diffusion branch.
        condition_drop: probability that a sample trains with the unconditional context (the negative
            prompt without queries), so that sampling can use classifier-free guidance.
        qformer_grad: let the diffusion loss reach the Q-Former through the query outputs. The
            reference freezes the Q-Former when its diffusion loss is on (unless ``qformer_train``); here
            the other objectives may still train it, so ``false`` detaches the queries instead.
        image_key: batch key of the images to draw.
        mean, std: the normalisation of ``batch[image_key]`` (the target-pad transform's CLIP values).
    """

    def __init__(
        self,
        branch: DiffusionBranch,
        condition_drop: float = 0.1,
        qformer_grad: bool = False,
        image_key: str = "image",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        if not 0.0 <= condition_drop < 1.0:
            raise ValueError(
                f"lit.objectives.diffusion.condition_drop must be in [0, 1), not {condition_drop}"
            )
        self.branch = branch
        self.condition_drop = condition_drop
        self.qformer_grad = qformer_grad
        self.image_key = image_key
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def to_vae_range(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[-1, 1]`` at the branch's resolution."""
        side = self.branch.resolution
        return to_vae_range(images, self.mean, self.std, (side, side))

    def forward(
        self, net: UniFashion, enc: ImageTextEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        if "text" not in batch:
            raise KeyError("the diffusion loss needs the raw texts: set data.return_text=true")
        queries = enc.query_states if self.qformer_grad else enc.query_states.detach()
        pixels = self.to_vae_range(batch[self.image_key])
        loss = self.branch.loss(queries, pixels, batch["text"], generator, condition_drop=self.condition_drop)
        return output(loss)
