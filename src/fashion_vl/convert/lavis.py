"""BLIP-2 / UniFashion checkpoints of LAVIS (salesforce/LAVIS, xiangyu-mm/UniFashion) -> the state-dict
names of transformers' :class:`~transformers.Blip2ForImageTextRetrieval`.

The contract (what ``fashion_vl.models.unifashion`` loads): the converted state dict holds
``Blip2ForImageTextRetrieval`` names, plus these optional extra top-level keys that the transformers
class does not have, passed through when the source has them:

- ``prompt_tokens`` ``[1, Q, H]``: UniFashion's second set of learned queries (reads the target image
  in composed retrieval, ``blip2_qformer_cir_rerank``);
- ``llm_proj.weight`` ``[D_llm, H]`` and ``llm_proj.bias`` ``[D_llm]``: the Q-Former -> LLM projection
  (``blip2_qformer_cir_full``);
- ``temp``: the ITC temperature (a scalar; LAVIS initialises it to 0.07 and divides logits by it);
- ``itg_head.transform.{dense,LayerNorm}.*`` and ``itg_head.bias``: the Q-Former's ITG language-model
  head, LAVIS's ``Qformer.cls.predictions`` (its decoder weight is the word-embedding matrix and its
  decoder bias the head's bias, tied in LAVIS: both copies must agree and are not stored twice);
- ``proj_layer.{LayerNorm,dense1,dense2}.*``: UniFashion's BLIP-Diffusion ``ProjLayer`` (query outputs ->
  the CLIP text encoder's context embeddings, ``blip2_qformer_cir_full``), under its own names, which
  are those of :class:`~fashion_vl.models.unifashion.diffusion.ProjLayer`
  (``lit.objectives.diffusion.branch.proj_from`` reads them).

===============================================================  ==================================================
LAVIS                                                            transformers
===============================================================  ==================================================
``Qformer.bert.embeddings.{word,position}_embeddings.weight``    ``embeddings.{word,position}_embeddings.weight``
``Qformer.bert.embeddings.LayerNorm.*``                          ``qformer.layernorm.*``
``Qformer.bert.encoder.layer.i.{attention,crossattention}.self``  ``qformer.encoder.layer.i.{...}.attention``
``Qformer.bert.encoder.layer.i.*`` (output, intermediate,        ``qformer.encoder.layer.i.*`` (same names)
``*_query``)
``query_tokens``                                                 ``query_tokens``
``vision_proj.*`` / ``text_proj.*`` / ``itm_head.*``             ``vision_projection.*`` / ``text_projection.*`` /
                                                                 ``itm_head.*``
``ln_vision.*``                                                  ``vision_model.post_layernorm.*``
``Qformer.cls.predictions.{transform.*,bias}``                   ``itg_head.{transform.*,bias}``
``visual_encoder.{cls_token,pos_embed,patch_embed.proj.*}``      ``vision_model.embeddings.{class_embedding,
                                                                 position_embedding,patch_embedding.*}``
``visual_encoder.blocks.i.{norm1,norm2,attn.proj,mlp.fc*}``      ``vision_model.encoder.layers.i.{layer_norm1,
                                                                 layer_norm2,self_attn.projection,mlp.fc*}``
``visual_encoder.blocks.i.attn.{qkv.weight,q_bias,v_bias}``      ``...self_attn.qkv.{weight,bias}``, bias =
                                                                 ``cat(q_bias, 0, v_bias)`` (EVA has no key bias)
===============================================================  ==================================================

LAVIS's runner saves only trainable parameters, so its checkpoints of a model trained with the EVA ViT
frozen have no ``visual_encoder.*``: the vision tower is then not expected (our frozen ViT keeps timm's
pretrained EVA), except ``ln_vision``, which LAVIS trains. UniFashion's ``save_model`` writes the whole
state dict, the frozen ViT included: when ``visual_encoder.*`` is there, the whole vision tower is
expected, and :class:`~fashion_vl.models.unifashion.vision.FrozenViT` (timm's EVA, whose names are
LAVIS's) loads it from the converted file (:func:`timm_eva_state_dict` renames it back).

Dropped as redundant: ``position_ids`` buffers and the tied ITG decoder copies. Skipped, each with its
reason in the report (``dropped``), because the authors' model builds them but never reads them:

- ``query_proj.*`` (``Linear(embed_dim, embed_dim)``, ``blip2_qformer_cir_{cls,rerank}``) and
  ``caption_proj.*`` (``Linear(hidden, embed_dim)``, ``blip2_qformer_cir_rerank``): projections defined
  in ``__init__`` and called nowhere, so they hold their random initialisation;
- ``llm_query_tokens`` (``[1, Q, 4096]`` zeros, ``blip2_qformer_cir_full``): InstructBLIP-Vicuna's
  LLM-side query embeddings, built but never read by the UniFashion model;
- ``ctx_embeddings_cache``: BLIP-Diffusion's cache of zero-shot context embeddings (zeros, frozen),
  read only when its cached-inference switch is set.

Left unmapped (the conversion is lossy, ``--allow-missing`` needed), with the reason in the report:
the LLM and the diffusion model's own weights (``llm_model``, ``unet``, ``vae``, ``text_encoder``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from fashion_vl.convert.common import (
    ConversionReport,
    Drop,
    Rule,
    check_against,
    indices,
    rename,
    shapes_of,
    strip_prefix,
)

Tensor = torch.Tensor

# The extra top-level keys of the contract (not part of Blip2ForImageTextRetrieval).
EXTRA_KEYS = ("prompt_tokens", "llm_proj.weight", "llm_proj.bias", "temp")
EXTRA_PREFIXES = ("itg_head.", "proj_layer.")

_P = "(?P<p>weight|bias)"
_QL = r"Qformer\.bert\.encoder\.layer\.(?P<i>\d+)\."
_VB = r"visual_encoder\.blocks\.(?P<i>\d+)\."

RULES = [
    # Q-Former
    Rule(
        r"Qformer\.bert\.embeddings\.(?P<m>word_embeddings|position_embeddings)\.weight",
        "embeddings.{m}.weight",
    ),
    Rule(rf"Qformer\.bert\.embeddings\.LayerNorm\.{_P}", "qformer.layernorm.{p}"),
    Rule(
        _QL + rf"(?P<a>attention|crossattention)\.self\.(?P<m>query|key|value)\.{_P}",
        "qformer.encoder.layer.{i}.{a}.attention.{m}.{p}",
    ),
    Rule(
        _QL + rf"(?P<a>attention|crossattention)\.output\.(?P<m>dense|LayerNorm)\.{_P}",
        "qformer.encoder.layer.{i}.{a}.output.{m}.{p}",
    ),
    Rule(
        _QL + rf"(?P<m>intermediate|intermediate_query)\.dense\.{_P}",
        "qformer.encoder.layer.{i}.{m}.dense.{p}",
    ),
    Rule(
        _QL + rf"(?P<m>output|output_query)\.(?P<n>dense|LayerNorm)\.{_P}",
        "qformer.encoder.layer.{i}.{m}.{n}.{p}",
    ),
    Rule(r"query_tokens", "query_tokens"),
    Rule(rf"vision_proj\.{_P}", "vision_projection.{p}"),
    Rule(rf"text_proj\.{_P}", "text_projection.{p}"),
    Rule(rf"itm_head\.{_P}", "itm_head.{p}"),
    # the extras of the contract
    Rule(r"temp", "temp"),
    Rule(r"prompt_tokens", "prompt_tokens"),
    Rule(rf"llm_proj\.{_P}", "llm_proj.{p}"),
    Rule(
        rf"Qformer\.cls\.predictions\.transform\.(?P<m>dense|LayerNorm)\.{_P}",
        "itg_head.transform.{m}.{p}",
    ),
    Rule(r"Qformer\.cls\.predictions\.bias", "itg_head.bias"),
    Rule(rf"proj_layer\.(?P<m>LayerNorm|dense1|dense2)\.{_P}", "proj_layer.{m}.{p}"),
    # tied in LAVIS: mapped onto the tensor they share, so that a copy that differs is a conflict
    Rule(r"Qformer\.cls\.predictions\.decoder\.weight", "embeddings.word_embeddings.weight"),
    Rule(r"Qformer\.cls\.predictions\.decoder\.bias", "itg_head.bias"),
    # vision tower (EVA ViT-g + ln_vision), as transformers' convert_blip_2_original_to_pytorch.py
    Rule(rf"ln_vision\.{_P}", "vision_model.post_layernorm.{p}"),
    Rule(r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    Rule(r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    Rule(rf"visual_encoder\.patch_embed\.proj\.{_P}", "vision_model.embeddings.patch_embedding.{p}"),
    Rule(_VB + rf"norm(?P<n>1|2)\.{_P}", "vision_model.encoder.layers.{i}.layer_norm{n}.{p}"),
    Rule(_VB + r"attn\.qkv\.weight", "vision_model.encoder.layers.{i}.self_attn.qkv.weight"),
    Rule(_VB + rf"attn\.proj\.{_P}", "vision_model.encoder.layers.{i}.self_attn.projection.{p}"),
    Rule(_VB + rf"mlp\.(?P<m>fc1|fc2)\.{_P}", "vision_model.encoder.layers.{i}.mlp.{m}.{p}"),
]

_UNUSED = "skipped: the authors' model builds it but never reads it"
DROPS = (
    Drop(r"Qformer\.bert\.embeddings\.position_ids", "an arange buffer, rebuilt at init"),
    Drop(r"query_proj\.(weight|bias)", f"{_UNUSED} (UniFashion's query_proj, a Linear called nowhere)"),
    Drop(r"caption_proj\.(weight|bias)", f"{_UNUSED} (UniFashion's caption_proj, a Linear called nowhere)"),
    Drop(r"llm_query_tokens", f"{_UNUSED} (InstructBLIP-Vicuna's LLM-side queries, zeros in blip2_cir_full)"),
    Drop(r"ctx_embeddings_cache", f"{_UNUSED} (BLIP-Diffusion's zero-shot context cache, zeros, frozen)"),
)

HINTS = (
    Drop(r"visual_encoder\..*", "an EVA ViT tensor with no transformers counterpart"),
    Drop(
        r"(llm_model|unet|vae|text_encoder|t5_model|opt_model)\..*", "LLM / diffusion weights: not converted"
    ),
)

_QKV_BIAS = r"visual_encoder\.blocks\.(\d+)\.attn\.(?:q_bias|v_bias)"


def convert_lavis_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename a LAVIS BLIP-2 (or UniFashion) state dict to ``Blip2ForImageTextRetrieval`` names plus the
    contract's extras (see the module docstring).

    Returns the converted tensors that fit the target (sized from the source itself) and the report.
    """
    state = strip_prefix(state, "module.")
    report = ConversionReport("lavis")
    biases = {k: v for k, v in state.items() if _is_qkv_bias(k)}
    rest = {k: v for k, v in state.items() if k not in biases}
    out, report = rename(rest, RULES, DROPS, HINTS, report)
    for i in indices(biases, _QKV_BIAS):
        q, v = (f"visual_encoder.blocks.{i}.attn.{n}" for n in ("q_bias", "v_bias"))
        if q in biases and v in biases:
            target = f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"
            out[target] = torch.cat([biases[q], torch.zeros_like(biases[v]), biases[v]])
            report.mapped[target] = f"{q} + {v}"
            report.converted[target] = "cat(q_bias, zeros, v_bias): EVA's attention has no key bias"
        else:
            for key in (q, v):
                if key in biases:
                    report.unmapped[key] = "q_bias and v_bias must both be present to form qkv.bias"
    expected = expected_shapes(state)
    extras = {k: v.shape for k, v in out.items() if k in EXTRA_KEYS or k.startswith(EXTRA_PREFIXES)}
    return check_against(out, {**expected, **extras}, report), report


