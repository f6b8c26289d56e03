"""Generated/edited image metrics: FID/KID with a local extractor, offline errors, masked PSNR/SSIM,
CLIP-score with a tiny local CLIP, attribute accuracy and the attribute judge."""

from __future__ import annotations

import math
import unittest.mock as mock
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from fashion_vl.data.garment_labels import (
    GARMENT_VOCABS,
    GarmentLabelCollator,
    GarmentLabelDataModule,
    asked_from_texts,
    garment_labels,
)
from fashion_vl.data.products import ProductDataModule
from fashion_vl.data.records import Product, ProductTable
from fashion_vl.data.samplers import SampleKey
from fashion_vl.data.synth.taxonomy import ATTRIBUTE_INDEX, CATEGORIES, COLOURS, PATTERNS
from fashion_vl.data.transforms import resize_crop
from fashion_vl.hub import PretrainedUnavailableError
from fashion_vl.metrics.generation import (
    AttributeAccuracy,
    GenerationCLIPScore,
    GenerationQuality,
    MaskedReconstruction,
    attribute_accuracy,
    build_fid,
    build_kid,
    keep_mask_from_paint_mask,
    masked_psnr,
    masked_ssim,
    resolve_inception_weights,
    to_uint8,
)
from fashion_vl.models.attribute_judge import AttributeJudge

GARMENT_HEADS = {name: len(words) for name, words in GARMENT_VOCABS.items()}


