"""UniFashion checkpoints (phase 1, phase 2, try-on) as inference objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.inference._project import api
from fashion_vl.inference.base import Embedder, _sequence
from fashion_vl.inference.preprocess import ImageLike


class UniFashionEmbedder(Embedder):
    """UniFashion's Q-Former space, and what else the checkpoint holds:

    - phase 1 (``task == "phase1"``): :meth:`encode_images` gives the ``Q`` query vectors of an image
      ``[N, Q, D]`` (score = max over them), :meth:`encode_texts` the text [CLS]; :meth:`caption` with an
      LLM branch; :meth:`generate` with a diffusion branch (``net.diffusion``);
    - phase 2 (``task == "phase2"``): :meth:`encode_composed` (queries + modification text over the
      reference image, fused [CLS]) against :meth:`encode_images`, the prompt-query vectors of the
      target images ``[N, P, D]``, as the composed-retrieval evaluation scores them;
    - try-on (``task == "tryon"``): :meth:`try_on` only.
    """

    family = "unifashion"
    unit_features = True  # the Q-Former's projections normalise (qformer.project_image / project_text)

    def __init__(
        self, parts: Mapping[str, nn.Module], config: Mapping[str, Any], *, task: str, **kwargs: Any
    ):
        super().__init__(parts, config, **kwargs)
        self.task = task
        net = self.net
        if isinstance(net, api().TryOnEditor):
            self.embed_dim, self.vectors_per_image = 0, 0
            self.capabilities = frozenset({"try_on"})
            return
        if not isinstance(net, api().UniFashion):
            raise TypeError(
                f"{self.name}: a UniFashionEmbedder needs a UniFashion or TryOnEditor, not {type(net).__name__}"
            )
        qformer = net.qformer
        self.embed_dim = qformer.vision_projection.out_features
        capabilities = {"image", "text"}
        if task == "phase2":
            capabilities.add("composed")
            self.vectors_per_image = qformer.prompt_tokens.shape[1]
        else:
            self.vectors_per_image = qformer.num_query_tokens
        if net.llm is not None:
            capabilities.add("caption")
        if net.diffusion is not None:
            capabilities.add("generate")
        self.capabilities = frozenset(capabilities)

    # as lit.unifashion_phase1.UniFashionPretrainModule and lit.unifashion_phase2.UniFashionComposedModule
    # compute them in evaluation
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.task == "phase2":
            return self.net.encode_target(pixels)
        return self.net.encode_image(pixels)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net.encode_text(input_ids, attention_mask)

    def composed_features(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.net.encode_composed(pixels, input_ids, attention_mask)

    def _lit_settings(self, key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The run's own settings for a generative call (``lit.caption_eval`` ...), over the defaults."""
        return {**defaults, **((self.config.get("lit") or {}).get(key) or {})}

    def caption(
        self,
        images: Sequence[ImageLike],
        prompt: str | None = None,
        *,
        batch_size: int = 16,
        progress: bool | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """The LLM's answer to ``prompt`` (default: the run's captioning instruction) about each image.

        ``generate_kwargs`` (``max_new_tokens``, ``num_beams``, ``repetition_penalty``...) default to the
        run's ``lit.caption_eval``."""
        self.require("caption")
        images = _sequence(images, "images")
        settings = self._lit_settings("caption_eval", api().DEFAULT_CAPTION_EVAL)
        prompt = settings.pop("prompt") if prompt is None else prompt
        settings.pop("max_images", None)
        options = {**settings, **generate_kwargs}
        outputs = self.batched(
            len(images), batch_size, progress, "captions",
            lambda rows: self.net.caption(self.pixels(images[rows], rows.start), prompt, **options),
        )  # fmt: skip
        return [text for batch in outputs for text in batch]

    def generate(
        self,
        images: Sequence[ImageLike],
        texts: Sequence[str],
        *,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Images ``[N, 3, R, R]`` in ``[0, 1]`` (float32, CPU) drawn by the diffusion branch from each
        picture's query outputs and its text (DDIM with classifier-free guidance; steps and guidance
        default to the run's ``lit.generation_eval``); ``seed`` fixes the noise of the whole call."""
        self.require("generate")
        images, texts = _sequence(images, "images"), _sequence(texts, "texts")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        settings = self._lit_settings("generation_eval", api().DEFAULT_GENERATION_EVAL)
        branch = self.net.diffusion
        generator = torch.Generator(self.device).manual_seed(seed)

        def step(rows: slice) -> torch.Tensor:
            queries = self.net.qformer.query_states(
                self.net.image_tokens(self.pixels(images[rows], rows.start))
            )
            drawn = branch.sample(
                queries, list(texts[rows]),
                num_steps=int(num_steps or settings["num_steps"]),
                guidance_scale=float(settings["guidance_scale"] if guidance_scale is None else guidance_scale),
                guidance_rescale=float(settings["guidance_rescale"]), generator=generator,
            )  # fmt: skip
            return drawn.float().cpu()

        return torch.cat(self.batched(len(images), batch_size, progress, "generation", step))

    def try_on(
        self,
        batch: Mapping[str, Any],
        *,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        paste_back: bool = False,
    ) -> torch.Tensor:
        """Try-on pictures ``[B, 3, H, W]`` in ``[0, 1]`` (float32, CPU) for a batch in the try-on
        DataModule's format (``agnostic``, ``agnostic_mask``, ``densepose``, ``sketch`` tensors and the
        ``caption`` strings; tokenised here when the editor reads captions through its Q-Former).
        Steps and guidance default to the run's ``lit.sampling``; ``paste_back`` copies ``batch["image"]``
        outside the mask."""
        self.require("try_on")
        settings = self._lit_settings("sampling", api().DEFAULT_TRYON_SAMPLING)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if self.net.query_encoder is not None and "input_ids" not in inputs:
            inputs.update(self.tokens(list(inputs["caption"])))
        with self.compute():
            images = self.net.sample(
                inputs,
                num_steps=int(num_steps or settings["num_steps"]),
                guidance_scale=float(
                    settings["guidance_scale"] if guidance_scale is None else guidance_scale
                ),
                generator=torch.Generator(self.device).manual_seed(seed),
                eta=float(settings["eta"]),
                paste_back=paste_back,
            )
        return ((images.float() + 1) / 2).clamp(0, 1).cpu()
