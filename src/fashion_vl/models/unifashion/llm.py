"""UniFashion's LLM branch: a decoder-only LLM reading projected Q-Former query outputs as a prefix."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from fashion_vl.hub import load_pretrained, load_tokenizer
from fashion_vl.models.unifashion.vision import resolve_dtype

IGNORE_INDEX = -100


class LanguageModel(nn.Module):
    """A causal LM (``AutoModelForCausalLM``), frozen or with LoRA adapters, with its tokenizer.

    Sequences are ``[prefix ; BOS instruction ; target EOS]`` where the prefix is the projected query
    outputs; the caption loss is next-token cross-entropy on the target and EOS only. The reference
    (UniFashion's ``blip2_cir_full``) does not append EOS, so its LLM never learns where a caption ends;
    InstructBLIP does, and so do we.

    Args:
        name: hub id or local folder (``lmsys/vicuna-7b-v1.1``), loaded offline-safely.
        pretrained: load ``name``'s weights; otherwise build ``AutoConfig.for_model(model_type,
            **config_overrides)`` with random weights (tiny CPU models).
        tokenizer: hub id or folder of the tokenizer (default: ``name``); loaded on first use.
        dtype: weight dtype (``bfloat16`` for a frozen 7B model); ``null`` keeps float32.
        lora: ``null`` freezes the LLM (no gradient, eval mode, out of the optimizer); a mapping
            ``{r, alpha, dropout}`` wraps it with peft LoRA adapters on every linear layer but the
            output head (peft's ``all-linear``), the only LLM parameters that train.
        gradient_checkpointing: recompute activations in the backward pass (LoRA runs).
        max_prompt_length, max_target_length: token caps of the instruction and of the target text.
        model_type, config_overrides: the architecture when ``pretrained`` is false.
        init_device: with ``pretrained`` false, build the random weights directly on this device
            (``cuda``): a 7B model then starts in seconds, without a CPU copy or a CPU initialisation
            (benchmarks at real size; ``null``: the CPU, as the rest of the model).
    """

    def __init__(
        self,
        name: str = "lmsys/vicuna-7b-v1.1",
        pretrained: bool = True,
        tokenizer: str | None = None,
        dtype: str | None = None,
        lora: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        max_prompt_length: int = 64,
        max_target_length: int = 256,
        model_type: str = "llama",
        init_device: str | None = None,
        **config_overrides,
    ) -> None:
        super().__init__()
        torch_dtype = resolve_dtype(dtype)
        kwargs = {"attn_implementation": attn_implementation}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if pretrained:
            model = load_pretrained(
                AutoModelForCausalLM.from_pretrained,
                name,
                what="language model",
                config_key="model.llm.name",
                **kwargs,
            )
        else:
            config = AutoConfig.for_model(model_type, **config_overrides)
            with torch.device(init_device) if init_device else contextlib.nullcontext():
                model = AutoModelForCausalLM.from_config(config, **kwargs)
        model.config.use_cache = False  # training; generate() turns it back on
        self.frozen = lora is None
        model.requires_grad_(False)
        if gradient_checkpointing and not self.frozen:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not self.frozen:
            from peft import LoraConfig, get_peft_model

            unknown = set(lora) - {"r", "alpha", "dropout"}
            if unknown:
                raise ValueError(f"model.llm.lora: unknown keys {sorted(unknown)} (use r, alpha, dropout)")
            config = LoraConfig(
                task_type="CAUSAL_LM",
                r=int(lora.get("r", 128)),
                lora_alpha=int(lora.get("alpha", 256)),
                lora_dropout=float(lora.get("dropout", 0.05)),
                target_modules="all-linear",  # every nn.Linear except the output head
            )
            model = get_peft_model(model, config)
        self.model: PreTrainedModel = model
        self.tokenizer_name = tokenizer or name
        self.max_prompt_length = max_prompt_length
        self.max_target_length = max_target_length
        self._tokenizer: PreTrainedTokenizerBase | None = None
        if self.frozen:
            super().train(False)

    def train(self, mode: bool = True) -> LanguageModel:
        return super().train(False if self.frozen else mode)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def special_ids(self) -> tuple[int | None, int, int]:
        """``(bos, eos, pad)`` ids; BERT-style tokenizers (the synthetic data's) fall back to
        ``[CLS]``/``[SEP]``, and a tokenizer without padding (Llama's) pads with EOS (padding is masked)."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ValueError(f"LLM tokenizer '{self.tokenizer_name}' has neither an EOS nor a SEP token")
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        return bos, eos, pad

    def _token_rows(
        self, prompts: Sequence[str], targets: Sequence[str] | None, append_eos: bool = True
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Per sample: token ids of ``BOS prompt [target EOS]`` and their labels (targets only); the
        reference's rows have no EOS (``append_eos=False``)."""
        bos, eos, _ = self.special_ids
        tok = self.tokenizer
        prompt_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        target_ids = (
            tok(list(targets), add_special_tokens=False, truncation=True, max_length=self.max_target_length)[
                "input_ids"
            ]
            if targets is not None
            else [[] for _ in prompts]
        )
        rows, labels = [], []
        for p, t in zip(prompt_ids, target_ids):
            prefix = ([bos] if bos is not None else []) + p[: self.max_prompt_length]
            suffix = ([*t, eos] if append_eos else list(t)) if targets is not None else []
            rows.append(prefix + suffix)
            labels.append([IGNORE_INDEX] * len(prefix) + suffix)
        return rows, labels

    def _embed_rows(
        self, prefix: torch.Tensor, rows: list[list[int]], left_pad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prefix ; token embeddings]`` per row, zero-padded to the longest on the right (training)
        or on the left (generation: every row then ends where its continuation starts)."""
        embed = self.model.get_input_embeddings()
        prefix = prefix.to(embed.weight.dtype)
        seqs = [
            torch.cat([prefix[i], embed(torch.tensor(row, dtype=torch.long, device=prefix.device))])
            for i, row in enumerate(rows)
        ]
        width = max(s.shape[0] for s in seqs)
        embeds = prefix.new_zeros(len(seqs), width, prefix.shape[-1])
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=prefix.device)
        for i, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if left_pad else slice(0, len(seq))
            embeds[i, span] = seq
            mask[i, span] = 1
        return embeds, mask

    def caption_loss(
        self, prefix: torch.Tensor, prompts: Sequence[str], targets: Sequence[str], append_eos: bool = True
    ) -> torch.Tensor:
        """Mean next-token cross-entropy on the target tokens (and EOS) after ``[prefix ; prompt]``.

        Args:
            prefix: ``[B, P, D]`` projected query outputs; prompts, targets: ``B`` strings each.
            append_eos: the target ends with EOS (ours: the LLM learns where to stop) or not (the
                reference's ``blip2_qformer_cir_full``).
        """
        rows, labels = self._token_rows(prompts, targets, append_eos)
        embeds, mask = self._embed_rows(prefix, rows, left_pad=False)
        label_tensor = torch.full(mask.shape, IGNORE_INDEX, dtype=torch.long)
        start = prefix.shape[1]
        for i, row in enumerate(labels):
            label_tensor[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, labels=label_tensor.to(prefix.device))
        return out.loss

    @torch.no_grad()
    def generate(
        self,
        prefix: torch.Tensor,
        prompts: Sequence[str],
        max_new_tokens: int = 30,
        num_beams: int = 1,
        **generate_kwargs,
    ) -> list[str]:
        """Decoded continuations of ``[prefix ; BOS prompt]``, one string per row (special tokens dropped)."""
        rows, _ = self._token_rows(prompts, None)
        embeds, mask = self._embed_rows(prefix, rows, left_pad=True)
        _, eos, pad = self.special_ids
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            eos_token_id=eos,
            pad_token_id=pad,
            use_cache=True,
            **generate_kwargs,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
