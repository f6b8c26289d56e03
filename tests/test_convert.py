"""``fvl-convert``: the authors' checkpoints (MMF FashionViL, its VQ-VAE encoder, LAVIS BLIP-2) become ours.

Each test builds a model of ours, writes its tensors under the *source* framework's names with a
mapping written here independently of the converter (the inverse of what the converter does), runs
the converter, and checks that the result loads strictly and computes exactly what the original did.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from fashion_vl.build import build as build_run
from fashion_vl.cli.convert import main
from fashion_vl.convert.common import CheckpointLoadError, extract_state_dict, load_file
from fashion_vl.convert.lavis import convert_lavis_state_dict
from fashion_vl.convert.mmf import convert_mmf_state_dict
from fashion_vl.models.vqvae import diffusers_to_taming
from fashion_vl.utils.io import save_atomic
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY_VQ = str(CONF / "model" / "image_tokenizer" / "vq_random_tiny.yaml")
# our tiny FashionViL with a torchvision-layout ResNet (plain 7x7 stem, conv+bn downsample), as MMF's
RESNET = ["model.image_encoder.name=resnet18"]
MMF_MAX_POSITIONS = 128  # MMF sizes the visual position table like BERT's text table

# ---------------------------------------------------------------------------------------------------
# ours -> MMF names (written from MMF's code: mmf/models/fashionvil/*.py, mmf/modules/embeddings.py)

MMF_STAGES = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def to_mmf(ours: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """An MMF ``*_final.pth`` (DDP ``module.`` prefix) holding the tensors of our LightningModule."""
    g = torch.Generator().manual_seed(seed)
    mmf: dict[str, torch.Tensor] = {}
    tokenizer: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        if key.startswith("net.image_encoder.trunk."):
            part, rest = key.removeprefix("net.image_encoder.trunk.").split(".", 1)
            mmf[f"image_encoder.model.{MMF_STAGES[part]}.{rest}"] = value
        elif key.startswith("net.text_encoder."):
            mmf["model.bert." + key.removeprefix("net.text_encoder.")] = value
        elif key.startswith("net.visual_embeddings.projection."):
            mmf["model.bert.embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key == "net.visual_embeddings.position_embeddings.weight":
            unused = torch.randn(MMF_MAX_POSITIONS - value.shape[0], value.shape[1], generator=g)
            mmf["model.bert.embeddings.position_embeddings_visual.weight"] = torch.cat([value, unused])
        elif key == "net.visual_embeddings.token_type_embeddings.weight":
            unused = torch.randn(1, value.shape[1], generator=g)  # MMF's table has type_vocab_size = 2 rows
            mmf["model.bert.embeddings.token_type_embeddings_visual.weight"] = torch.cat([value, unused])
        elif key == "net.contrastive_norm.scale":
            mmf["model.contrastive_norm.norm_s"] = value.reshape(1)  # NormalizationLayer: Parameter([s])
        elif key.startswith("net.heads.itm."):
            mmf["model.heads.itm." + key.removeprefix("net.heads.itm.")] = value
        elif key.startswith("net.heads.mlm.predictions."):
            mmf["model.heads.mlm." + key.removeprefix("net.heads.mlm.predictions.")] = value
        elif key.startswith("net.heads.mpfc.transform."):
            mmf["model.heads.mpfc.0." + key.removeprefix("net.heads.mpfc.transform.")] = value
        elif key.startswith("net.heads.mpfc.classifier."):
            mmf["model.heads.mpfc.1." + key.removeprefix("net.heads.mpfc.classifier.")] = value
        elif key == "net.heads.pac.weight":
            mmf["model.heads.pac.projection"] = value  # CosSim.projection [hidden, classes]
        elif key.startswith("net.image_tokenizer."):
            tokenizer[key.removeprefix("net.image_tokenizer.")] = value
        elif key.startswith("net.heads.classification.transform."):
            mmf["model.classifier.0." + key.removeprefix("net.heads.classification.transform.")] = value
        elif key.startswith("net.heads.classification.classifier."):
            mmf["model.classifier.1." + key.removeprefix("net.heads.classification.classifier.")] = value
        else:
            raise KeyError(key)
    if tokenizer:
        mmf.update({f"model.image_tokenizer.{k}": v for k, v in taming_encoder(tokenizer).items()})
    mmf["model.bert.embeddings.position_ids"] = torch.arange(MMF_MAX_POSITIONS)[None]
    return {f"module.{k}": v for k, v in mmf.items()}


def taming_encoder(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A taming/MMF VQ encoder state dict, with the EMA codebook's extra buffers."""
    taming, unmapped = diffusers_to_taming(diffusers_state)
    assert not unmapped
    codebook = taming["quantize.embedding.weight"]
    taming["quantize.embedding.cluster_size"] = torch.rand(codebook.shape[0])
    taming["quantize.embedding.embed_avg"] = codebook.clone()
    return taming


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every tensor off its initial value, so that a tensor left at init would show."""
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        else:
            t.add_(0.1 * torch.randn(t.shape, generator=g))


# ---------------------------------------------------------------------------------------------------
# fixtures: our LightningModules from the experiments' configs


def build(tmp: Path, overrides: list[str], seed: int):
    cfg = compose_config("train", overrides + RESNET, tmp)
    GlobalHydra.instance().clear()
    return cfg, instantiate_lit(cfg, seed)


def instantiate_lit(cfg, seed: int):
    """The run's LightningModule as fvl-train builds it (no data, no trainer), seeded with ``seed``."""
    with open_dict(cfg):
        cfg.seed = seed
    return build_run(cfg, data=False, trainer=False).lit.eval()


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory: pytest.TempPathFactory):
    """(config, reference pre-training module A, A's tensors under MMF names in a .pth file)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg, lit = build(tmp, ["experiment=demo_pretrain"], seed=0)
    perturb(lit, seed=1)
    src = tmp / "fashionvil_final.pth"
    torch.save(to_mmf(lit.state_dict()), src)
    return cfg, lit, src


@pytest.fixture(scope="module")
def converted_pretrain(pretrain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fvl-convert mmf`` run on the pre-training fixture."""
    _, _, src = pretrain
    out = tmp_path_factory.mktemp("converted") / "fashionvil_pretrain.ckpt"
    assert main(["mmf", str(src), str(out), "--vqvae-architecture", TINY_VQ]) == 0
    return out


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    return {
        "images": torch.randn(2, 3, 112, 112, generator=g),
        "input_ids": torch.randint(5, 1000, (2, 12), generator=g),
        "attention_mask": mask,
    }