class TinyFeatures(nn.Module):
    """A fixed random conv net: ``uint8 [B,3,H,W]`` -> ``[B, 8]`` (what a local extractor looks like)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images.float() / 255.0)).mean(dim=(2, 3))


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=gen) * 1.6 - 0.8 + shift).clamp(-1, 1)


# ------------------------------------------------------------------------------------------ FID/KID
def test_fid_kid_on_random_images_with_a_local_extractor() -> None:
    real, same, shifted = _images(64, 0), _images(64, 0), _images(64, 1, shift=0.5)
    fid = build_fid(TinyFeatures())
    fid.update(to_uint8(real), real=True)
    fid.update(to_uint8(same), real=False)
    assert abs(float(fid.compute())) < 1e-4  # identical sets
    fid.reset()
    fid.update(to_uint8(real), real=True)
    fid.update(to_uint8(shifted), real=False)
    far = float(fid.compute())
    assert far > 1e-3

    kid = build_kid(TinyFeatures(), subsets=5, subset_size=32)
    kid.update(to_uint8(real), real=True)
    kid.update(to_uint8(shifted), real=False)
    assert float(kid.compute()[0]) > 0


def test_generation_quality_converts_ranges_and_orders_sets() -> None:
    metric = GenerationQuality(TinyFeatures(), kid_subsets=4, kid_subset_size=16)
    real = _images(32, 0)
    metric.update(real, real=True)  # floats in [-1, 1]
    metric.update(to_uint8(_images(32, 2)), real=False)  # uint8: the same distribution
    near = metric.compute()
    metric.reset()
    metric.update(real, real=True)
    metric.update(_images(32, 3, shift=0.6), real=False)
    far = metric.compute()
    assert set(near) == {"fid", "kid_mean", "kid_std"}
    assert float(far["fid"]) > float(near["fid"])
    assert float(far["kid_mean"]) > float(near["kid_mean"])


def test_inception_weights_offline_errors_name_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PretrainedUnavailableError) as err:
        build_fid(2048, config_key="eval.inception_weights")
    assert "eval.inception_weights=/path/to/weights-inception-2015-12-05" in str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"eval\.inception_weights: no Inception weight file"):
        build_kid(2048, weights_path=str(tmp_path / "missing.pth"), config_key="eval.inception_weights")
    cached = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_inception_weights(None) == str(cached)


# ------------------------------------------------------------------------------- masked PSNR / SSIM
def _pair_and_mask() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = _images(2, 5, 0.0)
    paint = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    paint[:, :, 4:12, 4:12] = True
    return target, paint, keep_mask_from_paint_mask(paint)


def test_masked_psnr_ssim_identical_and_inside_mask_changes_are_perfect() -> None:
    target, paint, keep = _pair_and_mask()
    assert math.isinf(float(masked_psnr(target, target, keep)))
    assert float(masked_ssim(target, target, keep)) == pytest.approx(1.0, abs=1e-6)
    edited = torch.where(paint, -target, target)  # changes only where painting is allowed
    assert math.isinf(float(masked_psnr(edited, target, keep)))
    assert float(masked_ssim(edited, target, keep)) == pytest.approx(1.0, abs=1e-6)
    # ... while the whole-image scores do see the change
    assert float(masked_psnr(edited, target, torch.ones_like(keep))) < 30


def test_masked_psnr_known_noise_and_outside_changes() -> None:
    target, _, keep = _pair_and_mask()
    target = target.clamp(-0.85, 0.85)  # room for the noise: nothing gets clamped
    kept = keep.expand_as(target)
    # +-0.1 on [-1, 1] = +-0.05 on [0, 1] at every kept pixel: MSE 0.0025, PSNR = 10 log10(400);
    # the painted area is zeroed, which must not count
    signs = torch.where(torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    noisy = torch.where(kept, target + 0.1 * signs, torch.zeros_like(target))
    per_image = masked_psnr(noisy, target, keep, reduction="none")
    assert per_image.shape == (2,)
    assert torch.allclose(per_image, torch.full((2,), 10 * math.log10(400)), atol=1e-3)
    assert float(masked_ssim(noisy, target, keep)) < 0.999
    # uint8 inputs: one grey level off everywhere kept -> 20 log10(255)
    a = to_uint8(target)
    b = a.clone()
    b[kept] += 1
    assert float(masked_psnr(b, a, keep)) == pytest.approx(20 * math.log10(255), abs=1e-3)


def test_masked_reconstruction_metric_averages_images() -> None:
    target, paint, keep = _pair_and_mask()
    metric = MaskedReconstruction()
    metric.update(torch.where(paint, -target, target), target, keep)
    out = metric.compute()
    assert math.isinf(float(out["psnr"])) and float(out["ssim"]) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------- CLIP-score
def _tiny_clip_folder(path: Path) -> Path:
    """A random-init CLIP (and a byte-level BPE tokenizer without merges) saved like a hub copy."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_clip_score_from_a_local_folder(tmp_path: Path) -> None:
    folder = _tiny_clip_folder(tmp_path / "tiny-clip")
    metric = GenerationCLIPScore(str(folder))
    images = _images(3, 0)  # floats in [-1, 1]
    metric.update(images, ["a red dress", "a navy shirt", "a striped skirt"])
    score = float(metric.compute())
    assert 0.0 <= score <= 100.0

    # the score is 100 * cos(image, text), clamped at 0, averaged: check against the model by hand
    from fashion_vl.metrics.generation import load_clip

    model, processor = load_clip(str(folder))
    with torch.no_grad():
        img = model.get_image_features(
            processor(images=list(to_uint8(images)), return_tensors="pt")["pixel_values"]
        )
        enc = processor(
            text=["a red dress", "a navy shirt", "a striped skirt"], return_tensors="pt", padding=True
        )
        txt = model.get_text_features(enc["input_ids"], enc["attention_mask"])
    expected = (100 * torch.nn.functional.cosine_similarity(img, txt)).mean().clamp(min=0)
    assert score == pytest.approx(float(expected), abs=1e-3)


def test_clip_offline_error_names_the_key(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match=r"eval\.clip_model=/path/to/no-such-clip"):
        GenerationCLIPScore("nobody/no-such-clip", config_key="eval.clip_model")
    with pytest.raises(FileNotFoundError, match=r"eval\.clip_model"):
        GenerationCLIPScore("/nonexistent/dir/clip", config_key="eval.clip_model")


