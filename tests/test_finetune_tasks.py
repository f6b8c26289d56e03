"""Fine-tuning tasks: composed retrieval metric and data, outfit data, CSA-Net, classification."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from fashion_vl.data.composed import (
    edit_text,
    fashion200k_eval_items,
    fashioniq_eval_items,
    fashioniq_pairs,
    join_captions,
    one_word_edits,
)
from fashion_vl.data.formats import Fashion200kSource, read_ocir, read_polyvore_metadata
from fashion_vl.data.outfits import OutfitEvalDataset, OutfitPairDataset, collate_outfits
from fashion_vl.data.products import ProductDataModule
from fashion_vl.data.samplers import SampleKey
from fashion_vl.data.transforms import resize_crop
from fashion_vl.lit.classification import ClassificationModule
from fashion_vl.metrics.composed import ComposedGalleryRecall, chance_group_recall
from fashion_vl.models.csanet import CSANet
from fashion_vl.models.heads import ClassificationHead
from tests.test_models import tiny_fashionvil

T = resize_crop(train=False, size=32, resize=36)


def test_fashioniq_metric_per_category_with_fake_gallery_entries() -> None:
    metric = ComposedGalleryRecall(ks=(1, 2), group_names={0: "dress", 1: "shirt"})
    # dress gallery: targets 10, 11, 12 (12 only through a fake entry); shirt gallery: 20, 21
    gallery = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [1.0, 0], [0, 1.0]])
    metric.update_gallery(
        gallery,
        torch.tensor([10, 11, 12, 20, 21]),
        torch.tensor([10, 11, 12, 20, 21]),
        torch.tensor([0, 0, 0, 1, 1]),
    )
    metric.update_gallery(
        gallery[:1], torch.tensor([10]), torch.tensor([10]), torch.tensor([0])
    )  # duplicate target id
    queries = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]])
    # dress q0 -> target 11 (rank 2 behind 10); dress q1 -> target 10 (rank 1); shirt q2 -> 21 (rank 1;
    # the dress item 12 scores as high but belongs to another category and is not ranked)
    metric.update_queries(queries, torch.tensor([11, 10, 21]), torch.tensor([0, 0, 1]))
    out = metric.compute()
    assert out["dress_r@1"] == 50.0 and out["dress_r@2"] == 100.0 and out["shirt_r@1"] == 100.0
    assert out["mean_r@1"] == 75.0 and out["avg"] == pytest.approx((50 + 100 + 100 + 100) / 4)


def test_fashion200k_metric_never_ranks_the_query_image() -> None:
    metric = ComposedGalleryRecall(ks=(1,))
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.2]])
    metric.update_gallery(gallery, torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([0, 0]))
    # the query's own image (key 0) scores highest; excluded, the target (title 6) is first
    metric.update_queries(torch.tensor([[1.0, 0.0]]), torch.tensor([6]), torch.tensor([0]), torch.tensor([0]))
    assert metric.compute()["r@1"] == 100.0
    metric.reset()
    metric.update_gallery(gallery, torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([0, 0]))
    metric.update_queries(torch.tensor([[1.0, 0.0]]), torch.tensor([6]), torch.tensor([0]))
    assert metric.compute()["r@1"] == 0.0


def test_chance_recall_is_k_over_each_groups_distinct_gallery_averaged() -> None:
    # group 0: keys {1, 2, 3, 4} (key 2 twice: counted once); group 1: 20 keys
    gallery = [(0, 1), (0, 2), (0, 2), (0, 3), (0, 4)] + [(1, k) for k in range(20)]
    assert chance_group_recall(gallery, 2) == pytest.approx((50.0 + 10.0) / 2)
    assert chance_group_recall(gallery, 10) == pytest.approx((100.0 + 50.0) / 2)  # capped at 100
    with pytest.raises(ValueError, match="empty"):
        chance_group_recall([], 10)


def test_ocir_recall_is_class_balanced() -> None:
    metric = ComposedGalleryRecall(ks=(1,), class_balanced=True)
    gallery = torch.eye(4)
    metric.update_gallery(gallery, torch.arange(4), torch.arange(4), torch.tensor([0, 0, 1, 1]))
    # category 0 has 3 queries (1 hit), category 1 has 1 query (1 hit): (1/3 + 1) / 2
    queries = torch.stack([gallery[0], gallery[0], gallery[0], gallery[2]])
    metric.update_queries(queries, torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 0, 1]))
    assert metric.compute()["r@1"] == pytest.approx(100 * (1 / 3 + 1) / 2)


def test_one_word_edits() -> None:
    titles = ["black sleeveless dress", "red sleeveless dress", "red long-sleeve dress", "blue jeans"]
    edits = one_word_edits(titles)
    assert (
        (0, 1, "black", "red") in edits
        and (1, 0, "red", "black") in edits
        and (1, 2, "sleeveless", "long-sleeve") in edits
    )
    assert not any({a, b} == {0, 2} for a, b, _, _ in edits)  # two words differ
    assert edit_text("black", "red") == "replace black with red"


def test_fashioniq_items(fixture_data: Path) -> None:
    pairs = fashioniq_pairs(fixture_data, ["dress"])
    assert (
        pairs[0].text
        == "is darker and shorter, has no sleeves"
        == join_captions(["is darker and shorter", " has no sleeves"])
    )
    items = fashioniq_eval_items(fixture_data, ["dress"])
    assert items[0].query is not None and items[0].query.positive == 4031 and items[0].gallery.key == 4031
    assert items[1].query is None and items[1].gallery.key == 4032  # fake entry: gallery only


def test_fashion200k_items(fixture_data: Path) -> None:
    table = Fashion200kSource(fixture_data, "train").read()  # "black/blue sleeveless a-line dress"
    items = fashion200k_eval_items(table)
    gallery = [i.gallery for i in items if i.gallery]
    queries = [i.query for i in items if i.query]
    assert len(gallery) == 3 and len(queries) == 2
    assert queries[0].text == "replace black with blue" and queries[0].exclude == 0
    assert queries[0].positive == gallery[1].positive == gallery[2].positive  # both images of the target


def test_outfit_pairs_are_distinct_and_redrawn(synth_dir: Path) -> None:
    categories = read_polyvore_metadata(synth_dir)
    outfits = read_ocir(synth_dir, "disjoint", "train")
    ds = OutfitPairDataset(outfits, synth_dir / "PolyvoreOutfits" / "images", categories, T)
    pairs = set()
    for seed in range(30):
        sample = ds[SampleKey(0, seed)]
        assert sample["blank_id"] in (*outfits[0].question, outfits[0].blank)
        pairs.add((sample["question_category"], sample["blank_id"]))
        assert not torch.equal(sample["question_image"], sample["blank_image"])
    assert len(pairs) > 1  # a new pair each epoch (seed), not one fixed at load time
    batch = collate_outfits([ds[SampleKey(i, i)] for i in range(4)])
    assert batch["question_image"].shape == (4, 3, 32, 32)
    eval_ds = OutfitEvalDataset(
        read_ocir(synth_dir, "disjoint", "test"), synth_dir / "PolyvoreOutfits" / "images", categories, T
    )
    ebatch = collate_outfits([eval_ds[i] for i in range(3)])
    assert ebatch["question_entry"].max() == 2 and ebatch["blank_image"].shape[0] == 3


def test_csanet_freezes_last_stage_and_batchnorm_and_starts_from_fashionvil(tmp_path: Path) -> None:
    fashionvil = tiny_fashionvil()
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in fashionvil.state_dict().items()}}, tmp_path / "ft.ckpt"
    )
    kwargs = dict(name="resnet10t", output_stride=16, channels=(8, 16, 32, 64), stem_width=8, feature_dim=16)
    net = CSANet(init_from=str(tmp_path / "ft.ckpt"), **kwargs)
    trunk = fashionvil.image_encoder.trunk.state_dict()
    assert all(torch.equal(v, trunk[k]) for k, v in net.trunk.state_dict().items())
    assert not any(p.requires_grad for p in net.trunk.layer4.parameters())
    assert any(p.requires_grad for p in net.trunk.layer1.parameters())
    net.train()
    bns = [m for m in net.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    images = torch.randn(3, 3, 112, 112)
    q = net.embed_question(images, torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]))
    assert q.shape == (3, 16) and torch.allclose(q.norm(dim=1), torch.full((3,), 4.0), atol=1e-5)
    with pytest.raises(ValueError, match="no submodule 'stage9'"):
        CSANet(frozen_stages=("stage9",), **kwargs)


def test_classification_head_is_the_networks_sized_by_data_num_classes() -> None:
    net = tiny_fashionvil(heads={"classification": functools.partial(ClassificationHead, num_classes=48)})
    module = ClassificationModule(net, optimizer=None)
    assert net.heads["classification"].classifier.out_features == 48
    assert "net.heads.classification.classifier.weight" in module.state_dict()  # the network's weight
    logits = module.logits(torch.randn(2, 3, 64, 64), torch.randint(5, 100, (2, 6)), torch.ones(2, 6))
    assert logits.shape == (2, 48)
    with pytest.raises(ValueError, match=r"lit\.head: the network has no head 'classification'"):
        ClassificationModule(tiny_fashionvil(), optimizer=None)
    # data.num_classes must be the size of data.label's space in FashionGen
    common = {"tokenizer": "none", "train_transform": T, "eval_transform": T}
    assert ProductDataModule(label="category", num_classes=48, **common).num_classes == 48
    with pytest.raises(ValueError, match=r"data\.num_classes=121, but FashionGen has 48 category"):
        ProductDataModule(label="category", num_classes=121, **common)
    with pytest.raises(ValueError, match=r"data\.label"):
        ProductDataModule(label="colour", **common)
