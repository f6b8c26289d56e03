"""UniFashion's diffusion branch (``docs/reference.md`` UniFashion §1), BLIP-Diffusion style: the
Q-Former's query outputs condition Stable Diffusion through its CLIP text encoder.

Everything that exists elsewhere comes from there: the UNet, the VAE and the noise schedules from
diffusers, the CLIP text encoder and tokenizers from transformers. Written here is only the glue that
neither library has: the query projection (:class:`ProjLayer`), the splice of the projected queries
into the text encoder's input (:class:`QueryConditionedTextEncoder`), the noise loss with condition
drop-out and the guided DDIM loop (:class:`DiffusionBranch`), and the inpainting-style widening of the
UNet's input (:func:`widen_unet_input`) that try-on needs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.training_utils import compute_snr
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from fashion_vl.hub import load_pretrained, load_tokenizer
from fashion_vl.models.checkpoint import load_from_checkpoint
from fashion_vl.models.encoders.pixels import to_signed

SD15 = "runwayml/stable-diffusion-v1-5"
# create_causal_mask's cache argument was renamed past_key_values -> cache (transformers 5.2x); the
# GPU image's older transformers knows only the first name, newer ones warn on it.
_MASK_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)
# Stable Diffusion v1.5's training schedule (its scheduler/scheduler_config.json), kept here rather
# than read from the hub so that a tiny random branch gets the same noise levels offline.
SD15_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# DDIM as SD v1.x samples with it: no clipping of x0 (latents are not in [-1, 1]), the final step to
# alpha_0 rather than 1, timesteps offset by one (the last one is 981, not 980).
DDIM_SAMPLING: dict[str, Any] = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, ``x * sigmoid(1.702 x)``, as BLIP-Diffusion's ProjLayer uses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ProjLayer(nn.Module):
    """BLIP-Diffusion's projection of the query outputs into the text encoder's embedding space:
    ``x + dropout(dense2(act(dense1(LayerNorm(x)))))``.

    Hand-written because no library ships it (diffusers has it only inside its deprecated
    BLIP-Diffusion pipeline). The submodule names are BLIP-Diffusion's (``dense1``, ``dense2``,
    ``LayerNorm``) so that a converted UniFashion/BLIP-Diffusion ``proj_layer`` state dict loads as is,
    and ``LayerNorm.weight`` falls in the optimizer's no-decay group like BERT's.

    Args:
        in_dim: query width (768, the Q-Former's); must equal ``out_dim`` (the residual).
        hidden_dim: MLP width (3072).
        out_dim: the text encoder's embedding width (768 for SD v1.5's CLIP ViT-L/14 text tower).
        dropout: on the MLP output (0.1).
        eps: LayerNorm epsilon (1e-12, BERT's).
    """

    def __init__(
        self,
        in_dim: int = 768,
        hidden_dim: int = 3072,
        out_dim: int = 768,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if in_dim != out_dim:
            raise ValueError(
                f"ProjLayer adds its input back, so the query width ({in_dim}) must equal the text "
                f"encoder's ({out_dim})"
            )
        self.LayerNorm = nn.LayerNorm(in_dim, eps=eps)  # BLIP-Diffusion's name, see above
        self.dense1 = nn.Linear(in_dim, hidden_dim)
        self.act_fn = QuickGELU()
        self.dense2 = nn.Linear(hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.dense2(self.act_fn(self.dense1(self.LayerNorm(x)))))


class QueryConditionedTextEncoder(nn.Module):
    """A frozen CLIP text encoder whose input sequence gets context embeddings spliced in at
    ``context_position``: ``[tok_0 .. tok_{p-1} ; ctx_1 .. ctx_N ; tok_p .. tok_{L-1}]``.

    Hand-written because transformers' ``CLIPTextModel.forward`` (5.x) takes only ``input_ids``: it
    has no ``inputs_embeds``. The pieces it runs are public submodules, so this runs the same ones in
    the same order on the spliced sequence: token embeddings, then ``embeddings(inputs_embeds=...)``
    adds position embeddings ``0 .. L+N-1`` (the queries take real positions, as in BLIP-Diffusion),
    the same causal mask over the whole sequence (a token sees the queries only if it comes after
    them: the BOS and first prompt token do not), the encoder layers and the final LayerNorm.

    The text encoder is frozen (``requires_grad=False``, always in eval mode) but not detached:
    gradients flow through it to the context embeddings, i.e. to the ProjLayer.

    Args:
        model: a ``CLIPTextModel``.
        context_position: where the context goes (2: after BOS and the first prompt token).
        eos_token_id: the tokenizer's end token, for the pooled output.
    """

    def __init__(
        self, model: CLIPTextModel, context_position: int = 2, eos_token_id: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.context_position = context_position
        self.eos_token_id = eos_token_id
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> QueryConditionedTextEncoder:
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    def splice(self, input_ids: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings ``[B, L+N, D]`` (no positions yet) with ``context [B, N, D]`` at
        ``context_position``."""
        tokens = self.model.embeddings.token_embedding(input_ids)  # [B, L, D]
        if context is None:
            return tokens
        p = self.context_position
        return torch.cat([tokens[:, :p], context.to(tokens.dtype), tokens[:, p:]], dim=1)

    def forward(
        self, input_ids: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden_state [B, L+N, D], pooled [B, D])``: the UNet reads the first; the second is
        the state at the prompt's first end token, moved right by the N context positions (CLIP's own
        pooling finds it in ``input_ids``, which no longer line up with the sequence)."""
        embeds = self.splice(input_ids, context)
        hidden = self.model.embeddings(inputs_embeds=embeds)  # + position embeddings 0..L+N-1
        mask = create_causal_mask(
            config=self.model.config, inputs_embeds=hidden, attention_mask=None, **{_MASK_CACHE_ARG: None}
        )
        hidden = self.model.encoder(
            inputs_embeds=hidden, attention_mask=mask, is_causal=True
        ).last_hidden_state
        hidden = self.model.final_layer_norm(hidden)
        eos = self.eos_token_id if self.eos_token_id is not None else self.model.config.eos_token_id
        index = (input_ids == eos).int().argmax(dim=1)  # first end token (CLIP pads with it too)
        if context is not None:
            index = torch.where(index >= self.context_position, index + context.shape[1], index)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return hidden, pooled


def to_vae_range(
    images: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``uint8`` pixels, or images normalised with ``mean`` / ``std`` (``[B, 3, H, W]``) -> the VAE's
    ``[-1, 1]``, resized (bilinear, antialiased) to ``size`` when given. ``mean = std = 0.5`` leaves
    ``[-1, 1]`` data as is; ``uint8`` input ignores ``mean`` / ``std``."""
    if images.dtype == torch.uint8:
        pixels = to_signed(images)
    else:
        mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        pixels = (images.float() * std + mean).clamp(0, 1) * 2 - 1
    if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return pixels