# ------------------------------------------------------------------------------ attribute accuracy
def test_attribute_accuracy_counts_hand_made_logits() -> None:
    logits = {
        "colour": torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]]),  # predicts 0 1 2 0
        "pattern": torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]]),  # predicts 0 0 1 1
    }
    asked = {"colour": torch.tensor([0, 1, 1, -1]), "pattern": torch.tensor([0, 1, 1, 1])}
    metric = AttributeAccuracy(("colour", "pattern", "category"))
    metric.update(logits, asked)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["colour_acc"] == pytest.approx(200 / 3)  # 2 of the 3 asked
    assert out["pattern_acc"] == pytest.approx(75.0)
    assert math.isnan(out["category_acc"])  # never asked
    assert out["acc"] == pytest.approx((200 / 3 + 75) / 2)
    assert out["all_acc"] == pytest.approx(50.0)  # images 0 and 3 have every asked attribute right
    metric.update(logits, {"colour": torch.tensor([0, 1, 2, 0])})  # accumulates
    assert float(metric.compute()["colour_acc"]) == pytest.approx(100 * 6 / 7)
    with pytest.raises(KeyError):
        metric.update(logits, {"sleeve": torch.tensor([0, 0, 0, 0])})


def test_attribute_judge_shapes_and_attribute_accuracy() -> None:
    judge = AttributeJudge(
        "resnet10t", heads=GARMENT_HEADS, image_size=32, channels=[8, 16, 16, 32], stem_width=8
    )
    images = _images(5, 0)  # 16 px, [-1, 1]: preprocess resizes to 32 and normalises
    x = judge.preprocess(images)
    assert x.shape == (5, 3, 32, 32)
    out = judge(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "colour": (5, len(COLOURS)), "category": (5, len(CATEGORIES)), "pattern": (5, len(PATTERNS))
    }  # fmt: skip
    # the judge's own predictions, asked back, score 100%
    judge.eval()
    with torch.no_grad():
        asked = {k: v.argmax(-1) for k, v in judge(judge.preprocess(images)).items()}
    scores = attribute_accuracy(judge, images, asked, batch_size=2)
    assert (
        scores["colour_acc"] == scores["category_acc"] == scores["pattern_acc"] == scores["all_acc"] == 100.0
    )


def test_garment_labels_from_records_and_prompts() -> None:
    attrs = [
        ATTRIBUTE_INDEX["navy"],
        ATTRIBUTE_INDEX["cotton"],
        ATTRIBUTE_INDEX["striped"],
        ATTRIBUTE_INDEX["t-shirt"],
    ]
    labels = garment_labels(attrs, CATEGORIES.index("TOPS"))
    assert labels == {
        "colour": list(COLOURS).index("navy"),
        "category": 0,
        "pattern": PATTERNS.index("striped"),
    }
    assert garment_labels([ATTRIBUTE_INDEX["red"]], 99)["pattern"] == PATTERNS.index("solid")
    assert garment_labels([], 99) == {"colour": -1, "category": -1, "pattern": -1}
    asked = asked_from_texts(["Striped navy cotton t-shirt", "Red wool coat", "something else"])
    assert asked["colour"].tolist() == [list(COLOURS).index("navy"), list(COLOURS).index("red"), -1]
    assert asked["category"].tolist() == [CATEGORIES.index("TOPS"), CATEGORIES.index("JACKETS & COATS"), -1]
    assert asked["pattern"].tolist() == [PATTERNS.index("striped"), 0, 0]
    batch = GarmentLabelCollator()(
        [
            {"image": torch.zeros(3, 4, 4), "labels": labels, "bad_images": []},
            {"images": [torch.ones(3, 4, 4)] * 2, "labels": garment_labels([], 1), "bad_images": ["x"]},
        ]
    )
    assert batch["image"].shape == (3, 3, 4, 4)
    assert batch["category"].tolist() == [0, 1, 1] and batch["colour"].tolist()[1:] == [-1, -1]
    assert set(GARMENT_VOCABS) == {"colour", "category", "pattern"}


