"""UniFashion (Zhao et al., EMNLP 2024; ``docs/reference.md`` UniFashion §1): a frozen ViT, BLIP-2's
Q-Former, an LLM branch and a diffusion branch reading the Q-Former's query outputs.

The diffusion branch and phase 2's composed query (``prompt_tokens`` reading the target image, the
fused [CLS] as the composed feature) attach to the same verbs: :meth:`UniFashion.image_tokens`,
:meth:`~fashion_vl.models.unifashion.qformer.QFormer.query_states` with ``query_tokens=``, and
:meth:`~fashion_vl.models.unifashion.qformer.QFormer.fused_states`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fashion_vl.models.outputs import ImageTextEncoding
from fashion_vl.models.unifashion.llm import LanguageModel
from fashion_vl.models.unifashion.qformer import QFormer
from fashion_vl.models.unifashion.vision import FrozenViT

if TYPE_CHECKING:  # diffusers is imported only by runs that build the branch
    from fashion_vl.models.unifashion.diffusion import DiffusionBranch

DEFAULT_CAPTION_PROMPT = "Describe the image concisely."


class UniFashion(nn.Module):
    """The UniFashion network.

    Args:
        image_encoder: the frozen ViT (:class:`FrozenViT`).
        qformer: the Q-Former and its heads (:class:`QFormer`); its ``ln_vision`` normalises the ViT
            tokens, and its ``llm_proj`` must map into ``llm``'s width.
        llm: the LLM branch (:class:`LanguageModel`), or ``None`` for a retrieval-only model.
        diffusion: the diffusion branch (:class:`~fashion_vl.models.unifashion.diffusion.DiffusionBranch`:
            Stable Diffusion drawing from the query outputs), or ``None`` (no image generation).
        gradient_checkpointing: recompute the Q-Former's layers in the backward pass (the LLM has its
            own switch, ``model.llm.gradient_checkpointing``).
        freeze_qformer: freeze the Q-Former and its heads (no gradients, no optimizer state, eval
            mode) except ``llm_proj``, e.g. to train only the LLM branch's projection and adapters on a
            trained Q-Former (the reference freezes its Q-Former under the diffusion loss unless
            ``qformer_train``).
    """

    def __init__(
        self,
        image_encoder: FrozenViT,
        qformer: QFormer,
        llm: LanguageModel | None = None,
        gradient_checkpointing: bool = False,
        freeze_qformer: bool = False,
        diffusion: DiffusionBranch | None = None,
    ) -> None:
        super().__init__()
        if image_encoder.num_features != qformer.vision_width:
            raise ValueError(
                f"the image encoder gives {image_encoder.num_features}-d tokens but the Q-Former cross-attends "
                f"to {qformer.vision_width}-d ones: set model.qformer.encoder_hidden_size"
            )
        if llm is not None:
            width = qformer.llm_proj.out_features if qformer.llm_proj is not None else None
            if width != llm.hidden_size:
                raise ValueError(
                    f"the Q-Former's llm_proj maps to {width} but the LLM is {llm.hidden_size} wide: "
                    "set model.qformer.llm_hidden_size to the LLM's hidden size"
                )
        if diffusion is not None and diffusion.proj.dense1.in_features != qformer.hidden_size:
            raise ValueError(
                f"the diffusion branch reads {diffusion.proj.dense1.in_features}-d queries but the Q-Former is "
                f"{qformer.hidden_size} wide: set model.diffusion.query_dim"
            )
        self.image_encoder = image_encoder
        self.qformer = qformer
        self.llm = llm
        self.diffusion = diffusion
        if gradient_checkpointing:
            self.set_grad_checkpointing(True)
        self.freeze_qformer = freeze_qformer
        if freeze_qformer:
            self.qformer.requires_grad_(False)
            if self.qformer.llm_proj is not None:  # the bridge into the LLM keeps training
                self.qformer.llm_proj.requires_grad_(True)
            self.qformer.train(False)

    def train(self, mode: bool = True) -> UniFashion:
        super().train(mode)
        if self.freeze_qformer:
            self.qformer.train(False)
            if self.qformer.llm_proj is not None:
                self.qformer.llm_proj.train(mode)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.qformer.qformer.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            self.qformer.qformer.gradient_checkpointing_disable()

    def compile_units(self) -> dict[str, nn.Module]:
        """The parts ``torch.compile`` takes one by one: the frozen ViT (most of phase 1's FLOPs at
        ViT-g size) and the Q-Former's transformer. The LLM is left out: its ``generate`` loop and peft's
        adapters change shape every call."""
        return {"image_encoder": self.image_encoder, "qformer.qformer": self.qformer.qformer}

    @property
    def vocab_size(self) -> int:
        """The Q-Former's vocabulary (what the data tokenizer must fit)."""
        return self.qformer.config.vocab_size

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``ln_vision`` of the frozen ViT's tokens ``[B, N, C]`` (the Q-Former's cross-attention input)."""
        return self.qformer.ln_vision(self.image_encoder(images))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Contrastive features of every query ``[B, Q, E]`` (normalised; there is no other form)."""
        return self.qformer.project_image(self.qformer.query_states(self.image_tokens(images)))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True
    ) -> torch.Tensor:
        """Contrastive feature of the text [CLS] ``[B, E]`` (normalised)."""
        return self.qformer.project_text(self.qformer.text_states(input_ids, attention_mask))

    def encode_composed(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Phase 2's composed query ``[B, E]`` (normalised): reference images + modification texts."""
        return self.qformer.composed_feature(self.image_tokens(images), input_ids, attention_mask)

    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        """Phase 2's target features ``[B, P, E]`` (normalised): the prompt queries over the images."""
        return self.qformer.project_image(self.qformer.prompt_states(self.image_tokens(images)))

    def encode_pair(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> ImageTextEncoding:
        """The passes every phase-1 objective reads, run once per step."""
        tokens = self.image_tokens(images)
        queries = self.qformer.query_states(tokens)
        text = self.qformer.text_states(input_ids, attention_mask)
        return ImageTextEncoding(
            image_tokens=tokens,
            query_states=queries,
            image_feats=self.qformer.project_image(queries),
            text_feat=self.qformer.project_text(text),
        )

    def _require_llm(self) -> LanguageModel:
        if self.llm is None:
            raise RuntimeError("this UniFashion has no LLM branch (model.llm is null)")
        return self.llm

    def caption_loss(
        self,
        query_states: torch.Tensor,
        prompts: Sequence[str],
        targets: Sequence[str],
        append_eos: bool = True,
    ) -> torch.Tensor:
        """LLM next-token loss on ``targets`` given the projected queries and an instruction each."""
        prefix = self.qformer.project_to_llm(query_states)
        return self._require_llm().caption_loss(prefix, prompts, targets, append_eos)

    @torch.no_grad()
    def generate_from_queries(
        self,
        query_states: torch.Tensor,
        prompt: str | Sequence[str] = DEFAULT_CAPTION_PROMPT,
        **generate_kwargs,
    ) -> list[str]:
        """LLM answers to ``prompt`` (one for all, or one per row) about the images behind ``query_states``."""
        prompts = [prompt] * query_states.shape[0] if isinstance(prompt, str) else list(prompt)
        if len(prompts) != query_states.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {query_states.shape[0]} images")
        prefix = self.qformer.project_to_llm(query_states)
        return self._require_llm().generate(prefix, prompts, **generate_kwargs)

    @torch.no_grad()
    def caption(
        self, images: torch.Tensor, prompt: str | Sequence[str] = DEFAULT_CAPTION_PROMPT, **generate_kwargs
    ) -> list[str]:
        """Captions (or instruction-following answers) for ``images [B, 3, H, W]``.

        ``generate_kwargs`` go to ``generate`` (``max_new_tokens``, ``num_beams``,
        ``repetition_penalty``...).
        """
        queries = self.qformer.query_states(self.image_tokens(images))
        return self.generate_from_queries(queries, prompt, **generate_kwargs)
