"""``fashion_vl.load``: every source kind gives the embeddings the LightningModule's evaluation computes
on the same inputs; ``save_pretrained`` -> ``from_pretrained`` is bit-identical; errors are one line.

The reference side of every comparison is the evaluation path itself: the DataModule's test loader
(its image reading, eval transform and tokenizer) and the LightningModule's ``test_step``, whose metric
keeps the embeddings it computed. The inference side gets the same raw inputs (image files, texts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import fashion_vl
from fashion_vl.build import resolved_config
from fashion_vl.cli.convert import main as fvl_convert
from fashion_vl.cli.export import main as fvl_export
from fashion_vl.data.images import ImageLoadError, resolve_image
from fashion_vl.hub import PretrainedUnavailableError
from fashion_vl.inference import Embedder, MissingConfigError, UnsupportedCapability
from fashion_vl.models.checkpoint import CheckpointMismatchError
from tests.conftest import TINY_TRAIN, compose_config
from tests.test_convert import RESNET, perturb, to_lavis, to_mmf

FAST = ["data.num_workers=0", "data.eval_batch_size=4", "data_check=false", "print_config=false"]


# ---------------------------------------------------------------------------------------------------
# helpers: checkpoints and the evaluation path


def lightning_like_checkpoint(
    tmp: Path, data_dir: Path, overrides: list[str], seed: int = 0, perturbed: str = ""
):
    """(config, LightningModule with every tensor (of its submodule ``perturbed``) moved off its initial
    value, the path of a checkpoint holding its state dict and resolved config as fvl-train writes them)."""
    cfg = compose_config("train", [*overrides, *FAST], tmp, data_dir)
    config = resolved_config(cfg)
    GlobalHydra.instance().clear()
    torch.manual_seed(seed)
    lit = instantiate(cfg.lit, net=instantiate(cfg.model, _convert_="all"), _convert_="partial").eval()
    perturb(lit.get_submodule(perturbed), seed + 1)
    path = tmp / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": lit.state_dict(), "fvl_config": config, "global_step": 3}, path)
    return cfg, lit, path


def first_test_batch(cfg):
    """The DataModule of ``cfg`` (its test split) and its first test batch, as fvl-eval reads it."""
    data = instantiate(cfg.data, _convert_="partial")
    data.setup("test")
    return data, next(iter(data.test_dataloader()))


def evaluated(lit, batch):
    """The LightningModule's test step on ``batch``; its metric (which keeps the embeddings)."""
    lit.on_test_epoch_start()
    with torch.no_grad():
        lit.test_step(batch, 0)
    return lit.test_recall


def gallery_inputs(data, batch_products: int):
    """Image files and texts of the first products of a product gallery, in the loader's order."""
    table = data.test_set.table
    products = table.products[:batch_products]
    return [resolve_image(table.image_dir, n) for p in products for n in p.images], [p.text for p in products]


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert torch.equal(a, b), (a - b).abs().max()


