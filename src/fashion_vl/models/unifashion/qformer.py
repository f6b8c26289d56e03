"""BLIP-2's Q-Former on transformers' own classes, with what UniFashion adds around it.

transformers ships the Q-Former (``Blip2QFormerModel``: queries and text share self-attention, the
queries cross-attend to the image every ``cross_attention_frequency``-th layer, separate feed-forward
weights for query and text positions) and the retrieval heads (``Blip2ForImageTextRetrieval``). It lacks
three things UniFashion needs, written here as small pieces around those classes:

- the Q-Former as a causal text decoder for image-grounded text generation (ITG, :class:`ItgHead` and
  :meth:`QFormer.decoder_logits`): transformers' Q-Former has no causal mask, no cache and no LM head;
- the learnable contrastive temperature (transformers' retrieval model scores plain cosines);
- UniFashion's second, "prompt" query set (phase 2) and the projection into the LLM (``llm_proj``).

State-dict contract (what converted checkpoints hold): :class:`QFormer`'s keys are exactly
``Blip2ForImageTextRetrieval``'s without its ``vision_model`` (``query_tokens``, ``embeddings.*``,
``qformer.*``, ``vision_projection.*``, ``text_projection.*``, ``itm_head.*``), plus ``ln_vision.*``
(LAVIS's LayerNorm on the ViT tokens; transformers calls it ``vision_model.post_layernorm``, accepted
too), ``temp``, ``itg_head.*`` (LAVIS ``Qformer.cls.predictions.{transform.*, bias}``; the decoder
weight is tied to ``embeddings.word_embeddings``), ``prompt_tokens`` (phase 2) and ``llm_proj.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2ForImageTextRetrieval, Blip2QFormerConfig, Blip2QFormerModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from fashion_vl.hub import load_pretrained
from fashion_vl.models.checkpoint import CheckpointMismatchError, read_state_dict

log = logging.getLogger(__name__)

# Keys of a transformers Blip2ForImageTextRetrieval state dict that belong to the Q-Former side.
BLIP2_RETRIEVAL_KEYS = (
    "query_tokens",
    "embeddings",
    "qformer",
    "vision_projection",
    "text_projection",
    "itm_head",
)
# What UniFashion adds; a BLIP-2 checkpoint may lack any of them (they then keep their initialisation).
UNIFASHION_EXTRA_KEYS = ("ln_vision", "temp", "itg_head", "prompt_tokens", "llm_proj")
# Keys of a converted checkpoint (checkpoints/lavis.py) that other modules load: the diffusion branch's
# ProjLayer (lit.objectives.diffusion.branch.proj_from).
OTHER_MODULES = ("proj_layer.",)
# Sizes a config may state next to pretrained=true; they must agree with the checkpoint.
_CHECKED_SIZES = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "cross_attention_frequency", "encoder_hidden_size", "num_query_tokens", "embed_dim",
)  # fmt: skip


class ItgHead(nn.Module):
    """LM head of the Q-Former used as a text decoder (ITG).

    Why it exists: transformers' BLIP-2 retrieval model has no LM head; LAVIS keeps BERT's
    ``cls.predictions``. Same shape here: a transform (dense, activation, LayerNorm), then logits
    against the Q-Former's word embeddings (tied, as in BERT and LAVIS: the weight is passed in, not
    stored, so the state dict holds it once) plus an output bias.
    """

    def __init__(self, config: Blip2QFormerConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), word_embeddings, self.bias)


class QFormer(nn.Module):
    """The trainable core of BLIP-2 / UniFashion between a frozen ViT and the heads.

    Verbs: :meth:`query_states` (queries over the image), :meth:`text_states` (text alone),
    :meth:`fused_states` (queries and text together over the image), :meth:`itm_logits`,
    :meth:`decoder_logits` (ITG), :meth:`project_image` / :meth:`project_text` (contrastive space).

    Args:
        config: the Q-Former architecture (``use_qformer_text_input`` must be true: text passes need
            the text feed-forward weights).
        num_query_tokens: learned queries (32).
        embed_dim: contrastive space size (256).
        bos_token_id: the decoder's start token replacing [CLS] in ITG (LAVIS adds ``[DEC]`` to BERT's
            vocabulary: id 30522 of 30523).
        temperature: initial contrastive temperature (0.07).
        num_prompt_tokens: size of UniFashion's second query set (phase 2); 0 builds none.
        llm_hidden_size: width of the LLM the query outputs are projected into; ``None`` builds no
            ``llm_proj``.
        ln_vision_eps: epsilon of ``ln_vision`` (LAVIS uses torch's default 1e-5).
        clamp_temperature: :meth:`temperature` clamps ``temp`` in place into [0.001, 0.5] first, as
            LAVIS's BLIP-2 does (ours); ``false``: never, as UniFashion's ``blip2_qformer_cir_cls`` /
            ``cir_rerank`` (the ``fidelity=reference`` preset, ``docs/fidelity.md``).
    """

    def __init__(
        self,
        config: Blip2QFormerConfig,
        num_query_tokens: int = 32,
        embed_dim: int = 256,
        bos_token_id: int = 30522,
        temperature: float = 0.07,
        num_prompt_tokens: int = 0,
        llm_hidden_size: int | None = None,
        ln_vision_eps: float = 1e-5,
        clamp_temperature: bool = True,
    ) -> None:
        super().__init__()
        if not config.use_qformer_text_input:
            raise ValueError("model.qformer: use_qformer_text_input must be true (text passes need it)")
        if not 0 <= bos_token_id < config.vocab_size:
            raise ValueError(
                f"model.qformer.bos_token_id={bos_token_id} is outside the vocabulary ({config.vocab_size})"
            )
        self.config = config
        hidden = config.hidden_size
        self.bos_token_id = bos_token_id
        self.clamp_temperature = clamp_temperature
        self.ln_vision = nn.LayerNorm(config.encoder_hidden_size, eps=ln_vision_eps)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, hidden))
        self.embeddings = Blip2TextEmbeddings(config)
        self.qformer = Blip2QFormerModel(config)
        self.vision_projection = nn.Linear(hidden, embed_dim)
        self.text_projection = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.itg_head = ItgHead(config)
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        if num_prompt_tokens > 0:
            self.prompt_tokens = nn.Parameter(torch.zeros(1, num_prompt_tokens, hidden))
        else:
            self.register_parameter("prompt_tokens", None)
        self.llm_proj = nn.Linear(hidden, llm_hidden_size) if llm_hidden_size else None
        self._init_own_weights()

    @torch.no_grad()
    def _init_own_weights(self) -> None:
        """BERT-style init of what ``Blip2QFormerModel.post_init`` does not cover.

        The queries must start random: identical queries would get identical outputs and gradients
        forever (LAVIS draws them from N(0, 0.02); transformers' zeros assume a checkpoint follows).
        """
        std = self.config.initializer_range
        for param in (self.query_tokens, self.prompt_tokens):
            if param is not None:
                param.normal_(0.0, std)
        for module in (self.embeddings, self.vision_projection, self.text_projection, self.itm_head,
                       self.itg_head, self.llm_proj):  # fmt: skip
            if module is None:
                continue
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    sub.weight.normal_(0.0, std)
                    sub.bias.zero_()
                elif isinstance(sub, nn.Embedding):
                    sub.weight.normal_(0.0, std)
                    if sub.padding_idx is not None:
                        sub.weight[sub.padding_idx].zero_()

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vision_width(self) -> int:
        return self.config.encoder_hidden_size

    def temperature(self) -> torch.Tensor:
        """The contrastive temperature, clamped in place to [0.001, 0.5] first (as BLIP does) unless
        ``clamp_temperature`` is false."""
        if self.clamp_temperature:
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
        return self.temp

    def _queries(self, batch: int, query_tokens: torch.Tensor | None) -> torch.Tensor:
        tokens = self.query_tokens if query_tokens is None else query_tokens
        return tokens.expand(batch, -1, -1)

    def query_states(
        self, image_tokens: torch.Tensor, query_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Query outputs ``[B, Q, H]`` over the (``ln_vision``-normalised) image tokens ``[B, N, C]``.

        ``query_tokens`` replaces the learned queries (phase 2 reads target images with
        ``prompt_tokens``).
        """
        queries = self._queries(image_tokens.shape[0], query_tokens)
        return self.qformer(query_embeds=queries, encoder_hidden_states=image_tokens).last_hidden_state

    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass ``[B, L, H]`` (bidirectional, no image)."""
        embeds = self.embeddings(input_ids=input_ids)
        return self.qformer(
            query_embeds=embeds, query_length=0, attention_mask=attention_mask
        ).last_hidden_state

    def _joint_inputs(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_tokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self._queries(input_ids.shape[0], query_tokens)
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)
        ones = attention_mask.new_ones(queries.shape[:2])
        return embeds, torch.cat([ones, attention_mask], dim=1)

    def fused_states(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries and text together over the image ``[B, Q + L, H]``, all attending to all (ITM and
        phase 2's composed query)."""
        embeds, mask = self._joint_inputs(image_tokens, input_ids, attention_mask, query_tokens)
        out = self.qformer(
            query_embeds=embeds,
            query_length=embeds.shape[1] - input_ids.shape[1],
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
        )
        return out.last_hidden_state

    def prompt_states(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Outputs ``[B, P, H]`` of the second, "prompt" query set over the image (phase 2 reads target
        images with it; the phase-1 ``query_tokens`` keep serving the fusion and ITM)."""
        if self.prompt_tokens is None:
            raise RuntimeError("this Q-Former has no prompt queries: build it with num_prompt_tokens > 0")
        return self.query_states(image_tokens, self.prompt_tokens)

    def composed_feature(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Phase 2's composed query ``[B, E]``: the learned queries and the (modification) text run together
        over the (reference) image; the output at the text [CLS], right after the queries, goes through
        ``text_projection`` and is normalised."""
        fused = self.fused_states(image_tokens, input_ids, attention_mask)
        return self.project_text(fused[:, self.num_query_tokens :])

    def itm_logits(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match/no-match logits ``[B, 2]``: ``itm_head`` on every query output, averaged over queries
        (``query_tokens`` replaces the learned queries, as in :meth:`query_states`)."""
        fused = self.fused_states(image_tokens, input_ids, attention_mask, query_tokens)
        num_queries = self.num_query_tokens if query_tokens is None else query_tokens.shape[1]
        return self.itm_head(fused[:, :num_queries]).mean(dim=1)

    def decoder_logits(
        self, image_tokens: torch.Tensor, decoder_input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITG next-token logits ``[B, L, V]`` at the text positions.

        Why one pass with a mask instead of LAVIS's cache: transformers' Q-Former takes no
        ``past_key_values``. LAVIS runs the queries over the image, caches their keys/values and lets the
        text attend to them and causally to itself. Here queries and text go through together with a mask
        under which queries see only queries (so their states equal the query-only pass) and text sees
        all queries and the text up to itself; the text positions get the same values as LAVIS's,
        at the cost of recomputing the query path.
        """
        embeds, mask = self._joint_inputs(image_tokens, decoder_input_ids, attention_mask, None)
        num_queries = embeds.shape[1] - decoder_input_ids.shape[1]

        def queries_then_causal(batch_idx, head_idx, q_idx, kv_idx):
            return (kv_idx < num_queries) | ((q_idx >= num_queries) & (kv_idx <= q_idx))

        mask4d = create_bidirectional_mask(
            config=self.qformer.config,
            inputs_embeds=embeds,
            attention_mask=mask,
            and_mask_function=queries_then_causal,
        )
        hidden = self.qformer(
            query_embeds=embeds,
            query_length=num_queries,
            attention_mask=mask4d,
            encoder_hidden_states=image_tokens,
        ).last_hidden_state
        return self.itg_head(hidden[:, num_queries:], self.embeddings.word_embeddings.weight)

    def project_image(self, query_states: torch.Tensor) -> torch.Tensor:
        """Normalised contrastive features of every query ``[B, Q, E]``."""
        return F.normalize(self.vision_projection(query_states), dim=-1)

    def project_text(self, text_states: torch.Tensor) -> torch.Tensor:
        """Normalised contrastive feature of the text [CLS] ``[B, E]``."""
        return F.normalize(self.text_projection(text_states[:, 0]), dim=-1)

    def project_to_llm(self, query_states: torch.Tensor) -> torch.Tensor:
        """Query outputs in the LLM's embedding space ``[B, Q, D_llm]``."""
        if self.llm_proj is None:
            raise RuntimeError("this Q-Former has no llm_proj: build it with llm_hidden_size")
        return self.llm_proj(query_states)

    def load_blip2_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "state dict", reinit: Sequence[str] = ()
    ) -> list[str]:
        """Load a Q-Former state dict in transformers' BLIP-2 names (see the module docstring).

        ``vision_model.post_layernorm.*`` is read as ``ln_vision.*``; the rest of ``vision_model.*`` (the
        ViT, loaded by the image encoder) and ``proj_layer.*`` (the diffusion branch's, see
        :data:`OTHER_MODULES`) are ignored. Every BLIP-2 retrieval key must be present and every
        key must belong to this module; UniFashion's extras (``ln_vision``, ``temp``, ``itg_head``,
        ``prompt_tokens``, ``llm_proj``) may be missing and keep their initialisation, as do modules
        named in ``reinit``; ``llm_proj``/``prompt_tokens`` in the state are ignored when this Q-Former does
        not build them. Shapes must match. Returns the keys left at their initialisation.
        """

        def under(key: str, names: Sequence[str]) -> bool:
            return any(key == n or key.startswith(n + ".") for n in names)

        remapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("vision_model.post_layernorm."):
                remapped["ln_vision." + key.removeprefix("vision_model.post_layernorm.")] = value
            elif not key.startswith(("vision_model.", *OTHER_MODULES)):
                remapped[key] = value

        own = self.state_dict()
        # a phase-1 checkpoint has llm_proj, which a retrieval-only phase-2 Q-Former does not build
        unbuilt = [n for n in ("llm_proj", "prompt_tokens") if getattr(self, n) is None]
        dropped = sorted(k for k in remapped if under(k, unbuilt))
        if dropped:
            log.info("%s: ignored %s (not built here)", source, ", ".join(dropped))
            remapped = {k: v for k, v in remapped.items() if not under(k, unbuilt)}
        optional = (*UNIFASHION_EXTRA_KEYS, *reinit)
        missing = sorted(k for k in own if k not in remapped and not under(k, optional))
        unexpected = sorted(k for k in remapped if k not in own)
        shapes = sorted(
            f"{k}: {tuple(remapped[k].shape)} vs {tuple(own[k].shape)}"
            for k in remapped
            if k in own and remapped[k].shape != own[k].shape
        )
        if missing or unexpected or shapes:
            raise CheckpointMismatchError(
                f"{source} does not fit the Q-Former: missing {missing[:10]} ({len(missing)}), unexpected "
                f"{unexpected[:10]} ({len(unexpected)}), shape mismatches {shapes[:10]} ({len(shapes)}). "
                "Do model.qformer's sizes (hidden_size, num_hidden_layers, vocab_size, num_query_tokens, "
                "embed_dim, encoder_hidden_size) match the checkpoint?"
            )
        loaded = {k: v for k, v in remapped.items() if not under(k, reinit)}
        self.load_state_dict(loaded, strict=False)
        fresh = sorted(k for k in own if k not in loaded)
        if fresh:
            log.info("%s: kept the initialisation of %s", source, ", ".join(fresh))
        return fresh


def build_qformer(
    name: str = "Salesforce/blip2-itm-vit-g",
    pretrained: bool = False,
    num_query_tokens: int = 32,
    embed_dim: int = 256,
    bos_token_id: int = 30522,
    temperature: float = 0.07,
    num_prompt_tokens: int = 0,
    llm_hidden_size: int | None = None,
    init_from: str | None = None,
    reinit: Sequence[str] = (),
    prompt_tokens_from_queries: bool = False,
    clamp_temperature: bool = True,
    **config_overrides,
) -> QFormer:
    """A :class:`QFormer`: random init from ``Blip2QFormerConfig`` + ``config_overrides``, or the public
    BLIP-2 retrieval weights by hub name / local folder (``pretrained``), then optionally ``init_from``.

    Args:
        name: a ``Blip2ForImageTextRetrieval`` checkpoint (``Salesforce/blip2-itm-vit-g``), loaded
            offline-safely (``fashion_vl.hub``); its Q-Former config replaces ``config_overrides``.
        init_from: a converted UniFashion/LAVIS checkpoint in the contract's names, or a Lightning
            checkpoint of ours (``net.qformer.*``).
        reinit: modules (e.g. ``llm_proj``) not taken from ``init_from`` or ``name``.
        prompt_tokens_from_queries: when the loaded weights have no ``prompt_tokens`` (a BLIP-2 or
            phase-1 checkpoint), start them as a copy of the loaded ``query_tokens`` (phase 2 then
            begins from target features that already match phase 1's text space) instead of random.
        clamp_temperature: see :class:`QFormer`.
    """
    if pretrained:
        source = load_pretrained(
            Blip2ForImageTextRetrieval.from_pretrained,
            name,
            what="BLIP-2 Q-Former",
            config_key="model.qformer.name",
        )
        config = source.config.qformer_config
        given = {**config_overrides, "num_query_tokens": num_query_tokens, "embed_dim": embed_dim}
        found = {**config.to_dict(), "num_query_tokens": source.config.num_query_tokens}
        found["embed_dim"] = source.config.image_text_hidden_size
        for key in _CHECKED_SIZES:
            if key in given and given[key] != found[key]:
                raise ValueError(
                    f"model.qformer.{key}={given[key]} contradicts the pretrained '{name}' ({key}={found[key]}); "
                    "fix the override or set pretrained=false"
                )
        state = source.state_dict()
        del source
    else:
        config_overrides.setdefault("use_qformer_text_input", True)
        config = Blip2QFormerConfig(**config_overrides)
        state = None
    qformer = QFormer(
        config, num_query_tokens, embed_dim, bos_token_id, temperature, num_prompt_tokens, llm_hidden_size,
        clamp_temperature=clamp_temperature,
    )  # fmt: skip
    fresh: list[str] = []
    if state is not None:
        fresh = qformer.load_blip2_state_dict(state, source=name, reinit=reinit)
    if init_from:
        state = read_state_dict(init_from)
        prefix = "net.qformer."
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        fresh = qformer.load_blip2_state_dict(state, source=init_from, reinit=reinit)
    loaded_any = pretrained or bool(init_from)
    if prompt_tokens_from_queries and loaded_any and "prompt_tokens" in fresh:
        if qformer.prompt_tokens.shape != qformer.query_tokens.shape:
            raise ValueError(
                "model.qformer.prompt_tokens_from_queries needs num_prompt_tokens == num_query_tokens, got "
                f"{qformer.prompt_tokens.shape[1]} and {qformer.num_query_tokens}"
            )
        with torch.no_grad():
            qformer.prompt_tokens.copy_(qformer.query_tokens)
        log.info("prompt_tokens start as a copy of the loaded query_tokens")
    return qformer
