"""FashionViL checkpoints of the authors' MMF code (BrandonHanx/mmf) -> our state dicts.

The MMF model (``mmf/models/fashionvil/fashionvil.py``) is ``image_encoder`` (a torchvision ResNet
cut to ``nn.Sequential(*children()[:-2])``) plus ``model`` (``FashionViLFor{Pretraining,
Classification,Contrastive,Composition}``: ``bert`` = VisualBERT-style embeddings + BERT encoder +
pooler, and per task ``contrastive_norm`` / ``norm_layer``, ``heads``, ``image_tokenizer``,
``classifier``). Our names are those of the LightningModules' state dicts:

========================================================  ====================================================
MMF                                                       ours
========================================================  ====================================================
``image_encoder.model.{0,1}.*``                           ``net.image_encoder.trunk.{conv1,bn1}.*``
``image_encoder.model.{4,5,6,7}.*``                       ``net.image_encoder.trunk.layer{1,2,3,4}.*``
``model.bert.embeddings.{word,position,token_type}_emb..``  ``net.text_encoder.embeddings.*`` (and LayerNorm)
``model.bert.embeddings.projection.*``                    ``net.visual_embeddings.projection.*``
``model.bert.embeddings.position_embeddings_visual``      ``net.visual_embeddings.position_embeddings`` [:N]
``model.bert.embeddings.token_type_embeddings_visual``    ``net.visual_embeddings.token_type_embeddings`` [:1]
``model.bert.{encoder,pooler}.*``                         ``net.text_encoder.{encoder,pooler}.*``
``model.{contrastive_norm,norm_layer}.norm_s`` ``[1]``    ``net.contrastive_norm.scale`` ``[]`` (both are s)
``model.heads.itm.seq_relationship.*``                    ``net.heads.itm.seq_relationship.*``
``model.heads.mlm.{transform.*,decoder.*,bias}``          ``net.heads.mlm.predictions.*``
``model.heads.mpfc.{0,1}.*``                              ``net.heads.mpfc.{transform,classifier}.*``
``model.heads.pac.projection``                            ``net.heads.pac.weight``
``model.image_tokenizer.*`` (taming VQ encoder)           ``net.image_tokenizer.*`` (diffusers names)
``model.classifier.{0,1}.*``                              ``net.heads.classification.{transform,classifier}.*``
========================================================  ====================================================

Value conversions: the visual position table keeps its first ``num_visual_tokens`` rows (MMF sizes
it like BERT's, 512, but only reads ids ``0..48``); the visual token-type table keeps row 0 (MMF's
visual token type is always 0); ``norm_s`` is reshaped from ``[1]`` to a scalar (MMF's
``NormalizationLayer`` and our :class:`~fashion_vl.models.fashionvil.ContrastiveNorm` both store
``s`` in ``s * x / ||x||``, so the value is kept). Dropped as redundant: ``position_ids`` (an
``arange`` buffer) and the EMA codebook statistics (``cluster_size``, ``embed_avg``). The MLM
decoder weight (tied to the word embeddings in both codes) must equal them.

A classification model has no contrastive scale in MMF; ours does (unused by that task), so it is
filled with the initial 4.0 and reported as defaulted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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

TASKS = ("pretrain", "classification", "contrastive", "composition")

# Where our LightningModules keep their parts: the network is ``net`` (every weight is its), the
# heads are ``net.heads[name]`` and MPFC's frozen VQ tokenizer is ``net.image_tokenizer``.
NET = "net."
ITM_HEAD = "net.heads.itm."
MLM_HEAD = "net.heads.mlm."
MPFC_HEAD = "net.heads.mpfc."
MPFC_TOKENIZER = "net.image_tokenizer."
PAC_HEAD = "net.heads.pac."
CLASSIFICATION_HEAD = "net.heads.classification."

MMF_TOKENIZER = "model.image_tokenizer."
_P = "(?P<p>weight|bias)"
_BN = "(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


def _first_rows(n: int):
    return lambda t: t[:n]


def _scalar(t: Tensor) -> Tensor:
    return t.reshape(())


def encoder_rules(num_visual_tokens: int) -> list[Rule]:
    """Rules for the image encoder, the shared BERT and the visual embeddings (every MMF task)."""
    stem = {"0": "conv1", "1": "bn1"}
    stages = {"4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    rules = [
        Rule(rf"image_encoder\.model\.{i}\.(?P<rest>.+)", f"{NET}image_encoder.trunk.{name}.{{rest}}")
        for i, name in {**stem, **stages}.items()
    ]
    emb = "model\\.bert\\.embeddings\\."
    rules += [
        Rule(
            emb + r"(?P<m>word_embeddings|position_embeddings|token_type_embeddings)\.weight",
            f"{NET}text_encoder.embeddings.{{m}}.weight",
        ),
        Rule(emb + rf"LayerNorm\.{_P}", f"{NET}text_encoder.embeddings.LayerNorm.{{p}}"),
        Rule(emb + rf"projection\.{_P}", f"{NET}visual_embeddings.projection.{{p}}"),
        Rule(
            emb + r"position_embeddings_visual\.weight",
            f"{NET}visual_embeddings.position_embeddings.weight",
            _first_rows(num_visual_tokens),
            f"rows 0..{num_visual_tokens - 1} kept (MMF reads visual position ids 0..N-1 only)",
        ),
        Rule(
            emb + r"token_type_embeddings_visual\.weight",
            f"{NET}visual_embeddings.token_type_embeddings.weight",
            _first_rows(1),
            "row 0 kept (MMF's visual token type is always 0)",
        ),
        Rule(r"model\.bert\.encoder\.(?P<rest>.+)", f"{NET}text_encoder.encoder.{{rest}}"),
        Rule(rf"model\.bert\.pooler\.dense\.{_P}", f"{NET}text_encoder.pooler.dense.{{p}}"),
        Rule(
            r"model\.(contrastive_norm|norm_layer)\.norm_s",
            f"{NET}contrastive_norm.scale",
            _scalar,
            "[1] -> scalar; the same s (both compute s * x / ||x||)",
        ),
    ]
    return rules


def pretrain_head_rules() -> list[Rule]:
    return [
        Rule(rf"model\.heads\.itm\.seq_relationship\.{_P}", f"{ITM_HEAD}seq_relationship.{{p}}"),
        Rule(
            rf"model\.heads\.mlm\.transform\.(?P<m>dense|LayerNorm)\.{_P}",
            f"{MLM_HEAD}predictions.transform.{{m}}.{{p}}",
        ),
        Rule(rf"model\.heads\.mlm\.decoder\.{_P}", f"{MLM_HEAD}predictions.decoder.{{p}}"),
        Rule(r"model\.heads\.mlm\.bias", f"{MLM_HEAD}predictions.bias"),
        Rule(
            rf"model\.heads\.mpfc\.0\.(?P<m>dense|LayerNorm)\.{_P}",
            f"{MPFC_HEAD}transform.{{m}}.{{p}}",
        ),
        Rule(rf"model\.heads\.mpfc\.1\.{_P}", f"{MPFC_HEAD}classifier.{{p}}"),
        Rule(r"model\.heads\.pac\.projection", f"{PAC_HEAD}weight"),
    ]


def classification_head_rules() -> list[Rule]:
    return [
        Rule(
            rf"model\.classifier\.0\.(?P<m>dense|LayerNorm)\.{_P}",
            f"{CLASSIFICATION_HEAD}transform.{{m}}.{{p}}",
        ),
        Rule(rf"model\.classifier\.1\.{_P}", f"{CLASSIFICATION_HEAD}classifier.{{p}}"),
    ]


DROPS = (
    Drop(r"model\.(bert|bert_2)\.embeddings\.position_ids", "an arange buffer, rebuilt at init"),
    Drop(r"model\.bert\.embeddings\.token_type_ids", "a zeros buffer, rebuilt at init"),
)


def hints(task: str) -> list[Drop]:
    """Why known MMF keys have no place in the target of ``task`` (they stay unmapped)."""
    out = [Drop(r"model\.bert_2\..*", "no_sharing's second BERT; our FashionViL shares one BERT")]
    if task == "pretrain":
        out += [
            Drop(
                r"model\.heads\.mpfr\..*",
                "the MPFR regression head: not in the final recipe, no objective here",
            ),
            Drop(r"model\.heads\..*", "a pre-training head with no objective here"),
        ]
    else:
        out.append(
            Drop(
                r"model\.(heads|image_tokenizer)\..*",
                "a pre-training part: convert with --task pretrain",
            )
        )
    if task != "classification":
        out.append(
            Drop(r"model\.classifier\..*", "a classification head: convert with --task classification")
        )
    return out


# ---------------------------------------------------------------------------------------------------


def prepare(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An MMF state dict without DDP's ``module.`` prefix (``*_final.pth`` files keep it)."""
    return strip_prefix(state, "module.")