@pytest.fixture(scope="module")
def itc_run(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> Path:
    """A real fvl-train run (one step of the tiny retrieval experiment): its last.ckpt."""
    from fashion_vl.cli.train import train

    out = tmp_path_factory.mktemp("itc_run")
    overrides = [*TINY_TRAIN, "trainer.max_steps=1", "++trainer.limit_val_batches=0", "data_check=false"]
    cfg = compose_config("train", overrides, out, synth_dir)
    train(cfg)
    GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def itc_model(itc_run: Path) -> Embedder:
    return fashion_vl.load(itc_run, device="cpu")


# ---------------------------------------------------------------------------------------------------
# source kinds


def test_lightning_checkpoint_embeds_as_the_evaluation_does(itc_run: Path, itc_model: Embedder) -> None:
    ckpt = torch.load(itc_run, map_location="cpu", weights_only=True)
    # fvl-eval: build from the config, load the checkpoint's state dict, run the test step
    lit = instantiate(
        ckpt["fvl_config"]["lit"], net=instantiate(ckpt["fvl_config"]["model"], _convert_="all")
    )
    lit.load_state_dict(ckpt["state_dict"])
    lit.eval()
    for key, value in itc_model.net.state_dict().items():
        same(value, ckpt["state_dict"][f"net.{key}"])
    data, batch = first_test_batch(OmegaConf.create(ckpt["fvl_config"]))
    metric = evaluated(lit, batch)
    images, texts = gallery_inputs(data, len(batch["product_id"]))
    expected_images = F.normalize(metric.image_emb[0], dim=-1)
    expected_texts = F.normalize(metric.text_emb[0], dim=-1)
    same(itc_model.encode_images(images, batch_size=len(images)), expected_images)
    same(itc_model.encode_texts(texts, batch_size=len(texts)), expected_texts)
    # the other input kinds: PIL images and uint8 tensors decode to the same pixels
    pil = [Image.open(p) for p in images]
    same(itc_model.encode_images(pil, batch_size=len(images)), expected_images)
    arrays = itc_model.encode_images(images, batch_size=len(images), to_numpy=True)
    assert arrays.dtype == "float32" and torch.equal(torch.from_numpy(arrays), expected_images)
    assert itc_model.capabilities == {"image", "text"} and itc_model.vectors_per_image == 1
    same(itc_model.image_query(images, batch_size=len(images)), expected_images)


def test_converted_mmf_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    overrides = ["experiment=demo_finetune_retrieval", *RESNET]
    cfg, lit, _ = lightning_like_checkpoint(tmp_path, synth_dir, overrides)
    source = tmp_path / "fashionvil_contrastive.pth"
    torch.save(to_mmf(lit.state_dict()), source)
    converted = tmp_path / "converted.ckpt"
    assert fvl_convert(["mmf", str(source), str(converted), "--task", "contrastive"]) == 0

    with pytest.raises(MissingConfigError, match="experiment='finetune_retrieval_fashiongen'") as err:
        fashion_vl.load(converted)
    assert "\n" not in str(err.value)
    model = fashion_vl.load(
        converted, experiment="demo_finetune_retrieval", overrides=[*RESNET, f"paths.data_dir={synth_dir}"]
    )
    assert model.metadata["source_kind"] == "converted-mmf"
    data, batch = first_test_batch(cfg)
    metric = evaluated(lit, batch)
    images, texts = gallery_inputs(data, len(batch["product_id"]))
    same(model.encode_images(images, batch_size=len(images)), F.normalize(metric.image_emb[0], dim=-1))
    same(model.encode_texts(texts), F.normalize(metric.text_emb[0], dim=-1))


def _lavis_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our UniFashion Q-Former's tensors (transformers' BLIP-2 names + UniFashion's extras) under the
    names of a LAVIS / UniFashion checkpoint."""
    qformer = {k.removeprefix("net.qformer."): v for k, v in state.items() if k.startswith("net.qformer.")}
    hf = {
        k: v
        for k, v in qformer.items()
        if not k.startswith(("ln_vision.", "temp", "itg_head.", "prompt_tokens"))
    }
    lavis = to_lavis(hf)
    lavis.pop("Qformer.bert.embeddings.position_ids")
    lavis |= {f"ln_vision.{k}": qformer[f"ln_vision.{k}"] for k in ("weight", "bias")}
    lavis["temp"] = qformer["temp"]
    for key, value in qformer.items():
        if key.startswith("itg_head.transform."):
            lavis["Qformer.cls.predictions." + key.removeprefix("itg_head.")] = value
    lavis["Qformer.cls.predictions.bias"] = qformer["itg_head.bias"]
    lavis["Qformer.cls.predictions.decoder.bias"] = qformer["itg_head.bias"]
    lavis["Qformer.cls.predictions.decoder.weight"] = qformer["embeddings.word_embeddings.weight"]
    return lavis


def test_converted_lavis_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    overrides = ["experiment=demo_unifashion_phase1", "model.llm=null", "model.qformer.llm_hidden_size=null",
                 "lit.task_weights.caption=0", "image_size=56"]  # fmt: skip
    _, original, _ = lightning_like_checkpoint(tmp_path, synth_dir, overrides)
    source = tmp_path / "unifashion.pth"
    torch.save({"epoch": 1, "Blip2Qformer": _lavis_names(original.state_dict())}, source)
    converted = tmp_path / "converted.ckpt"
    assert fvl_convert(["lavis", str(source), str(converted)]) == 0
    model = fashion_vl.load(
        converted,
        experiment="demo_unifashion_phase1",
        overrides=[*overrides[1:], f"paths.data_dir={synth_dir}"],
    )
    assert model.metadata["source_kind"] == "converted-lavis" and model.vectors_per_image == 8

    # the training path for such a checkpoint: model.qformer.init_from=<it>, seeded, then built
    from lightning import seed_everything

    trained = compose_config(
        "train", [*overrides, *FAST, f"model.qformer.init_from={converted}"], tmp_path, synth_dir
    )
    GlobalHydra.instance().clear()
    seed_everything(trained.seed)
    lit = instantiate(
        trained.lit, net=instantiate(trained.model, _convert_="all"), _convert_="partial"
    ).eval()
    data, batch = first_test_batch(trained)
    metric = evaluated(lit, batch)
    images, texts = gallery_inputs(data, len(batch["product_id"]))
    same(model.encode_images(images, batch_size=len(images)), metric.image_emb[0])
    same(model.encode_texts(texts), metric.text_emb[0])
    # and the Q-Former is the original's, tensor for tensor
    same(model.encode_texts(texts), evaluated(original, batch).text_emb[0])


def test_composition_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg, lit, path = lightning_like_checkpoint(
        tmp_path, synth_dir, ["experiment=demo_finetune_composed_fashioniq"]
    )
    model = fashion_vl.load(path)
    assert model.capabilities == {"image", "text", "composed"}
    data, batch = first_test_batch(cfg)
    metric = evaluated(lit, batch)
    items = data.eval_set.items[:4]  # the first test batch (data.eval_batch_size=4)
    queries = [i.query for i in items if i.query is not None]
    gallery = [i.gallery for i in items if i.gallery is not None]
    composed = model.encode_composed(
        [resolve_image(*q.reference) for q in queries], [q.text for q in queries]
    )
    same(composed, F.normalize(metric.query_emb[0], dim=-1))
    targets = model.encode_images([resolve_image(*g.image) for g in gallery])
    same(targets, F.normalize(metric.gallery_emb[0], dim=-1))


def test_classification_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg, lit, path = lightning_like_checkpoint(
        tmp_path, synth_dir, ["experiment=demo_finetune_classification"]
    )
    model = fashion_vl.load(path)
    assert "classify" in model.capabilities and "composed" not in model.capabilities
    data, batch = first_test_batch(cfg)
    images, texts = gallery_inputs(data, len(batch["product_id"]))
    rows = batch["image_text_index"]
    with torch.no_grad():
        logits = lit.logits(batch["image"], batch["input_ids"][rows], batch["attention_mask"][rows])
    probabilities = model.classify(images, [texts[int(i)] for i in rows], batch_size=len(images))
    same(probabilities, logits.softmax(dim=-1))


def test_outfit_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg, lit, path = lightning_like_checkpoint(tmp_path, synth_dir, ["experiment=demo_finetune_outfit"])
    model = fashion_vl.load(path)
    assert model.capabilities == {"image", "outfit"}
    with pytest.raises(UnsupportedCapability, match="'text'"):
        model.encode_texts(["a shirt"])
    data, batch = first_test_batch(cfg)
    metric = evaluated(lit, batch)
    entries = data.eval_set.entries[: len(batch["blank_id"])]
    image_dir, categories = data.eval_set.image_dir, data.eval_set.categories
    real = [e for e in entries if not e.fake_data]
    blanks = model.encode_images([image_dir / f"{e.blank}.jpg" for e in entries])
    same(blanks, F.normalize(metric.gallery_emb[0], dim=-1))
    queries = model.encode_outfits(
        [[image_dir / f"{q}.jpg" for q in e.question] for e in real],
        [[categories[q] for q in e.question] for e in real],
        [categories[e.blank] for e in real],
    )
    expected = F.normalize(metric.query_emb[0], dim=-1)
    torch.testing.assert_close(queries, expected, rtol=0, atol=1e-6)  # a mean over items: summation order


def test_unifashion_phase2_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    cfg, lit, path = lightning_like_checkpoint(
        tmp_path, synth_dir, ["experiment=demo_unifashion_phase2", "image_size=56", "lit.rerank_top_k=0"]
    )
    model = fashion_vl.load(path)
    assert model.capabilities == {"image", "text", "composed"} and model.vectors_per_image == 8
    data, batch = first_test_batch(cfg)
    metric = evaluated(lit, batch)
    items = data.eval_set.items[:4]
    queries = [i.query for i in items if i.query is not None]
    gallery = [i.gallery for i in items if i.gallery is not None]
    composed = model.encode_composed(
        [resolve_image(*q.reference) for q in queries], [q.text for q in queries]
    )
    same(composed, metric.query_emb[0])
    same(model.encode_images([resolve_image(*g.image) for g in gallery]), metric.gallery_emb[0])
    query = model.image_query([resolve_image(*g.image) for g in gallery])
    same(query, F.normalize(metric.gallery_emb[0].mean(dim=1), dim=-1))


def test_unifashion_phase1_captions_as_the_evaluation_does(tmp_path: Path, synth_dir: Path) -> None:
    overrides = ["experiment=demo_unifashion_phase1", "image_size=56", "lit.caption_eval.max_new_tokens=6"]
    cfg, lit, path = lightning_like_checkpoint(tmp_path, synth_dir, overrides)
    model = fashion_vl.load(path)
    assert model.capabilities == {"image", "text", "caption"}
    data, batch = first_test_batch(cfg)
    lit.on_test_epoch_start()
    with torch.no_grad():
        lit.test_step(batch, 0)
    products = data.test_set.table.products[: len(batch["product_id"])]
    firsts = [resolve_image(data.test_set.table.image_dir, p.images[0]) for p in products]
    assert model.caption(firsts) == list(lit.test_captions.hypotheses)


@pytest.mark.slow  # ~10 s of CPU building the tiny Stable Diffusion branch; the loader's other paths are fast
def test_unifashion_generation_as_the_evaluation_draws(tmp_path: Path, synth_dir: Path) -> None:
    overrides = ["experiment=demo_unifashion_phase1_diffusion", "image_size=56", "model.llm=null",
                 "model.qformer.llm_hidden_size=null", "lit.task_weights.caption=0"]  # fmt: skip
    cfg, lit, path = lightning_like_checkpoint(tmp_path, synth_dir, overrides)
    model = fashion_vl.load(path)
    assert model.capabilities == {"image", "text", "generate"}
    data, batch = first_test_batch(cfg)
    images, _ = gallery_inputs(data, len(batch["product_id"]))
    texts = ["a red shirt", "blue denim jeans"]
    with torch.no_grad():  # as UniFashionPretrainModule._generate draws
        queries = lit.net.qformer.query_states(lit.net.image_tokens(batch["image"][:2]))
        expected = lit.net.diffusion.sample(
            queries, texts, num_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
        )
    same(model.generate(images[:2], texts, num_steps=2, guidance_scale=2.0, seed=0), expected)


@pytest.mark.slow  # ~10 s of CPU building the tiny editor (UNet, ControlNet, VAE)
def test_unifashion_try_on_as_the_editor_samples(tmp_path: Path, synth_dir: Path) -> None:
    cfg, lit, path = lightning_like_checkpoint(
        tmp_path, synth_dir, ["experiment=demo_unifashion_phase2_tryon"]
    )
    model = fashion_vl.load(path)
    assert model.capabilities == {"try_on"}
    with pytest.raises(UnsupportedCapability, match="'image'"):
        model.encode_images([torch.zeros(3, 8, 8)])
    g = torch.Generator().manual_seed(0)
    batch = {
        "agnostic": torch.rand(2, 3, 64, 48, generator=g) * 2 - 1,
        "agnostic_mask": (torch.rand(2, 1, 64, 48, generator=g) > 0.5).float(),
        "densepose": torch.rand(2, 3, 64, 48, generator=g) * 2 - 1,
        "sketch": (torch.rand(2, 1, 64, 48, generator=g) > 0.9).float(),
        "caption": ["a red cotton shirt", "a blue silk dress"],
    }
    tokens = instantiate(cfg.data, _convert_="partial").text(batch["caption"])  # the try-on DataModule's
    with torch.no_grad():
        expected = lit.net.sample(
            {**batch, **tokens}, num_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
        )
    same(model.try_on(batch, num_steps=2, guidance_scale=2.0, seed=0), ((expected + 1) / 2).clamp(0, 1))


# ---------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained / fvl-export


def test_save_pretrained_round_trips_bit_identically(
    itc_model: Embedder, itc_run: Path, tmp_path: Path, synth_dir: Path
) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "exported"
    itc_model.save_pretrained(folder)
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    saved = json.loads((folder / "config.json").read_text())
    assert saved["data"]["tokenizer"] == "." and saved["data"]["eval_transform"]["_target_"].endswith(
        "resize_crop"
    )
    assert saved["task"] == "retrieval" and saved["hub_weights"] == []
    weights = load_file(folder / "model.safetensors")
    assert set(weights) == {f"net.{k}" for k in itc_model.net.state_dict()}  # weights only
    card = (folder / "README.md").read_text()
    assert "demo_itc" in card and "train/itc_loss" in card and "synthetic data" in card

    loaded = Embedder.from_pretrained(folder)
    assert type(loaded) is type(itc_model) and loaded.capabilities == itc_model.capabilities
    for (_, a), (_, b) in zip(
        itc_model.net.state_dict().items(), loaded.net.state_dict().items(), strict=True
    ):
        same(a, b)
    table = itc_model.config["data"]
    images = sorted((Path(synth_dir) / "FashionGen" / "images").glob("*"))[:5]
    same(loaded.encode_images(images), itc_model.encode_images(images))
    same(
        loaded.encode_texts(["a red silk dress", "grey wool coat"]),
        itc_model.encode_texts(["a red silk dress", "grey wool coat"]),
    )
    assert table["max_text_length"] == loaded.config["data"]["max_text_length"]

    # fvl-export writes the same folder from the checkpoint; a re-export of the folder keeps the weights
    again = tmp_path / "cli"
    assert fvl_export([str(itc_run), str(again)]) == 0
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    re_exported = tmp_path / "re-exported"
    loaded.save_pretrained(re_exported)
    assert (re_exported / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert "train/itc_loss" in (re_exported / "README.md").read_text()


def test_frozen_hub_towers_are_referenced_not_copied(tmp_path: Path, synth_dir: Path) -> None:
    """A frozen LLM loaded by name (here a local folder standing in for a hub id) whose weights the run
    did not change is named in config.json, not copied; loading the folder builds it from that name."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = tmp_path / "tiny-llama"
    sizes = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **sizes)).save_pretrained(llm)
    overrides = ["experiment=demo_unifashion_phase1", "image_size=56", "model.llm.pretrained=true",
                 f"model.llm.name={llm}", "model.llm.lora=null", "lit.caption_eval.max_new_tokens=4"]  # fmt: skip
    _, lit, path = lightning_like_checkpoint(tmp_path, synth_dir, overrides, perturbed="net.qformer")
    model = fashion_vl.load(path)
    assert model.metadata["hub_weights"] == [
        {"config": "model.llm", "name": str(llm), "prefixes": ["net.llm."]}
    ]
    folder = tmp_path / "exported"
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    assert not any(k.startswith("net.llm.") for k in weights) and "net.qformer.query_tokens" in weights
    assert str(llm) in (folder / "README.md").read_text()
    loaded = fashion_vl.load(folder)
    for key, value in lit.net.state_dict().items():
        same(loaded.net.state_dict()[key], value)
    images = sorted((synth_dir / "FashionGen" / "images").glob("*"))[:2]
    assert loaded.caption(images) == model.caption(images)

    # an LLM whose weights differ from the hub's in one tensor is copied
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("net.llm."))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1
    torch.save(ckpt, tmp_path / "changed.ckpt")
    assert fashion_vl.load(tmp_path / "changed.ckpt").metadata["hub_weights"] == []