def _is_qkv_bias(key: str) -> bool:
    return re.fullmatch(_QKV_BIAS, key) is not None


def _shape(state: Mapping[str, Tensor], key: str, dim: int, default: int) -> int:
    return int(state[key].shape[dim]) if key in state else default


def blip2_config_from(state: Mapping[str, Tensor]):
    """A ``Blip2Config`` sized like the LAVIS weights (head counts do not show in shapes; names and
    shapes do not depend on them, so they are 1 here). ``use_qformer_text_input`` is on: retrieval
    runs text through the Q-Former."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    emb = "Qformer.bert.embeddings."
    layer = "Qformer.bert.encoder.layer."
    layers = indices(state, r"Qformer\.bert\.encoder\.layer\.(\d+)\..*")
    cross = indices(state, r"Qformer\.bert\.encoder\.layer\.(\d+)\.crossattention\..*")
    num_layers = (layers[-1] + 1) if layers else 12
    frequency = next((i for i in cross if i > 0), num_layers) if cross else 2
    hidden = _shape(state, "query_tokens", 2, 768)
    blocks = indices(state, r"visual_encoder\.blocks\.(\d+)\..*")
    vision_hidden = _shape(state, "ln_vision.weight", 0, 1408)
    patch = _shape(state, "visual_encoder.patch_embed.proj.weight", 2, 14)
    positions = _shape(state, "visual_encoder.pos_embed", 1, 257)
    vision = Blip2VisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=_shape(state, "visual_encoder.blocks.0.mlp.fc1.weight", 0, 6144),
        num_hidden_layers=(blocks[-1] + 1) if blocks else 39,
        num_attention_heads=1,
        patch_size=patch,
        image_size=round((positions - 1) ** 0.5) * patch,
        qkv_bias=True,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=_shape(state, emb + "word_embeddings.weight", 0, 30523),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=1,
        intermediate_size=_shape(state, layer + "0.intermediate_query.dense.weight", 0, 3072),
        max_position_embeddings=_shape(state, emb + "position_embeddings.weight", 0, 512),
        cross_attention_frequency=frequency,
        encoder_hidden_size=_shape(state, layer + "0.crossattention.self.key.weight", 1, vision_hidden),
        use_qformer_text_input=True,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        num_query_tokens=_shape(state, "query_tokens", 1, 32),
        image_text_hidden_size=_shape(state, "vision_proj.weight", 0, 256),
    )


def expected_shapes(state: Mapping[str, Tensor]) -> dict[str, torch.Size]:
    """``Blip2ForImageTextRetrieval``'s names and shapes for this source: everything, but the vision
    tower only when the source has ``visual_encoder.*`` (``post_layernorm``, LAVIS's ``ln_vision``,
    always)."""
    from transformers import Blip2ForImageTextRetrieval

    with torch.device("meta"):
        model = Blip2ForImageTextRetrieval(blip2_config_from(state))
    shapes = shapes_of(model)
    if not any(k.startswith("visual_encoder.") for k in state):
        shapes = {
            k: v
            for k, v in shapes.items()
            if not k.startswith("vision_model.") or k.startswith("vision_model.post_layernorm.")
        }
    return shapes


# The vision tower's names in the converted file -> timm's EVA: the network's own reading of a converted
# file (models/unifashion/vision.py), re-exported here beside the converter that writes those names.
from fashion_vl.models.unifashion.vision import timm_eva_state_dict  # noqa: E402, F401