def widen_unet_input(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Give ``unet.conv_in`` ``extra_channels`` more input channels whose weights start at zero, so the
    widened UNet computes exactly what it did on the original channels whatever the extra ones hold.

    Hand-written because diffusers widens a UNet this way only inside its inpainting training script;
    this is that recipe (SD-inpainting's 9 channels, StableVITON's 13: noisy latent 4 + agnostic
    latent 4 + mask 1 + dense-pose latent 4). The config's ``in_channels`` follows, so a saved UNet
    reloads at its new width. In place; returns ``unet``.
    """
    if extra_channels < 0:
        raise ValueError(f"extra_channels must be >= 0, not {extra_channels}")
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


class DiffusionBranch(nn.Module):
    """Stable Diffusion conditioned on Q-Former query outputs.

    Conditioning: query outputs ``[B, N, Hq]`` -> :class:`ProjLayer` -> spliced into the tokenised
    prompt at ``context_position`` -> CLIP text encoder -> ``[B, L+N, D]`` cross-attention context
    of the UNet. The unconditional context (condition drop-out in training, classifier-free guidance
    at sampling) is ``negative_prompt`` without queries, tokenised to the same length L+N, as
    BLIP-Diffusion's negative prompt.

    Training (:meth:`loss`): VAE latents x ``scaling_factor`` (0.18215 for SD), DDPM noise at a
    uniform timestep, MSE between the UNet's prediction and the noise (or the velocity for a
    ``v_prediction`` schedule). Sampling (:meth:`sample`): DDIM from Gaussian latents with guidance.

    Frozen, in eval mode and out of the optimizer: the VAE and the text encoder. Trained: the
    ProjLayer, and the UNet when ``train_unet``.

    Args:
        vae, unet: diffusers' ``AutoencoderKL`` and ``UNet2DConditionModel``.
        text_encoder: the :class:`QueryConditionedTextEncoder`.
        proj: the :class:`ProjLayer` (its output width must be the text encoder's).
        tokenizer: the text encoder's tokenizer, or a callable returning it (loaded on first use, so a
            branch can be built before the data folder that holds a tokenizer exists).
        noise_schedule: ``DDPMScheduler`` arguments (betas, ``num_train_timesteps``,
            ``prediction_type``); DDIM sampling uses the same betas.
        resolution: image side in pixels (a multiple of the VAE's and UNet's downsampling).
        max_prompt_length: prompt tokens, context excluded; default: what is left of the text
            encoder's positions after the N queries (77 - 32 = 45 for SD v1.5 with 32 queries).
        pad_prompts: ``max_length`` (ours): every prompt padded to that length, as SD pads to 77;
            ``longest``: to the batch's longest prompt (the reference's ``blip2_qformer_cir_full``; the
            ``fidelity=reference`` preset), so the UNet's context, and what it predicts, depends on the
            other prompts of the batch.
        negative_prompt: text of the unconditional context.
        train_unet: train the UNet (else frozen like the VAE).
        snr_gamma: Min-SNR-gamma loss weighting (Hang et al., 2023; diffusers' ``--snr_gamma``): each
            sample's MSE is weighted by ``min(SNR_t, gamma) / SNR_t`` (``/ (SNR_t + 1)`` for
            ``v_prediction``), which stops the easy low-noise steps from dominating. ``None``: the
            plain MSE of the reference (SD v1.5 trains without it).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: QueryConditionedTextEncoder,
        proj: ProjLayer,
        tokenizer: PreTrainedTokenizerBase | Any,
        noise_schedule: Mapping[str, Any] | None = None,
        resolution: int = 512,
        max_prompt_length: int | None = None,
        negative_prompt: str = "",
        train_unet: bool = True,
        snr_gamma: float | None = None,
        pad_prompts: str = "max_length",
    ) -> None:
        super().__init__()
        if pad_prompts not in ("max_length", "longest"):
            raise ValueError(f"pad_prompts must be 'max_length' or 'longest', not {pad_prompts!r}")
        self.pad_prompts = pad_prompts
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive or null, not {snr_gamma}")
        if unet.config.cross_attention_dim != text_encoder.hidden_size:
            raise ValueError(
                f"the UNet cross-attends to {unet.config.cross_attention_dim}-d context but the text encoder "
                f"is {text_encoder.hidden_size}-d: set the UNet's cross_attention_dim"
            )
        if proj.dense2.out_features != text_encoder.hidden_size:
            raise ValueError(
                f"the ProjLayer gives {proj.dense2.out_features}-d context embeddings but the text encoder "
                f"is {text_encoder.hidden_size}-d"
            )
        self.vae = vae
        self.unet = unet
        self.text_encoder = text_encoder
        self.proj = proj
        self._tokenizer = tokenizer
        self.noise_schedule = {**SD15_NOISE_SCHEDULE, **(noise_schedule or {})}
        if (
            self.noise_schedule.get("rescale_betas_zero_snr")
            and self.noise_schedule["prediction_type"] == "epsilon"
        ):
            raise ValueError(
                "noise_schedule.rescale_betas_zero_snr=true needs noise_schedule.prediction_type=v_prediction: "
                "at zero terminal SNR the first sampling step's image estimate from predicted noise divides by 0"
            )
        self.noise_scheduler = DDPMScheduler(**self.noise_schedule)
        self.resolution = resolution
        self.max_prompt_length = max_prompt_length
        self.negative_prompt = negative_prompt
        self.train_unet = train_unet
        self.snr_gamma = snr_gamma
        self.vae.requires_grad_(False)
        if not train_unet:
            self.unet.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DiffusionBranch:
        super().train(mode)
        self.vae.train(False)
        self.unet.train(mode and self.train_unet)
        return self

    # ------------------------------------------------------------------------------------ pieces
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if callable(self._tokenizer) and not isinstance(self._tokenizer, PreTrainedTokenizerBase):
            self._tokenizer = self._tokenizer()
            if self.text_encoder.eos_token_id is None:
                self.text_encoder.eos_token_id = _eos_id(self._tokenizer)
        return self._tokenizer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def prompt_length(self, num_queries: int) -> int:
        return self.max_prompt_length or self.text_encoder.max_length - num_queries

    def tokenize(self, prompts: Sequence[str], length: int, padding: str = "max_length") -> torch.Tensor:
        """``[B, length]`` ids padded to ``length`` (or, ``padding="longest"``, to the longest prompt, at
        most ``length``) with no attention mask: SD's text encoder always reads the full padded
        sequence, and its UNet cross-attends to every position."""
        tok = self.tokenizer
        ids = tok(list(prompts), padding=padding, truncation=True, max_length=length, return_tensors="pt")
        return ids.input_ids.to(self.proj.dense1.weight.device)

    def encode_condition(self, query_outputs: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cross-attention context ``[B, L+N, D]`` of the prompts with the projected queries spliced in."""
        if len(prompts) != query_outputs.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {query_outputs.shape[0]} query sets")
        context = self.proj(query_outputs)
        ids = self.tokenize(prompts, self.prompt_length(query_outputs.shape[1]), self.pad_prompts)
        return self.text_encoder(ids, context)[0]

    def encode_unconditional(self, batch_size: int, length: int) -> torch.Tensor:
        """The negative prompt's context ``[B, length, D]`` (no queries; frozen, so no graph)."""
        with torch.no_grad():
            hidden = self.text_encoder(self.tokenize([self.negative_prompt], length))[0]
        return hidden.expand(batch_size, -1, -1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled VAE latents of ``images [B, 3, H, W]`` in ``[-1, 1]`` (a sample of the posterior)."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.sample(generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        extra_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction; ``extra_inputs`` (try-on conditions) are concatenated to the latents
        along channels for a UNet widened by :func:`widen_unet_input`."""
        x = latents if extra_inputs is None else torch.cat([latents, extra_inputs], dim=1)
        if x.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"the UNet takes {self.unet.config.in_channels} input channels, not {x.shape[1]}"
            )
        return self.unet(x, timesteps, encoder_hidden_states=context.to(self.unet.dtype)).sample

    def guided_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | int,
        condition: torch.Tensor,
        unconditional: torch.Tensor,
        guidance_scale: float,
        extra_inputs: torch.Tensor | None = None,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """Classifier-free guidance ``eps_u + s (eps_c - eps_u)``; both predictions in one UNet pass.
        ``guidance_rescale`` (phi of Lin et al., 2024, section 3.4; 0: off) brings the guided
        prediction's per-sample standard deviation back towards the conditional one's, against the
        over-saturation that large scales cause (diffusers' ``rescale_noise_cfg``)."""
        x = torch.cat([latents, latents])
        extra = None if extra_inputs is None else torch.cat([extra_inputs, extra_inputs])
        eps = self.predict_noise(x, timestep, torch.cat([unconditional, condition]), extra)
        eps_u, eps_c = eps.chunk(2)
        guided = eps_u + guidance_scale * (eps_c - eps_u)
        if guidance_rescale:
            guided = rescale_noise_cfg(guided, eps_c, guidance_rescale=guidance_rescale)
        return guided

    # --------------------------------------------------------------------------------- training
    def noised_latents(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One DDPM training draw for ``images`` in ``[-1, 1]``: ``(latents, noise, timesteps, noisy)``
        with the scaled VAE latents, Gaussian noise, uniform timesteps and the noised latents, drawn
        from ``generator`` in that order (the editor's loss and :meth:`loss` share it)."""
        latents = self.encode_images(images, generator)
        b, device = latents.shape[0], latents.device
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (b,), generator=generator).to(device)
        return latents, noise, timesteps, self.noise_scheduler.add_noise(latents, noise, timesteps)

    def noise_target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the UNet is trained to predict: the noise, or the velocity for a ``v_prediction``
        schedule."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"noise_schedule.prediction_type={kind!r} is not supported (epsilon, v_prediction)")

    def denoising_loss(
        self, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """MSE between the UNet's prediction and :meth:`noise_target`, Min-SNR weighted per sample when
        ``snr_gamma`` is set (diffusers ships ``compute_snr`` but not the weighting, which its training
        scripts write inline)."""
        target = self.noise_target(latents, noise, timesteps).float()
        if self.snr_gamma is None:
            return F.mse_loss(pred.float(), target)
        snr = compute_snr(self.noise_scheduler, timesteps).float()
        weight = snr.clamp(max=self.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            weight = weight / (snr + 1)
        else:  # epsilon: SNR > 0 at every step (zero terminal SNR is refused with epsilon, see __init__)
            weight = weight / snr
        per_sample = F.mse_loss(pred.float(), target, reduction="none").flatten(1).mean(1)
        return (weight * per_sample).mean()

    def loss(
        self,
        query_outputs: torch.Tensor,
        images: torch.Tensor,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        condition_drop: float = 0.0,
    ) -> torch.Tensor:
        """Noise-prediction MSE on ``images [B, 3, R, R]`` in ``[-1, 1]`` conditioned on the queries
        ``[B, N, Hq]`` and prompts; each sample's condition is replaced by the unconditional context
        with probability ``condition_drop`` (what classifier-free guidance needs at sampling)."""
        if images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])}, the branch trains at {self.resolution} px"
            )
        latents, noise, timesteps, noisy = self.noised_latents(images, generator)
        b, device = latents.shape[0], latents.device
        context = self.encode_condition(query_outputs, prompts)
        if condition_drop > 0:
            drop = (torch.rand(b, generator=generator) < condition_drop).to(device)
            uncond = self.encode_unconditional(b, context.shape[1]).to(context.dtype)
            context = torch.where(drop[:, None, None], uncond, context)
        pred = self.predict_noise(noisy, timesteps, context)
        return self.denoising_loss(pred, latents, noise, timesteps)

    # --------------------------------------------------------------------------------- sampling
    def ddim_scheduler(self) -> DDIMScheduler:
        schedule = {k: v for k, v in self.noise_schedule.items() if k != "variance_type"}
        return DDIMScheduler(**{**schedule, **DDIM_SAMPLING})

    @torch.no_grad()
    def sample(
        self,
        query_outputs: torch.Tensor,
        prompts: Sequence[str],
        num_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        resolution: int | None = None,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """Images ``[B, 3, R, R]`` in ``[0, 1]`` by DDIM (``eta=0``: deterministic given the initial
        noise, so given ``generator``); guidance only when ``guidance_scale != 1`` (at 1 it is the
        conditional prediction), rescaled by ``guidance_rescale`` (see :meth:`guided_noise`). Runs in
        eval mode (no ProjLayer dropout) and restores the mode."""
        was_training = self.training
        self.train(False)
        try:
            side = resolution or self.resolution
            if side % (self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)):
                raise ValueError(f"resolution {side} is not a multiple of the VAE and UNet downsampling")
            condition = self.encode_condition(query_outputs, prompts)
            b = condition.shape[0]
            unconditional = self.encode_unconditional(b, condition.shape[1]) if guidance_scale != 1 else None
            scheduler = self.ddim_scheduler()
            scheduler.set_timesteps(num_steps, device=condition.device)
            size = side // self.vae_scale_factor
            shape = (b, self.latent_channels, size, size)
            latents = randn_tensor(shape, generator=generator, device=condition.device, dtype=self.unet.dtype)
            latents = latents * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(latents, t)
                if unconditional is None:
                    eps = self.predict_noise(x, t, condition)
                else:
                    eps = self.guided_noise(
                        x, t, condition, unconditional, guidance_scale, guidance_rescale=guidance_rescale
                    )
                latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
            return self.decode_latents(latents)
        finally:
            self.train(was_training)


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The end token: CLIP's ``<|endoftext|>``, or ``[SEP]`` for the BERT-style tokenizer of tiny runs."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("the diffusion tokenizer has neither an end-of-text nor a [SEP] token")
    return eos


def load_fitted_vae(vae: AutoencoderKL, path: str, key: str = "vae_from") -> AutoencoderKL:
    """Load the ``net.*`` weights of an ``AutoencoderKLModule`` checkpoint into ``vae`` (strict), and
    set its ``scaling_factor`` to 1 / the fitted latents' standard deviation (the checkpoint's
    ``latent_std``), so that scaled latents have unit variance as the noise schedule assumes."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{key}: no checkpoint at {file} (fit one: fvl-train experiment=demo_diffusion_vae)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True).get("state_dict", {})
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    if not weights:
        raise ValueError(f"{key}: {file} holds no net.* weights (not an AutoencoderKLModule checkpoint?)")
    try:
        vae.load_state_dict(weights)
    except RuntimeError as err:  # missing/unexpected keys or shapes: torch lists them
        raise ValueError(f"{key}: {file} does not fit the VAE architecture: {err}") from None
    latent_std = float(state.get("latent_std", 0.0))
    if latent_std > 0:
        vae.register_to_config(scaling_factor=1.0 / latent_std)
    return vae


def build_diffusion_branch(
    name: str = SD15,
    pretrained: bool = True,
    tokenizer: str | None = None,
    query_dim: int = 768,
    proj_hidden_dim: int = 3072,
    proj_dropout: float = 0.1,
    context_position: int = 2,
    resolution: int = 512,
    max_prompt_length: int | None = None,
    negative_prompt: str = "",
    pad_prompts: str = "max_length",
    train_unet: bool = True,
    gradient_checkpointing: bool = False,
    noise_schedule: Mapping[str, Any] | None = None,
    unet: Mapping[str, Any] | None = None,
    vae: Mapping[str, Any] | None = None,
    text_encoder: Mapping[str, Any] | None = None,
    vae_from: str | None = None,
    proj_from: str | None = None,
    snr_gamma: float | None = None,
) -> DiffusionBranch:
    """The branch from a Stable Diffusion folder or hub id (``pretrained``: its ``unet``, ``vae``,
    ``text_encoder`` and ``tokenizer`` subfolders, offline-safe), or randomly initialised from the
    ``unet`` / ``vae`` / ``text_encoder`` architecture arguments (tiny CPU branches).

    Args:
        name: SD v1.x hub id or local folder (``runwayml/stable-diffusion-v1-5``).
        pretrained: load ``name``'s weights; otherwise build the architectures below at random.
        tokenizer: hub id or folder of a tokenizer (default: ``name``'s ``tokenizer`` subfolder, or,
            for a random branch, a required argument: the data tokenizer of tiny runs).
        query_dim: the Q-Former's hidden size (the ProjLayer's input).
        proj_hidden_dim, proj_dropout: the ProjLayer's MLP.
        unet, vae, text_encoder: ``UNet2DConditionModel``, ``AutoencoderKL`` and ``CLIPTextConfig``
            arguments when not ``pretrained``.
        gradient_checkpointing: recompute the UNet's activations in the backward pass.
        pad_prompts: see :class:`DiffusionBranch`.
        vae_from: a checkpoint of :class:`~fashion_vl.lit.autoencoder_kl.AutoencoderKLModule` (a VAE
            fitted by ``experiment=demo_diffusion_vae``) whose weights replace the VAE's, loaded
            strictly (the architecture must match).
        proj_from: a checkpoint written by ``fvl-convert lavis`` from a UniFashion file with the
            authors' ``proj_layer`` (``blip2_qformer_cir_full``): its ``proj_layer.*`` start the
            ProjLayer, loaded strictly.
        others: see :class:`DiffusionBranch` and :class:`QueryConditionedTextEncoder`.
    """
    key = "model.diffusion.name"  # (model.branch.name in the try-on editor)
    if pretrained:

        def load(loader, what: str, subfolder: str):
            return load_pretrained(loader, name, what=what, config_key=key, subfolder=subfolder)

        unet_model = load(UNet2DConditionModel.from_pretrained, "diffusion UNet", "unet")
        vae_model = load(AutoencoderKL.from_pretrained, "VAE", "vae")
        clip = load(CLIPTextModel.from_pretrained, "CLIP text encoder", "text_encoder")
    else:
        unet_model = UNet2DConditionModel(**dict(unet or {}))
        vae_model = AutoencoderKL(**dict(vae or {}))
        clip = CLIPTextModel(CLIPTextConfig(**dict(text_encoder or {})))
    if vae_from is not None:
        load_fitted_vae(vae_model, vae_from)
    if tokenizer is not None:
        tok_loader = functools.partial(load_tokenizer, tokenizer)
    elif pretrained:
        tok_loader = functools.partial(
            load_pretrained,
            CLIPTokenizer.from_pretrained,
            name,
            what="CLIP tokenizer",
            config_key=key,
            subfolder="tokenizer",
        )
    else:
        raise ValueError("a random diffusion branch needs a tokenizer (model.diffusion.tokenizer)")
    if gradient_checkpointing:
        unet_model.enable_gradient_checkpointing()
    width = clip.config.hidden_size
    proj = ProjLayer(query_dim, proj_hidden_dim, width, dropout=proj_dropout)
    if proj_from is not None:
        load_from_checkpoint(proj, proj_from, prefix="proj_layer.", what="diffusion ProjLayer")
    return DiffusionBranch(
        vae=vae_model,
        unet=unet_model,
        text_encoder=QueryConditionedTextEncoder(clip, context_position),
        proj=proj,
        tokenizer=tok_loader,
        noise_schedule=noise_schedule,
        resolution=resolution,
        max_prompt_length=max_prompt_length,
        pad_prompts=pad_prompts,
        negative_prompt=negative_prompt,
        train_unet=train_unet,
        snr_gamma=snr_gamma,
    )