# ---------------------------------------------------------------------------------------------------
# errors


def test_errors_are_one_clear_line(
    itc_model: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint or folder at .*missing\.ckpt"):
        fashion_vl.load(tmp_path / "missing.ckpt")
    (tmp_path / "exported").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint or folder at exported/model"):
        fashion_vl.load("exported/model")  # a missing folder under a local one, not a hub id
    with pytest.raises(
        PretrainedUnavailableError, match="Cannot load pretrained fashion-vl model 'fashion-vl/nowhere'"
    ):
        fashion_vl.load("fashion-vl/nowhere")  # tests run with HF_HUB_OFFLINE=1
    torch.save({"state_dict": {"net.x": torch.zeros(1)}}, tmp_path / "bare.ckpt")
    with pytest.raises(MissingConfigError, match=r"stores no config .* experiment=") as err:
        fashion_vl.load(tmp_path / "bare.ckpt")
    assert "\n" not in str(err.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        fashion_vl.load(tmp_path / "folder")
    with pytest.raises(
        UnsupportedCapability,
        match=r"last\.ckpt: this model has no 'composed' capability \(it has: image, text\)",
    ) as err:
        itc_model.encode_composed(["a.jpg"], ["is red"])
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: no such file"):
        itc_model.encode_images([tmp_path / "nope.jpg"])
    with pytest.raises(TypeError, match="texts: pass a list"):
        itc_model.encode_texts("one string")


def test_a_checkpoint_of_another_model_is_refused_naming_the_keys(itc_run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(itc_run, map_location="cpu", weights_only=True)
    del ckpt["state_dict"]["net.contrastive_norm.scale"]
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): net.contrastive_norm.scale"):
        fashion_vl.load(tmp_path / "broken.ckpt")


def test_import_fashion_vl_stays_light() -> None:
    code = "import sys, fashion_vl; assert 'torch' not in sys.modules and 'load' in dir(fashion_vl)"
    subprocess.run([sys.executable, "-c", code], check=True)
