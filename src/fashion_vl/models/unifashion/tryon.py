"""UniFashion's try-on editing branch (``docs/reference.md`` UniFashion §1, the StableVITON fork):
the diffusion branch's UNet widened to 13 input channels (noisy latent 4 + agnostic-image latent 4 +
agnostic mask 1 + dense-pose latent 4) and a ControlNet reading the garment sketch, with the caption
(and the Q-Former's query outputs, when given) as cross-attention context.

Everything that exists elsewhere is reused: the VAE, UNet, CLIP text encoder, ProjLayer, noise
schedules and guidance formula from :class:`~fashion_vl.models.unifashion.diffusion.DiffusionBranch`
(one instance, not a copy), the zero-initialised input widening from
:func:`~fashion_vl.models.unifashion.diffusion.widen_unet_input`, and the trainable encoder copy with
zero-initialised outputs from diffusers' ``ControlNetModel.from_unet``. Written here is only the glue:

- :meth:`TryOnEditor.spatial_inputs`: the 9 extra UNet channels. No diffusers pipeline builds them:
  its inpainting pipeline makes 5 (mask + masked-image latent) and has no dense-pose latent.
- :meth:`TryOnEditor.predict_noise`: one UNet pass with the ControlNet's residuals added. diffusers'
  ControlNet pipelines do this inside their sampling loops only, never as a function a training loss
  can call, and none of them also takes extra UNet input channels.
- :meth:`TryOnEditor.training_loss`: the DDPM loss with joint condition drop-out of the caption/query
  context and the sketch. ``DiffusionBranch.loss`` drops only the context, takes square images and
  knows no ControlNet.
- :meth:`TryOnEditor.sample`: the DDIM loop with guidance over both conditions, and the optional
  paste-back of the unmasked region. diffusers has no pipeline combining a 13-channel UNet and a
  ControlNet.
- :class:`SketchTextEncoder`: the UniFashion encoder reading the sketch and the caption together (the
  paper's figure; the reference code does not show how its encoder output enters the StableVITON
  fork). Its query outputs go through the branch's ProjLayer into the CLIP context, as in generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from fashion_vl.data.transforms import CLIP_MEAN, CLIP_STD
from fashion_vl.models.encoders.pixels import to_signed
from fashion_vl.models.unifashion.diffusion import DiffusionBranch, widen_unet_input
from fashion_vl.models.unifashion.model import UniFashion

# The reference's UNet input: noisy latent + agnostic latent + agnostic mask + dense-pose latent.
TRYON_IN_CHANNELS = 13
# ControlNet's hint encoder widths for SD (8x down to the latent); shortened for a smaller VAE factor.
CONTROLNET_EMBEDDING_CHANNELS = (16, 32, 96, 256)


class SketchTextEncoder(nn.Module):
    """UniFashion's encoder reading the garment sketch and its caption together: the Q-Former's
    learned queries and the caption tokens run jointly over the ViT tokens of the sketch (the fused
    pass of ITM and the composed query), and the query positions' outputs ``[B, Q, H]`` are the
    conditioning the diffusion branch's ProjLayer splices into the CLIP context.

    Hand-written because no library has it and the reference leaves it out: its StableVITON fork does
    not show how the encoder output enters, and the paper's figure has the encoder read sketch + text.

    The sketch (``[B, 1, H, W]`` in ``[0, 1]``, 1 = line, MGD's convention) is drawn as dark lines on
    white, as a line drawing looks to an image model, padded to a square with white (no distortion of
    a 512x384 picture), resized to the ViT's input side and normalised with ``mean`` / ``std`` (CLIP's,
    the ViT's own).

    Args:
        unifashion: the phase-1 network (its ViT and Q-Former; the LLM is not used).
        trainable: train the Q-Former with the editor (default: frozen, in eval mode, out of the
            optimizer, as the reference freezes the Q-Former under its diffusion loss).
        image_size: the ViT's input side (default: read from the ViT's patch embedding).
        mean, std: the ViT's input normalisation.
    """

    def __init__(
        self,
        unifashion: UniFashion,
        trainable: bool = False,
        image_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.unifashion = unifashion
        self.trainable = trainable
        if image_size is None:
            size = getattr(getattr(unifashion.image_encoder.trunk, "patch_embed", None), "img_size", None)
            if size is None:
                raise ValueError("cannot read the ViT's input size: set image_size")
            image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if not trainable:
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> SketchTextEncoder:
        return super().train(mode and self.trainable)

    @property
    def hidden_size(self) -> int:
        return self.unifashion.qformer.hidden_size

    def pixels(self, sketch: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` sketch -> ``[B, 3, S, S]`` normalised ViT input."""
        drawing = (1.0 - sketch.float().clamp(0, 1)).expand(-1, 3, -1, -1)
        h, w = drawing.shape[-2:]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        drawing = F.pad(drawing, (left, side - w - left, top, side - h - top), value=1.0)
        drawing = F.interpolate(
            drawing,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return (drawing - self.mean) / self.std

    def forward(
        self, sketch: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Query outputs ``[B, Q, H]`` of the sketch and caption."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            net = self.unifashion
            tokens = net.image_tokens(self.pixels(sketch))
            fused = net.qformer.fused_states(tokens, input_ids, attention_mask)
            return fused[:, : net.qformer.num_query_tokens]


class TryOnEditor(nn.Module):
    """Try-on by inpainting with a sketch ControlNet.

    UNet input ``[z_t ; E(agnostic) ; mask↓ ; E(densepose)]`` (13 channels for SD's 4-channel latents:
    the UNet of ``branch`` is widened in place by :func:`widen_unet_input`, so it computes what it
    computed before whatever the 9 new channels hold until training moves their weights). The
    ControlNet is ``ControlNetModel.from_unet`` of the widened UNet: it reads the same 13-channel input
    plus the sketch ``[B, 1, H, W]`` and adds its residuals to the UNet's skip connections and middle
    block; its zero convolutions make those residuals exactly zero at initialisation.

    Context: the branch's ``encode_condition`` of the Q-Former's query outputs and the captions, or,
    without queries, the captions alone through the CLIP text encoder (full text length). The query
    outputs are given by the caller or, with a ``query_encoder``, computed from the batch's sketch and
    tokenised caption (``input_ids`` / ``attention_mask``: the DataModule's ``tokenizer``). Drop-out
    replaces the context by the branch's negative-prompt context *and* the sketch by zeros, with one
    draw per sample, so the unconditional model that guidance needs is ``eps(z_t | agnostic, mask,
    pose)``: the person-side inputs are never dropped (as in the inpainting recipe and StableVITON).

    Trained: the ControlNet, the ProjLayer, the UNet's input convolution (always: its new weights are
    zero), and the rest of the UNet when ``branch.train_unet``. Frozen: the VAE and the text encoder
    (the branch's own choices).

    Args:
        branch: the diffusion branch whose VAE, UNet, text encoder and schedules are used; its UNet
            must take the latents alone (4 channels) or already be widened to latents + 9.
        condition_drop: per-sample probability of dropping the context and sketch together (0.2, the
            reference's ``u_cond_percent``).
        sketch_channels: channels of the sketch (1, the data's) for the ControlNet's hint encoder.
        controlnet: an existing ControlNet (e.g. loaded weights) instead of one built from the UNet.
        query_encoder: the :class:`SketchTextEncoder` whose query outputs condition the branch (its
            Q-Former width must be the ProjLayer's input); ``None``: captions alone.
    """

    def __init__(
        self,
        branch: DiffusionBranch,
        condition_drop: float = 0.2,
        sketch_channels: int = 1,
        controlnet: ControlNetModel | None = None,
        query_encoder: SketchTextEncoder | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= condition_drop < 1.0:
            raise ValueError(f"condition_drop must be in [0, 1), not {condition_drop}")
        self.branch = branch
        latent = branch.latent_channels
        self.extra_channels = 2 * latent + 1
        have = branch.unet.config.in_channels
        if have == latent:
            widen_unet_input(branch.unet, self.extra_channels)
        elif have != latent + self.extra_channels:
            raise ValueError(
                f"the UNet takes {have} input channels: neither the {latent} latent channels nor the "
                f"{latent + self.extra_channels} of try-on"
            )
        # The new input weights start at zero: frozen, the person-side conditions would never reach
        # the UNet, so its input convolution trains even when the rest of a frozen UNet does not.
        branch.unet.conv_in.requires_grad_(True)
        if controlnet is None:
            factor = branch.vae_scale_factor
            levels = factor.bit_length()  # log2(factor) + 1 hint-encoder widths: 4 for SD's 8x
            if 2 ** (levels - 1) != factor or levels > len(CONTROLNET_EMBEDDING_CHANNELS):
                raise ValueError(f"no ControlNet hint encoder for a VAE downsampling of {factor}")
            controlnet = ControlNetModel.from_unet(
                branch.unet,
                conditioning_embedding_out_channels=CONTROLNET_EMBEDDING_CHANNELS[:levels],
                conditioning_channels=sketch_channels,
            )
        self.controlnet = controlnet
        self.condition_drop = condition_drop
        if query_encoder is not None and query_encoder.hidden_size != branch.proj.dense1.in_features:
            raise ValueError(
                f"the query encoder gives {query_encoder.hidden_size}-d query outputs but the ProjLayer "
                f"reads {branch.proj.dense1.in_features}-d ones: set the branch's query_dim"
            )
        self.query_encoder = query_encoder

    # ------------------------------------------------------------------------------------ pieces
    @property
    def vocab_size(self) -> int | None:
        """The query encoder's vocabulary (what the caption tokenizer must fit; ``None`` without one)."""
        return None if self.query_encoder is None else self.query_encoder.unifashion.vocab_size

    @property
    def image_downsampling(self) -> int:
        return self.branch.vae_scale_factor * 2 ** (len(self.branch.unet.config.block_out_channels) - 1)

    def _check_size(self, images: torch.Tensor) -> None:
        f = self.image_downsampling
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])}: height and width must be multiples of {f} "
                "(the VAE's and UNet's downsampling)"
            )

    @torch.no_grad()
    def _encode_mode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of a condition image: the posterior's mode, so that conditions carry no
        sampling noise and sampling stays a function of the seed alone."""
        vae = self.branch.vae
        return vae.encode(to_signed(images).to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor

    def spatial_inputs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The 9 extra UNet channels ``[E(agnostic) ; mask↓ ; E(densepose)]`` at latent size, in the
        reference's order. The mask (1 = area to paint) is resized to the latent grid by nearest
        neighbour, as diffusers' inpainting pipeline does."""
        agnostic = self._encode_mode(batch["agnostic"])
        pose = self._encode_mode(batch["densepose"])
        mask = F.interpolate(
            batch["agnostic_mask"].to(agnostic.dtype), size=agnostic.shape[-2:], mode="nearest"
        )
        return torch.cat([agnostic, mask, pose], dim=1)

    def batch_queries(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The query encoder's outputs for ``batch`` (``None`` without a query encoder)."""
        if self.query_encoder is None:
            return None
        if "input_ids" not in batch:
            raise KeyError(
                "the try-on query encoder reads tokenised captions: set the DataModule's tokenizer "
                "(data.tokenizer) to the Q-Former's"
            )
        return self.query_encoder(batch["sketch"], batch["input_ids"], batch["attention_mask"])

    def encode_context(
        self, captions: Sequence[str], query_outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-attention context ``[B, L, D]``: queries spliced into the captions (the branch's
        ``encode_condition``) or, with no queries, the captions alone at the text encoder's length."""
        if query_outputs is not None:
            return self.branch.encode_condition(query_outputs, captions)
        ids = self.branch.tokenize(captions, self.branch.text_encoder.max_length)
        with torch.no_grad():  # frozen text encoder, nothing trainable before it
            return self.branch.text_encoder(ids)[0]

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | int,
        spatial: torch.Tensor,
        context: torch.Tensor,
        sketch: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's prediction on ``[latents ; spatial]`` with the ControlNet's residuals of the
        same input and the sketch."""
        unet = self.branch.unet
        x = torch.cat([latents, spatial], dim=1)
        if x.shape[1] != unet.config.in_channels:
            raise ValueError(f"the UNet takes {unet.config.in_channels} input channels, not {x.shape[1]}")
        context = context.to(unet.dtype)
        down, mid = self.controlnet(
            x, timesteps, encoder_hidden_states=context, controlnet_cond=sketch.to(x.dtype), return_dict=False
        )
        return unet(
            x,
            timesteps,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    def guided_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | int,
        spatial: torch.Tensor,
        condition: torch.Tensor,
        unconditional: torch.Tensor,
        sketch: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Classifier-free guidance ``eps_u + s (eps_c - eps_u)``, ``eps_u`` without context and sketch
        (what drop-out trained); the conditional prediction alone at ``s = 1``."""
        if guidance_scale == 1:
            return self.predict_noise(latents, timestep, spatial, condition, sketch)
        eps = self.predict_noise(
            torch.cat([latents, latents]),
            timestep,
            torch.cat([spatial, spatial]),
            torch.cat([unconditional, condition]),
            torch.cat([torch.zeros_like(sketch), sketch]),
        )
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    # --------------------------------------------------------------------------------- training
    def training_loss(
        self,
        batch: Mapping[str, Any],
        query_outputs: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        condition_drop: float | None = None,
    ) -> torch.Tensor:
        """Noise-prediction MSE of the person ``batch["image"]`` (``[-1, 1]``) given the agnostic
        image, mask, dense pose, sketch and caption (plus ``query_outputs [B, N, Hq]``, given or from
        the query encoder).
        Each sample drops context and sketch together with probability ``condition_drop``
        (default: the editor's)."""
        p = self.condition_drop if condition_drop is None else condition_drop
        images = to_signed(batch["image"])  # uint8 pixels from the data; float [-1, 1] as they are
        self._check_size(images)
        if query_outputs is None:
            query_outputs = self.batch_queries(batch)
        branch = self.branch
        latents, noise, timesteps, noisy = branch.noised_latents(images, generator)
        b, device = latents.shape[0], latents.device
        spatial = self.spatial_inputs(batch)
        context = self.encode_context(batch["caption"], query_outputs)
        sketch = batch["sketch"].to(latents.dtype)
        if p > 0:
            drop = (torch.rand(b, generator=generator) < p).to(device)
            uncond = branch.encode_unconditional(b, context.shape[1]).to(context.dtype)
            context = torch.where(drop[:, None, None], uncond, context)
            sketch = torch.where(drop[:, None, None, None], torch.zeros_like(sketch), sketch)
        pred = self.predict_noise(noisy, timesteps, spatial, context, sketch)
        return branch.denoising_loss(pred, latents, noise, timesteps)

    # --------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        batch: Mapping[str, Any],
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        query_outputs: torch.Tensor | None = None,
        eta: float = 0.0,
        paste_back: bool = False,
    ) -> torch.Tensor:
        """Try-on images ``[B, 3, H, W]`` in ``[-1, 1]`` (the data's range) by DDIM from Gaussian
        latents, at the size of ``batch["agnostic"]``. ``eta=0``: deterministic given ``generator``.
        ``paste_back`` copies ``batch["image"]`` outside the mask (off by default: the metrics then
        measure whether the model itself keeps the person). Runs in eval mode, restores the mode."""
        was_training = self.training
        self.train(False)
        try:
            branch = self.branch
            agnostic = batch["agnostic"]
            self._check_size(agnostic)
            if query_outputs is None:
                query_outputs = self.batch_queries(batch)
            spatial = self.spatial_inputs(batch)
            condition = self.encode_context(batch["caption"], query_outputs)
            b, device = condition.shape[0], condition.device
            unconditional = (
                branch.encode_unconditional(b, condition.shape[1]) if guidance_scale != 1 else None
            )
            sketch = batch["sketch"].to(spatial.dtype)
            scheduler = branch.ddim_scheduler()
            scheduler.set_timesteps(num_steps, device=device)
            shape = (b, branch.latent_channels, *spatial.shape[-2:])
            latents = randn_tensor(shape, generator=generator, device=device, dtype=branch.unet.dtype)
            latents = latents * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(latents, t)
                eps = self.guided_noise(x, t, spatial, condition, unconditional, sketch, guidance_scale)
                latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
            vae = branch.vae
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float().clamp(-1, 1)
            if paste_back:
                mask = batch["agnostic_mask"].to(images.dtype)
                images = mask * images + (1 - mask) * to_signed(batch["image"]).to(images.dtype)
            return images
        finally:
            self.train(was_training)