def detect_task(state: Mapping[str, Tensor]) -> str:
    """``classification``, ``pretrain`` or ``contrastive`` from which MMF heads the keys show."""
    keys = list(state)
    if any(k.startswith("model.classifier.") for k in keys):
        return "classification"
    if any(k.startswith(("model.heads.", "model.contrastive_norm.", MMF_TOKENIZER)) for k in keys):
        return "pretrain"
    if any(k.startswith("model.norm_layer.") for k in keys):
        return "contrastive"
    raise ValueError(
        "cannot tell which MMF FashionViL task this checkpoint is from (no model.classifier, "
        "model.heads, model.contrastive_norm or model.norm_layer keys): pass --task"
    )


def convert_mmf_state_dict(
    state: Mapping[str, Tensor],
    task: str | None = None,
    num_visual_tokens: int = 49,
    vq_architecture: Mapping[str, Any] | None = None,
    vq_state: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an MMF FashionViL state dict to the state dict of our LightningModule for ``task``.

    Args:
        state: the MMF weights (``module.`` prefixes allowed).
        task: ``pretrain`` (-> :class:`~fashion_vl.lit.pretrain.PretrainModule`), ``classification``
            (-> :class:`~fashion_vl.lit.classification.ClassificationModule`), ``contrastive`` or
            ``composition`` (-> ``net.*`` only, what the retrieval/composed retrieval modules hold);
            ``None``: detected from the keys.
        num_visual_tokens: our visual position table's size (49 for a 7x7 grid).
        vq_architecture: :func:`~fashion_vl.models.vqvae.build_vqmodel` arguments of the MPFC
            tokenizer (``None``: the authors' architecture).
        vq_state: the taming VQ encoder file's weights, used for the MPFC tokenizer when ``state``
            has no ``model.image_tokenizer.*``.

    Returns:
        The converted tensors (only those that fit our target's names and shapes) and the report.
    """
    state = prepare(state)
    task = task or detect_task(state)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    report = ConversionReport(f"mmf:{task}")
    rules = encoder_rules(num_visual_tokens)
    tokenizer: dict[str, Tensor] = {}
    if task == "pretrain":
        rules += pretrain_head_rules()
        tokenizer = {k[len(MMF_TOKENIZER) :]: v for k, v in state.items() if k.startswith(MMF_TOKENIZER)}
        state = {k: v for k, v in state.items() if not k.startswith(MMF_TOKENIZER)}
    elif task == "classification":
        rules += classification_head_rules()
    out, report = rename(state, rules, DROPS, hints(task), report)
    if task == "pretrain":
        if tokenizer:
            out.update(convert_taming(tokenizer, report, MMF_TOKENIZER, MPFC_TOKENIZER))
        elif vq_state is not None:
            out.update(convert_taming(vq_state, report, "<vqvae file>:", MPFC_TOKENIZER))
    _check_tied_mlm(out, report)
    expected = expected_shapes(task, state, num_visual_tokens, vq_architecture)
    defaults = {}
    if task == "classification":
        defaults[f"{NET}contrastive_norm.scale"] = (
            torch.tensor(4.0),
            "MMF's classification model has no contrastive scale (unused by the task): our initial 4.0",
        )
    fitted = check_against(out, expected, report, defaults)
    return fitted, report


def _check_tied_mlm(out: dict[str, Tensor], report: ConversionReport) -> None:
    """Our MLM decoder *is* the word-embedding matrix (and its bias the head's bias): the two copies
    in the file must agree, or loading would silently keep one of them."""
    pairs = [
        (f"{MLM_HEAD}predictions.decoder.weight", f"{NET}text_encoder.embeddings.word_embeddings.weight"),
        (f"{MLM_HEAD}predictions.decoder.bias", f"{MLM_HEAD}predictions.bias"),
    ]
    for a, b in pairs:
        if a in out and b in out and (out[a].shape != out[b].shape or not torch.equal(out[a], out[b])):
            report.conflicts.append(
                f"{report.mapped[a]} differs from {report.mapped[b]}, but {a} and {b} are one tensor here"
            )


# ---------------------------------------------------------------------------------------------------
# The MPFC VQ tokenizer (taming names -> diffusers VQModel names)


def convert_taming(
    state: Mapping[str, Tensor], report: ConversionReport, source_prefix: str = "", target_prefix: str = ""
) -> dict[str, Tensor]:
    """Rename a taming VQ encoder state dict (``encoder.*``, ``quant_conv.*``, ``quantize.*``) with
    :func:`fashion_vl.models.vqvae.taming_to_diffusers`, recording each key in ``report``."""
    from fashion_vl.models.vqvae import TAMING_IGNORED, taming_to_diffusers

    out: dict[str, Tensor] = {}
    for key, value in state.items():
        source = source_prefix + key
        if TAMING_IGNORED.fullmatch(key):
            report.dropped[source] = "EMA codebook statistics / decoder side: not needed to encode"
            continue
        renamed, unmapped = taming_to_diffusers({key: value})
        if unmapped:
            report.unmapped[source] = "not a taming VQ encoder key"
            continue
        ((new_key, new_value),) = renamed.items()
        target = target_prefix + new_key
        out[target] = new_value
        report.mapped[target] = source
        if new_value.shape != value.shape:
            report.converted[target] = "1x1 conv attention projection -> linear"
    return out


def convert_vq_state_dict(
    state: Mapping[str, Tensor], vq_architecture: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """The authors' ``vqvae_ema_pp_224_7x7_encoder_fashionall.pth`` -> a diffusers ``VQModel``'s
    ``encoder.*``, ``quant_conv.*``, ``quantize.*`` (what :class:`~fashion_vl.models.vqvae.VQTokenizer`
    holds)."""
    report = ConversionReport("taming-vq")
    out = convert_taming(state, report)
    return check_against(out, vq_shapes(vq_architecture), report), report


def vq_architecture_args(vq_architecture: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every :func:`~fashion_vl.models.vqvae.build_vqmodel` argument, defaults filled in."""
    import inspect

    from fashion_vl.models.vqvae import build_vqmodel

    args = {
        name: p.default
        for name, p in inspect.signature(build_vqmodel).parameters.items()
        if p.default is not p.empty
    }
    unknown = sorted(set(vq_architecture or {}) - set(args))
    if unknown:
        raise ValueError(f"unknown VQ-VAE architecture keys {unknown}; build_vqmodel takes {sorted(args)}")
    args.update(vq_architecture or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def vq_shapes(vq_architecture: Mapping[str, Any] | None, prefix: str = "") -> dict[str, torch.Size]:
    from fashion_vl.models.vqvae import VQTokenizer, build_vqmodel

    with torch.device("meta"):
        tokenizer = VQTokenizer(build_vqmodel(**vq_architecture_args(vq_architecture)))
    return shapes_of(tokenizer, prefix)


# ---------------------------------------------------------------------------------------------------
# The target: our modules, sized from the source, built on the meta device (names and shapes only)


def _shape(state: Mapping[str, Tensor], key: str, dim: int, default: int) -> int:
    return int(state[key].shape[dim]) if key in state else default


def bert_config_from(state: Mapping[str, Tensor]):
    """A ``BertConfig`` with the sizes of MMF's ``model.bert`` (the head count does not show in
    shapes and does not change names, so it is 1 here)."""
    from transformers import BertConfig

    emb = "model.bert.embeddings."
    layers = indices(state, r"model\.bert\.encoder\.layer\.(\d+)\..*")
    return BertConfig(
        vocab_size=_shape(state, emb + "word_embeddings.weight", 0, 30522),
        hidden_size=_shape(state, emb + "word_embeddings.weight", 1, 768),
        max_position_embeddings=_shape(state, emb + "position_embeddings.weight", 0, 512),
        type_vocab_size=_shape(state, emb + "token_type_embeddings.weight", 0, 2),
        num_hidden_layers=(layers[-1] + 1) if layers else 12,
        intermediate_size=_shape(state, "model.bert.encoder.layer.0.intermediate.dense.weight", 0, 3072),
        num_attention_heads=1,
    )


def resnet_layout_from(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """timm model name and ``layers``/``channels`` of MMF's torchvision ResNet (ResNet-50 if absent)."""
    keys = list(state)
    if not any(k.startswith("image_encoder.model.") for k in keys):
        return "resnet50", {}
    bottleneck = any(re.fullmatch(r"image_encoder\.model\.[4-7]\.\d+\.conv3\.weight", k) for k in keys)
    layers, channels = [], []
    for stage in range(4, 8):
        blocks = indices(keys, rf"image_encoder\.model\.{stage}\.(\d+)\..*")
        layers.append((blocks[-1] + 1) if blocks else 1)
        channels.append(
            _shape(state, f"image_encoder.model.{stage}.0.conv1.weight", 0, 64 * 2 ** (stage - 4))
        )
    return ("resnet50" if bottleneck else "resnet18"), {"layers": tuple(layers), "channels": tuple(channels)}


def expected_shapes(
    task: str,
    state: Mapping[str, Tensor],
    num_visual_tokens: int = 49,
    vq_architecture: Mapping[str, Any] | None = None,
) -> dict[str, torch.Size]:
    """Names and shapes of our LightningModule's state dict for ``task``, sized like ``state``."""
    from transformers import BertModel

    from fashion_vl.data.formats import NUM_PSEUDO_ATTRIBUTES
    from fashion_vl.models.encoders.image import GridImageEncoder
    from fashion_vl.models.fashionvil import FashionViL
    from fashion_vl.models.heads import ClassificationHead, CosineClassifier, ItmHead, MlmHead, MpfcHead

    name, layout = resnet_layout_from(state)
    config = bert_config_from(state)
    with torch.device("meta"):
        bert = BertModel(config, add_pooling_layer=True)
        net = FashionViL(GridImageEncoder(name, **layout), bert, num_visual_tokens)
        shapes = shapes_of(net, NET)
        if task == "pretrain":
            codebook = _shape(state, "model.heads.mpfc.1.weight", 0, 1024)
            classes = _shape(state, "model.heads.pac.projection", 1, NUM_PSEUDO_ATTRIBUTES)
            shapes |= shapes_of(ItmHead(net), ITM_HEAD)
            shapes |= shapes_of(MlmHead(net), MLM_HEAD)
            shapes |= shapes_of(MpfcHead(net, codebook), MPFC_HEAD)
            shapes |= shapes_of(CosineClassifier.for_network(net, classes), PAC_HEAD)
        elif task == "classification":
            classes = _shape(state, "model.classifier.1.weight", 0, 121)
            shapes |= shapes_of(ClassificationHead(net, classes), CLASSIFICATION_HEAD)
    if task == "pretrain":
        shapes |= vq_shapes(vq_architecture, MPFC_TOKENIZER)
    return shapes