def test_judge_config_heads_are_the_taxonomys_vocabularies() -> None:
    """The judge's heads come from its config (model/attribute_judge.yaml), not from the synthetic
    taxonomy imported by the model; they must agree with the labels the judge's data gives."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "attribute_judge.yaml")
    assert dict(config.heads) == GARMENT_HEADS
    with pytest.raises(ValueError, match=r"model\.heads"):
        AttributeJudge("resnet10t")


@pytest.mark.parametrize("module", ["garments", "products"])
@pytest.mark.parametrize("first_only", [False, True])
def test_train_first_image(tmp_path: Path, first_only: bool, module: str) -> None:
    """``train_first_image`` trains on every product's first image only, in the attribute judge's
    DataModule and in the image-text one the generation demo trains on; the source's table is kept."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # image i of every product is colour i
    for i, c in enumerate(colours):
        Image.new("RGB", (8, 8), c).save(tmp_path / f"{i}.png")
    images = tuple(f"{i}.png" for i in range(len(colours)))
    table = ProductTable("FashionGen", "train", tmp_path, tmp_path / "train.json")
    table.products = [Product(p, images, "Red wool coat") for p in range(4)]
    source = mock.Mock(read=mock.Mock(return_value=table))
    transform = resize_crop(train=False, size=4, resize=4)
    common = {"train_first_image": first_only, "train_transform": transform, "eval_transform": transform}
    if module == "garments":
        dm = GarmentLabelDataModule(train_source=source, **common)
    else:
        dm = ProductDataModule(train_sources={"fashiongen": source}, tokenizer="unused", **common)
    dm.setup("fit")
    drawn = {int(dm.train_set[SampleKey(k % 4, k)]["image"][:, 0, 0].argmax()) for k in range(40)}
    assert drawn == ({0} if first_only else {0, 1, 2})
    assert all(p.images == images for p in table.products)


def _random_inception_file(path: Path) -> Path:
    """torch-fidelity's Inception at its random init, saved like the real weight file."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with (  # the constructor downloads and loads the real weights: stand both in
        mock.patch.object(fe, "load_state_dict_from_url", return_value={}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    torch.save(net.state_dict(), path)
    return path


def test_inception_path_with_a_local_weight_file(tmp_path: Path) -> None:
    """The int-feature path end to end offline, weights read from the given file."""
    weights = _random_inception_file(tmp_path / "inception.pth")
    metric = GenerationQuality(64, weights_path=str(weights), kid_subsets=2, kid_subset_size=4)
    metric.update(_images(6, 0), real=True)
    metric.update(_images(6, 1, shift=0.5), real=False)
    out = metric.compute()
    assert math.isfinite(float(out["fid"])) and math.isfinite(float(out["kid_mean"]))


def test_demo_attribute_judge_trains_and_loads(tmp_path: Path, synth_dir: Path) -> None:
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from fashion_vl.cli.train import train
    from fashion_vl.models.attribute_judge import load_attribute_judge
    from tests.conftest import TINY_TRAIN, compose_config

    overrides = [o for o in TINY_TRAIN if not o.startswith(("experiment=", "data.max_text_length"))]
    cfg = compose_config("train", ["experiment=demo_attribute_judge", *overrides], tmp_path, synth_dir)
    with open_dict(cfg):
        cfg.trainer.max_steps = 2
        cfg.trainer.val_check_interval = 2
        cfg.trainer.limit_val_batches = 1
        cfg.data.num_workers = 0
        cfg.callbacks.checkpoint_last.every_n_train_steps = 2
    try:
        metrics, _ = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert {"train/loss", "val/colour_acc", "val/category_acc", "val/pattern_acc", "val/acc"} <= set(metrics)
    judge = load_attribute_judge(tmp_path / "checkpoints" / "last.ckpt")
    assert judge.image_size == 56 and not judge.training
    scores = attribute_accuracy(judge, _images(4, 0), asked_from_texts(["red wool coat"] * 4))
    assert 0.0 <= scores["colour_acc"] <= 100.0


def test_demo_generation_chance_is_the_best_constant_answer(synth_dir: Path, monkeypatch) -> None:
    """scripts/demo_generation.py compares generated attributes with the best constant answer over the
    judged products' texts."""
    import importlib.util
    from collections import Counter

    from fashion_vl.data.formats import FashionGenSource
    from fashion_vl.data.garment_labels import asked_from_texts

    path = Path(__file__).resolve().parents[1] / "scripts" / "demo_generation.py"
    monkeypatch.syspath_prepend(str(path.parent))  # the script imports its sibling demo_runs
    spec = importlib.util.spec_from_file_location("demo_generation", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    chance = script.constant_guess(synth_dir, 6)
    texts = [p.text for p in FashionGenSource(synth_dir, "val").read().products][:6]
    colours = [int(c) for c in asked_from_texts(texts)["colour"]]
    assert chance["colour"] == pytest.approx(100 * Counter(colours).most_common(1)[0][1] / 6)
    assert all(0 < v <= 100 for v in chance.values())