@torch.no_grad()
def net_outputs(net, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fused = net.encode_fused(x["input_ids"], x["attention_mask"], x["images"])
    return {
        "image": net.encode_image(x["images"]),
        "text": net.encode_text(x["input_ids"], x["attention_mask"]),
        "fused_text": fused.text,
        "fused_visual": fused.visual,
        "pooled": fused.pooled,
    }


@torch.no_grad()
def pretrain_outputs(lit, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = net_outputs(lit.net, x)
    heads = lit.net.heads
    out |= {
        "normalized_image": lit.net.encode_image(x["images"], normalize=True),
        "itm": heads["itm"](out["pooled"]),
        "mlm": heads["mlm"](out["fused_text"]),
        "mpfc": heads["mpfc"](out["fused_visual"]),
        "pac": heads["pac"](out["image"]),
        "vq_indices": lit.net.image_tokenizer(x["images"]),
    }
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------
# MMF


def test_mmf_pretrain_checkpoint_loads_strictly_and_computes_the_same(
    pretrain, converted_pretrain, inputs
) -> None:
    cfg, reference, _ = pretrain
    ckpt = torch.load(converted_pretrain, map_location="cpu", weights_only=True)
    assert ckpt["fvl_source"]["format"] == "mmf" and ckpt["fvl_source"]["task"] == "pretrain"
    assert sorted(ckpt["state_dict"]) == sorted(reference.state_dict())
    # s is stored as s (not s^2) on both sides: the value survives, only the shape changes
    assert ckpt["state_dict"]["net.contrastive_norm.scale"].shape == ()
    assert ckpt["state_dict"]["net.contrastive_norm.scale"] == reference.net.contrastive_norm.scale

    converted = instantiate_lit(cfg, seed=7)
    converted.load_state_dict(ckpt["state_dict"], strict=True)
    assert_same(pretrain_outputs(reference, inputs), pretrain_outputs(converted, inputs))


def test_converted_checkpoint_works_as_init_from(pretrain, converted_pretrain, inputs, tmp_path) -> None:
    _, reference, _ = pretrain
    overrides = ["experiment=demo_finetune_retrieval", *RESNET, f"model.init_from={converted_pretrain}"]
    ft = compose_config("train", overrides, tmp_path)
    GlobalHydra.instance().clear()
    torch.manual_seed(3)
    net = instantiate(ft.model, _convert_="all").eval()
    assert net.contrastive_norm.scale.item() == 4.0  # re-initialised by fine-tuning, as the reference
    assert_same(net_outputs(reference.net, inputs), net_outputs(net, inputs))


def test_mmf_classification_checkpoint(tmp_path, inputs) -> None:
    cfg, reference = build(tmp_path, ["experiment=demo_finetune_classification"], seed=0)
    perturb(reference, seed=4)
    mmf = {k: v for k, v in to_mmf(reference.state_dict()).items() if "contrastive_norm" not in k}
    torch.save({"model": mmf}, tmp_path / "classification.ckpt")  # an MMF .ckpt keeps it under "model"
    out = tmp_path / "ours.ckpt"
    assert main(["mmf", str(tmp_path / "classification.ckpt"), str(out)]) == 0  # task detected
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["fvl_source"]["task"] == "classification"
    assert list(ckpt["fvl_source"]["report"]["defaulted"]) == ["net.contrastive_norm.scale"]

    converted = instantiate_lit(cfg, seed=9)
    converted.load_state_dict(ckpt["state_dict"], strict=True)
    with torch.no_grad():
        expected = reference.logits(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
        got = converted.logits(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(expected, got)


def test_mmf_resnet_indices_are_torchvision_children() -> None:
    """MMF's encoder is ``nn.Sequential(*torchvision_resnet.children()[:-2])``: its indices land on
    timm's names and the trunk computes the same features."""
    import torchvision

    from fashion_vl.models.encoders.image import GridImageEncoder

    def mmf_trunk(resnet: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        trunk = torch.nn.Sequential(*list(resnet.children())[:-2]).eval()
        return trunk, {f"image_encoder.model.{k}": v for k, v in trunk.state_dict().items()}

    with torch.device("meta"):  # ResNet-50's names and shapes (bottleneck blocks), without the init cost
        _, mmf = mmf_trunk(torchvision.models.resnet50())
    ours, report = convert_mmf_state_dict(mmf, task="contrastive")
    assert not report.unmapped and not report.mismatched and len(ours) == len(mmf)
    assert not [k for k in report.missing if k.startswith("net.image_encoder.")]

    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    perturb(tv, seed=5)
    trunk, mmf = mmf_trunk(tv)
    ours, report = convert_mmf_state_dict(mmf, task="contrastive")
    encoder = GridImageEncoder("resnet18.tv_in1k").eval()
    prefix = "net.image_encoder."
    encoder.load_state_dict({k.removeprefix(prefix): v for k, v in ours.items() if k.startswith(prefix)})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trunk(x), encoder.forward_grid(x), atol=1e-5)


def test_lossy_conversions_are_refused(pretrain, tmp_path, capsys) -> None:
    _, _, src = pretrain
    state = torch.load(src, weights_only=True)

    extra = dict(state, **{"module.model.heads.mpfr.1.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    out = tmp_path / "out.ckpt"
    assert main(["mmf", str(tmp_path / "extra.pth"), str(out), "--vqvae-architecture", TINY_VQ]) == 2
    assert not out.exists()
    assert "model.heads.mpfr.1.weight" in capsys.readouterr().out

    partial = {k: v for k, v in state.items() if "pooler" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    assert main(["mmf", str(tmp_path / "partial.pth"), str(out), "--vqvae-architecture", TINY_VQ]) == 2
    assert not out.exists()
    assert "net.text_encoder.pooler.dense.weight" in capsys.readouterr().out

    assert main(["mmf", str(tmp_path / "partial.pth"), str(out), "--vqvae-architecture", TINY_VQ,
                 "--allow-missing"]) == 0  # fmt: skip
    report = torch.load(out, weights_only=True)["fvl_source"]["report"]
    assert report["missing"] == ["net.text_encoder.pooler.dense.weight", "net.text_encoder.pooler.dense.bias"]


def test_tied_copies_that_differ_are_a_conflict(pretrain) -> None:
    _, _, src = pretrain
    state = torch.load(src, weights_only=True)
    state["module.model.heads.mlm.decoder.weight"] = state["module.model.heads.mlm.decoder.weight"] + 1
    _, report = convert_mmf_state_dict(state, vq_architecture=_tiny_vq_architecture())
    assert len(report.conflicts) == 1 and "word_embeddings" in report.conflicts[0]
    assert not report.lossless


def test_shape_mismatch_is_refused_even_with_allow_missing(pretrain, tmp_path, capsys) -> None:
    _, _, src = pretrain
    out = tmp_path / "out.ckpt"  # the authors' VQ-VAE architecture does not fit the tiny tokenizer
    assert main(["mmf", str(src), str(out), "--allow-missing"]) == 2
    assert not out.exists()
    assert "shape mismatches" in capsys.readouterr().out


def test_files_with_pickled_objects_need_trust(pretrain, tmp_path, capsys) -> None:
    _, _, src = pretrain
    payload = {"model": torch.load(src, weights_only=True), "config": argparse.Namespace(lr=1e-5)}
    torch.save(payload, tmp_path / "mmf.ckpt")
    out = tmp_path / "out.ckpt"
    assert main(["mmf", str(tmp_path / "mmf.ckpt"), str(out), "--vqvae-architecture", TINY_VQ]) == 1
    assert "--trust-pickle" in capsys.readouterr().out and not out.exists()
    args = ["mmf", str(tmp_path / "mmf.ckpt"), str(out), "--vqvae-architecture", TINY_VQ, "--trust-pickle"]
    assert main(args) == 0
    assert load_file(out)["state_dict"]  # the output itself loads with weights_only=True


def _tiny_vq_architecture() -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(TINY_VQ).architecture)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def test_vqvae_encoder_file_feeds_the_vq_ckpt_tokenizer_config(tmp_path) -> None:
    from fashion_vl.models.vqvae import VQTokenizer, build_vqmodel

    torch.manual_seed(0)
    reference = VQTokenizer(build_vqmodel(**_tiny_vq_architecture()))
    perturb(reference, seed=6)
    torch.save(taming_encoder(reference.state_dict()), tmp_path / "vqvae_encoder.pth")
    out = tmp_path / "vq.ckpt"
    assert (
        main(["vqvae", str(tmp_path / "vqvae_encoder.pth"), str(out), "--vqvae-architecture", TINY_VQ]) == 0
    )

    cfg = OmegaConf.load(CONF / "model" / "image_tokenizer" / "vq_ckpt.yaml")
    cfg.path = str(out)
    tokenizer = instantiate(cfg)()  # a factory: the network calls it after building its encoder
    images = torch.randn(3, 3, 112, 112)
    assert torch.equal(tokenizer(images), reference(images))


def test_save_atomic_leaves_no_partial_file(tmp_path) -> None:
    target = tmp_path / "x.ckpt"
    save_atomic({"a": torch.zeros(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


# ---------------------------------------------------------------------------------------------------
# LAVIS BLIP-2 Q-Former -> transformers Blip2ForImageTextRetrieval


def tiny_blip2():
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=28, patch_size=14, qkv_bias=True)  # fmt: skip
    qformer = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=40, cross_attention_frequency=2,
                   encoder_hidden_size=32, use_qformer_text_input=True)  # fmt: skip
    config = Blip2Config(
        vision_config=vision, qformer_config=qformer, num_query_tokens=4, image_text_hidden_size=16
    )
    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(config).eval()
    perturb(model, seed=8)
    with torch.no_grad():  # EVA's attention has no key bias: LAVIS stores only q_bias and v_bias
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[32:64] = 0
    return model


def to_lavis(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS names (lavis/models/blip2_models/{blip2_qformer,Qformer}.py, eva_vit.py) for those tensors."""
    lavis: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key.startswith("qformer.encoder.layer."):
            name = key.replace("qformer.encoder.layer.", "Qformer.bert.encoder.layer.")
            name = name.replace(".attention.attention.", ".attention.self.")
            name = name.replace(".crossattention.attention.", ".crossattention.self.")
            lavis[name] = value
        elif key == "qformer.layernorm.weight" or key == "qformer.layernorm.bias":
            lavis["Qformer.bert.embeddings.LayerNorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("embeddings."):
            lavis["Qformer.bert." + key] = value
        elif key.startswith(("vision_projection.", "text_projection.")):
            lavis[key.replace("vision_projection", "vision_proj").replace("text_projection", "text_proj")] = (
                value
            )
        elif key.startswith("itm_head.") or key == "query_tokens":
            lavis[key] = value
        elif key.startswith("vision_model.post_layernorm."):
            lavis["ln_vision." + key.rsplit(".", 1)[1]] = value
        elif key == "vision_model.embeddings.class_embedding":
            lavis["visual_encoder.cls_token"] = value
        elif key == "vision_model.embeddings.position_embedding":
            lavis["visual_encoder.pos_embed"] = value
        elif key.startswith("vision_model.embeddings.patch_embedding."):
            lavis["visual_encoder.patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision_model.encoder.layers."):
            i, rest = key.removeprefix("vision_model.encoder.layers.").split(".", 1)
            block = f"visual_encoder.blocks.{i}."
            if rest == "self_attn.qkv.bias":
                q, _, v = value.chunk(3)
                lavis[block + "attn.q_bias"], lavis[block + "attn.v_bias"] = q, v
            else:
                rest = rest.replace("layer_norm", "norm").replace("self_attn.projection", "attn.proj")
                lavis[block + rest.replace("self_attn.qkv", "attn.qkv")] = value
        else:
            raise KeyError(key)
    lavis["Qformer.bert.embeddings.position_ids"] = torch.arange(40)[None]
    return lavis


@torch.no_grad()
def blip2_outputs(model, pixels, ids, mask) -> dict[str, torch.Tensor]:
    itm = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    itc = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    return {"itm": itm.logits_per_image, "itc_image": itc.image_embeds, "itc_text": itc.text_embeds}


def itg_head(lavis: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS's ``Qformer.cls.predictions`` (BERT's LM head; the decoder tied to the word embeddings)."""
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(100, generator=g)
    return {
        "Qformer.cls.predictions.transform.dense.weight": torch.randn(32, 32, generator=g),
        "Qformer.cls.predictions.transform.dense.bias": torch.randn(32, generator=g),
        "Qformer.cls.predictions.transform.LayerNorm.weight": torch.randn(32, generator=g),
        "Qformer.cls.predictions.transform.LayerNorm.bias": torch.randn(32, generator=g),
        "Qformer.cls.predictions.bias": bias,
        "Qformer.cls.predictions.decoder.weight": lavis["Qformer.bert.embeddings.word_embeddings.weight"],
        "Qformer.cls.predictions.decoder.bias": bias,
    }


def test_lavis_checkpoint_loads_strictly_into_blip2_retrieval(tmp_path) -> None:
    reference = tiny_blip2()
    lavis = to_lavis(reference.state_dict())
    itg = itg_head(lavis)
    extras = {"temp": torch.tensor(0.05), "prompt_tokens": torch.randn(1, 4, 32),
              "llm_proj.weight": torch.randn(64, 32), "llm_proj.bias": torch.randn(64)}  # fmt: skip
    # UniFashion's utils.save_model: {"epoch": n, <model class name>: state_dict}
    torch.save({"epoch": 3, "Blip2QformerCirRerank": {**lavis, **itg, **extras}}, tmp_path / "unifashion.pth")
    out = tmp_path / "unifashion.ckpt"
    assert main(["lavis", str(tmp_path / "unifashion.pth"), str(out)]) == 0
    state = torch.load(out, weights_only=True)["state_dict"]
    for key, value in extras.items():  # the contract's extra top-level keys, unchanged
        assert torch.equal(state.pop(key), value)
    for key in ("transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
                "transform.LayerNorm.bias", "bias"):  # fmt: skip
        assert torch.equal(state.pop(f"itg_head.{key}"), itg[f"Qformer.cls.predictions.{key}"])

    converted = tiny_blip2()
    with torch.no_grad():
        for p in converted.parameters():
            p.zero_()
    result = converted.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    g = torch.Generator().manual_seed(0)
    pixels, ids = torch.randn(2, 3, 28, 28, generator=g), torch.randint(0, 100, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    assert_same(blip2_outputs(reference, pixels, ids, mask), blip2_outputs(converted, pixels, ids, mask))


def test_lavis_without_the_frozen_vision_tower() -> None:
    """LAVIS saves trainable tensors only: without ``visual_encoder.*`` the vision tower is not
    expected, but ``ln_vision`` (trained) is."""
    reference = tiny_blip2()
    lavis = {k: v for k, v in to_lavis(reference.state_dict()).items() if not k.startswith("visual_encoder.")}
    ours, report = convert_lavis_state_dict(lavis)
    assert report.lossless
    vision = {k for k in reference.state_dict() if k.startswith("vision_model.")}
    post_layernorm = {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"}
    assert set(ours) == set(reference.state_dict()) - vision | post_layernorm

    _, report = convert_lavis_state_dict({k: v for k, v in lavis.items() if not k.startswith("ln_vision.")})
    assert report.missing == ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]


def test_lavis_lossy_parts_are_reported() -> None:
    lavis = to_lavis(tiny_blip2().state_dict())
    itg = itg_head(lavis)
    itg["Qformer.cls.predictions.decoder.weight"] = itg["Qformer.cls.predictions.decoder.weight"] + 1
    lavis |= itg | {"unet.conv_in.weight": torch.zeros(8, 4, 3, 3)}  # Stable Diffusion's: not converted
    _, report = convert_lavis_state_dict(lavis)
    assert list(report.unmapped) == ["unet.conv_in.weight"]
    assert "not converted" in report.unmapped["unet.conv_in.weight"]
    assert len(report.conflicts) == 1 and "decoder.weight" in report.conflicts[0]


NOT_CONVERTED = ("llm_model", "unet", "vae", "text_encoder")  # the LLM's and Stable Diffusion's own weights


def unifashion_modules(hidden: int = 32, embed: int = 16, queries: int = 4) -> dict[str, torch.Tensor]:
    """The modules a UniFashion checkpoint holds besides BLIP-2's (xiangyu-mm/UniFashion@f01a46f,
    src/lavis/models/blip2_models/blip2_qformer_cir_{cls,rerank,full}.py ``__init__``)."""
    g = torch.Generator().manual_seed(3)
    return {
        "query_proj.weight": torch.randn(embed, embed, generator=g),  # Linear(embed_dim, embed_dim)
        "query_proj.bias": torch.randn(embed, generator=g),
        "caption_proj.weight": torch.randn(embed, hidden, generator=g),  # Linear(hidden, embed_dim)
        "caption_proj.bias": torch.randn(embed, generator=g),
        "llm_query_tokens": torch.zeros(1, queries, 64),
        "ctx_embeddings_cache": torch.zeros(1, queries, hidden),
        "proj_layer.LayerNorm.weight": torch.randn(hidden, generator=g),  # BLIP-Diffusion's ProjLayer
        "proj_layer.LayerNorm.bias": torch.randn(hidden, generator=g),
        "proj_layer.dense1.weight": torch.randn(3 * hidden, hidden, generator=g),
        "proj_layer.dense1.bias": torch.randn(3 * hidden, generator=g),
        "proj_layer.dense2.weight": torch.randn(hidden, 3 * hidden, generator=g),
        "proj_layer.dense2.bias": torch.randn(hidden, generator=g),
    }


def test_lavis_leaves_unmapped_only_what_it_does_not_convert() -> None:
    """Nothing our model has a place for is left unmapped: BLIP-2's keys and UniFashion's ProjLayer are
    mapped, the modules the authors build but never read are skipped with that reason, and only the LLM's
    and Stable Diffusion's own weights stay unmapped (not converted)."""
    lavis = to_lavis(tiny_blip2().state_dict()) | unifashion_modules()
    lavis |= {f"{part}.weight": torch.zeros(2) for part in ("llm_model.lm_head", "unet.conv_in", "vae.encoder.conv_in",
                                                            "text_encoder.text_model.final_layer_norm")}  # fmt: skip
    ours, report = convert_lavis_state_dict(lavis)
    assert sorted(report.unmapped) == sorted(k for k in lavis if k.split(".")[0] in NOT_CONVERTED)
    assert all("not converted" in reason for reason in report.unmapped.values())
    skipped = ("query_proj.weight", "query_proj.bias", "caption_proj.weight", "caption_proj.bias",
               "llm_query_tokens", "ctx_embeddings_cache")  # fmt: skip
    for key in skipped:
        assert "never reads it" in report.dropped[key], key
    for key, value in unifashion_modules().items():
        if key.startswith("proj_layer."):
            assert torch.equal(ours[key], value), key  # under the names our ProjLayer uses
    assert not (report.missing or report.mismatched or report.conflicts)


def test_lavis_proj_layer_loads_into_the_diffusion_branch_and_is_ignored_by_the_qformer(tmp_path) -> None:
    from fashion_vl.models.unifashion import build_qformer
    from fashion_vl.models.unifashion.diffusion import ProjLayer, build_diffusion_branch

    lavis = {
        k: v for k, v in to_lavis(tiny_blip2().state_dict()).items() if not k.startswith("visual_encoder.")
    }
    extras = unifashion_modules()
    torch.save({"epoch": 1, "Blip2QformerCirFull": lavis | extras}, tmp_path / "unifashion.pth")
    out = tmp_path / "unifashion.ckpt"
    assert main(["lavis", str(tmp_path / "unifashion.pth"), str(out)]) == 0  # skipped modules: no loss
    build_qformer(
        pretrained=False, num_query_tokens=4, embed_dim=16, bos_token_id=99, init_from=str(out), vocab_size=100,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, cross_attention_frequency=2, encoder_hidden_size=32,
    )  # fmt: skip
    text = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "max_position_embeddings": 40}  # fmt: skip
    unet = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [8, 16], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32,
            "attention_head_dim": 4, "norm_num_groups": 4}  # fmt: skip
    vae = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
           "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "latent_channels": 4}  # fmt: skip
    branch = build_diffusion_branch(pretrained=False, tokenizer="unused", query_dim=32, proj_hidden_dim=96,
                                    resolution=16, unet=unet, vae=vae, text_encoder=text, proj_from=str(out))  # fmt: skip
    expected = ProjLayer(32, 96, 32)
    expected.load_state_dict(
        {k.removeprefix("proj_layer."): v for k, v in extras.items() if k.startswith("proj_layer.")}
    )
    for (name, a), b in zip(expected.state_dict().items(), branch.proj.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_lavis_vit_from_the_cli_is_the_vit_that_runs(tmp_path, caplog) -> None:
    """A file with the authors' EVA ViT (``visual_encoder.*``): ``fvl-convert lavis`` keeps it (under
    transformers' names) and our FrozenViT (timm's EVA) loads it from the output, computing what the
    original vision tower computes; one log line says where its weights come from."""
    import logging

    from fashion_vl.models.unifashion import FrozenViT

    reference = tiny_blip2()
    lavis = to_lavis(reference.state_dict())
    torch.save({"epoch": 1, "Blip2QformerCirCls": {**lavis, **itg_head(lavis)}}, tmp_path / "unifashion.pth")
    out = tmp_path / "unifashion.ckpt"
    assert main(["lavis", str(tmp_path / "unifashion.pth"), str(out)]) == 0
    with caplog.at_level(logging.INFO, logger="fashion_vl.models.unifashion.vision"):
        vit = FrozenViT("eva_giant_patch14_clip_224", img_size=28, patch_size=14, embed_dim=32, depth=2,
                        num_heads=4, mlp_ratio=1.5, init_from=str(out))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frozen ViT")]
    assert len(lines) == 1 and "converted LAVIS/UniFashion checkpoint" in lines[0] and str(out) in lines[0]
    ours = vit.trunk.state_dict()
    for key, value in lavis.items():
        if key.startswith("visual_encoder."):  # LAVIS's EVA names are timm's
            assert torch.equal(ours[key.removeprefix("visual_encoder.")], value), key
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = reference.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(vit(pixels), hidden, atol=1e-5, rtol=0)


def test_a_vision_tower_with_a_key_bias_is_refused() -> None:
    from fashion_vl.convert.lavis import timm_eva_state_dict
    from fashion_vl.models.checkpoint import CheckpointMismatchError

    ours, _ = convert_lavis_state_dict(to_lavis(tiny_blip2().state_dict()))
    timm_eva_state_dict(ours)
    key = "vision_model.encoder.layers.0.self_attn.qkv.bias"
    ours[key] = ours[key] + 1
    with pytest.raises(CheckpointMismatchError, match="non-zero key bias"):
        timm_eva_state_dict(ours, source="x.ckpt")


def test_state_dict_is_found_in_the_usual_wrappers() -> None:
    sd = {"a": torch.zeros(1)}
    for payload in (
        sd,
        {"state_dict": sd, "epoch": 1},
        {"model": sd, "config": {"x": 1}},
        {"epoch": 1, "Net": sd},
    ):
        assert extract_state_dict(payload) == sd
    with pytest.raises(CheckpointLoadError, match="no single state dict"):
        extract_state_dict({"a": sd, "b": sd})


def test_lavis_output_initialises_our_unifashion_qformer(tmp_path) -> None:
    """The converter's contract, end to end: its output is what `model.qformer.init_from` reads."""
    from fashion_vl.models.unifashion import build_qformer

    reference = tiny_blip2()
    lavis = {k: v for k, v in to_lavis(reference.state_dict()).items() if not k.startswith("visual_encoder.")}
    extras = {"temp": torch.tensor(0.05), "prompt_tokens": torch.randn(1, 4, 32),
              "llm_proj.weight": torch.randn(64, 32), "llm_proj.bias": torch.randn(64)}  # fmt: skip
    torch.save({**lavis, **itg_head(lavis), **extras}, tmp_path / "lavis.pth")
    assert main(["lavis", str(tmp_path / "lavis.pth"), str(tmp_path / "out.ckpt")]) == 0
    qformer = build_qformer(
        pretrained=False, num_query_tokens=4, embed_dim=16, bos_token_id=99, num_prompt_tokens=4,
        llm_hidden_size=64, init_from=str(tmp_path / "out.ckpt"), vocab_size=100, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
        cross_attention_frequency=2, encoder_hidden_size=32,
    )  # fmt: skip
    ours = qformer.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("vision_model.")}
    expected |= {"ln_vision.weight": reference.state_dict()["vision_model.post_layernorm.weight"]} | extras
    for key, value in expected.items():
        assert torch.equal(ours[key].reshape(value.shape), value), key
