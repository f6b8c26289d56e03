"""UniFashion's diffusion loss: the network's Stable Diffusion branch learns to draw the batch images from
the Q-Former's query outputs of the same images and their product texts (``docs/reference.md`` UniFashion §1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fashion_vl.data.transforms import CLIP_MEAN, CLIP_STD
from fashion_vl.losses.objective import StepContext, output
from fashion_vl.models.unifashion.diffusion import to_vae_range

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion
    from fashion_vl.models.unifashion.diffusion import DiffusionBranch


class DiffusionLoss(nn.Module):
    """Noise-prediction MSE of the network's diffusion branch (``net.diffusion``, a
    :class:`~fashion_vl.models.unifashion.diffusion.DiffusionBranch`) conditioned on the step's image
    query outputs (``encoding.query_states``) and the product texts (``batch["text"]``, so the
    DataModule needs ``return_text: true``).

    The batch images are normalised for the ViT; the VAE wants ``[-1, 1]`` at the branch's resolution,
    so they are un-normalised with the data transform's ``mean`` / ``std`` and resized (bilinear,
    antialiased). At real size a 224-px ViT input resized to SD's 512 px is a blurry target: a data
    key with a 512-px copy (``image_key``) is the fix, still to come in the data code.

    Args:
        condition_drop: probability that a sample trains with the unconditional context (the negative
            prompt without queries), so that sampling can use classifier-free guidance (ours; the
            reference drops nothing: 0 in the ``fidelity=reference`` preset).
        qformer_grad: let the diffusion loss reach the Q-Former through the query outputs. The
            reference freezes the Q-Former when its diffusion loss is on (unless ``qformer_train``); here
            the other objectives may still train it, so ``false`` detaches the queries instead.
        image_key: batch key of the images to draw.
        mean, std: the normalisation of ``batch[image_key]`` (the target-pad transform's CLIP values).
        vae_input: ``unit_range`` (ours): un-normalised to ``[-1, 1]`` and resized, what the VAE was
            trained on; ``as_normalised`` (the reference's ``blip2_qformer_cir_full``, a bug: the VAE
            encodes the CLIP-normalised ViT input, range about [-1.8, 2.2]; the ``fidelity=reference``
            preset) passes ``batch[image_key]`` unchanged (no resize either: it must already be at the
            branch's resolution).
        condition: ``queries`` (ours): the image-only query outputs of the encoding; ``fused`` (the
            reference): the query positions of a Q-Former pass that also reads the caption
            (``batch["input_ids"]``; one more pass here).
    """

    def __init__(
        self,
        condition_drop: float = 0.1,
        qformer_grad: bool = False,
        image_key: str = "image",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        vae_input: str = "unit_range",
        condition: str = "queries",
    ) -> None:
        super().__init__()
        if vae_input not in ("unit_range", "as_normalised"):
            raise ValueError(
                f"lit.objectives.diffusion.vae_input must be 'unit_range' or 'as_normalised', not {vae_input!r}"
            )
        if condition not in ("queries", "fused"):
            raise ValueError(
                f"lit.objectives.diffusion.condition must be 'queries' or 'fused', not {condition!r}"
            )
        self.vae_input = vae_input
        self.condition = condition
        if not 0.0 <= condition_drop < 1.0:
            raise ValueError(
                f"lit.objectives.diffusion.condition_drop must be in [0, 1), not {condition_drop}"
            )
        self.condition_drop = condition_drop
        self.qformer_grad = qformer_grad
        self.image_key = image_key
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def to_vae_range(self, images: torch.Tensor, branch: DiffusionBranch) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[-1, 1]`` at the branch's resolution (``vae_input:
        as_normalised``: unchanged)."""
        if self.vae_input == "as_normalised":
            return images
        side = branch.resolution
        return to_vae_range(images, self.mean, self.std, (side, side))

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if "text" not in batch:
            raise KeyError("the diffusion loss needs the raw texts: set data.return_text=true")
        branch = net.diffusion
        if branch is None:
            raise ValueError("the diffusion loss needs a diffusion branch: set model.diffusion")
        enc: ImageTextEncoding = step.encoding
        queries = enc.query_states
        if self.condition == "fused":
            qformer = net.qformer
            fused = qformer.fused_states(enc.image_tokens, batch["input_ids"], batch["attention_mask"])
            queries = fused[:, : qformer.num_query_tokens]
        queries = queries if self.qformer_grad else queries.detach()
        pixels = self.to_vae_range(batch[self.image_key], branch)
        loss = branch.loss(queries, pixels, batch["text"], step.generator, condition_drop=self.condition_drop)
        return output(loss)
