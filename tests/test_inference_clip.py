"""``fashion_vl.load`` for CLIP-family models: an open_clip model by name (the tiny random-init
architecture that ships with fashion-vl), a local open_clip folder, and a checkpoint of
``demo_finetune_openclip`` give the embeddings the two-tower evaluation computes on the same inputs;
``save_pretrained`` round-trips; ``fvl-index build`` indexes the synthetic catalogue with one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

import fashion_vl
from fashion_vl.inference import ClipEmbedder
from tests.test_inference import (
    first_test_batch,
    gallery_inputs,
    lightning_like_checkpoint,
    same,
)

TINY = "open_clip:fvl-tiny-clip"
TINY_CONFIG = "pkg://fashion_vl.conf/model/open_clip/fvl-tiny-clip.json"


def two_tower_embeddings(lit, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-tower evaluation's (lit.two_tower.TwoTowerModule) image and text embeddings of a test batch."""
    lit.query_types = ()  # Marqo's label queries need a Trainer; the gallery embeddings do not
    lit.on_test_epoch_start()
    with torch.no_grad():
        lit.test_step(batch, 0)
    metric = lit.test_recall
    return F.normalize(metric.image_emb[0], dim=-1), F.normalize(metric.text_emb[0], dim=-1)


@pytest.fixture(scope="module")
def tiny() -> ClipEmbedder:
    return fashion_vl.load(TINY, device="cpu")


def test_open_clip_name_loads_with_its_own_preprocessing(tiny: ClipEmbedder, tmp_path: Path) -> None:
    from fashion_vl.models.openclip import build_open_clip, open_clip_tokenizer, open_clip_transform

    assert isinstance(tiny, ClipEmbedder) and tiny.capabilities == {"image", "text", "composed"}
    assert tiny.embed_dim == 64 and tiny.vectors_per_image == 1 and tiny.name == TINY
    # the same random init fvl-train builds (seed 0), the same preprocessing as the embedder preset
    torch.manual_seed(0)
    net = build_open_clip("fvl-tiny-clip", model_config=TINY_CONFIG).eval()
    for key, value in net.state_dict().items():
        same(tiny.net.state_dict()[key], value)
    raw = torch.randint(0, 256, (3, 90, 60), dtype=torch.uint8)
    same(tiny.transform(raw), open_clip_transform(False, "fvl-tiny-clip", model_config=TINY_CONFIG)(raw))
    tokens = open_clip_tokenizer("fvl-tiny-clip", model_config=TINY_CONFIG)(["a red silk dress"])
    with torch.no_grad():
        expected_text = F.normalize(
            net.encode_text(tokens["input_ids"], tokens["attention_mask"], normalize=True)
        )
        expected_image = F.normalize(net.encode_image(tiny.transform(raw)[None], normalize=True))
    same(tiny.encode_texts(["a red silk dress"]), expected_text)
    same(tiny.encode_images([raw]), expected_image)
    # composed: the two-tower zero-shot sum rule
    composed = tiny.encode_composed([raw], ["a red silk dress"])
    same(composed, F.normalize(expected_image + expected_text, dim=-1))
    same(tiny.image_query([raw]), expected_image)


def test_local_open_clip_folder(tiny: ClipEmbedder, tmp_path: Path) -> None:
    """A folder in open_clip's layout (``open_clip_config.json`` + weights), as the hub repos have it."""
    from safetensors.torch import save_file

    from fashion_vl.models.openclip import preprocess_config, resolve_config_file

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    model_cfg = json.loads(resolve_config_file(TINY_CONFIG).read_text())
    preprocess = preprocess_config("fvl-tiny-clip", model_config=TINY_CONFIG)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    trained = {k: v.clone() + 0.01 * torch.randn_like(v) for k, v in tiny.net.model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in trained.items()}, str(folder / "open_clip_model.safetensors"))
    model = fashion_vl.load(folder, device="cpu")
    assert isinstance(model, ClipEmbedder)
    for key, value in trained.items():
        same(model.net.model.state_dict()[key], value)
    raw = torch.randint(0, 256, (3, 70, 70), dtype=torch.uint8)
    same(model.transform(raw), tiny.transform(raw))
    assert not torch.equal(model.encode_images([raw]), tiny.encode_images([raw]))
    with pytest.raises(ValueError, match="open_clip model: it takes no experiment"):
        fashion_vl.load(folder, experiment="demo_finetune_openclip")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path):
    """A checkpoint of demo_finetune_openclip as fvl-train writes it (weights moved off their init)."""
    tmp = tmp_path_factory.mktemp("finetuned_clip")
    return lightning_like_checkpoint(tmp, synth_dir, ["experiment=demo_finetune_openclip"], perturbed="net")


def test_finetuned_checkpoint_embeds_as_the_two_tower_evaluation(finetuned) -> None:
    cfg, lit, path = finetuned
    model = fashion_vl.load(path, device="cpu")
    assert isinstance(model, ClipEmbedder) and model.metadata["experiment"] == "demo_finetune_openclip"
    for key, value in lit.net.state_dict().items():
        same(model.net.state_dict()[key], value)
    data, batch = first_test_batch(cfg)
    expected_images, expected_texts = two_tower_embeddings(lit, batch)
    images, texts = gallery_inputs(data, len(batch["product_id"]))
    same(model.encode_images(images, batch_size=len(images)), expected_images)
    same(model.encode_texts(texts, batch_size=len(texts)), expected_texts)


def test_finetuned_save_pretrained_round_trips(finetuned, tmp_path: Path) -> None:
    _, _, path = finetuned
    model = fashion_vl.load(path, device="cpu")
    model.save_pretrained(tmp_path / "exported")
    saved = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert saved["family"] == "clip" and saved["data"]["tokenizer"]["_target_"].endswith(
        "open_clip_tokenizer"
    )
    again = ClipEmbedder.from_pretrained(tmp_path / "exported", device="cpu")
    for key, value in model.net.state_dict().items():
        same(again.net.state_dict()[key], value)
    texts = ["a red silk dress", "black leather boots"]
    raw = torch.randint(0, 256, (2, 3, 80, 64), dtype=torch.uint8)
    same(again.encode_texts(texts), model.encode_texts(texts))
    same(again.encode_images(raw), model.encode_images(raw))
    assert "CLIP-family" in (tmp_path / "exported" / "README.md").read_text()


def test_unknown_open_clip_architecture_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="'no-such-arch' is not an open_clip architecture") as err:
        fashion_vl.load("open_clip:no-such-arch")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="name an architecture"):
        fashion_vl.load("open_clip:/laion2b")


def test_fvl_index_builds_and_queries_with_a_clip_model(
    tiny: ClipEmbedder, synth_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("faiss")
    import numpy as np

    from fashion_vl.cli.index import main as fvl_index
    from fashion_vl.search.searcher import CatalogueIndex, Searcher, SearchError

    out = tmp_path / "index"
    assert (
        fvl_index(["build", "--model", TINY, "--catalogue", str(synth_dir), "--out", str(out), "--quiet"])
        == 0
    )
    index = CatalogueIndex.open(out)
    assert index.info["model"]["source"] == TINY and index.info["model"]["embed_dim"] == 64
    rows = index.items.by_rows([0, 1, 2])
    vectors = np.load(out / "vectors.npy")
    expected = tiny.encode_images([r["image"] for r in rows], to_numpy=True)
    np.testing.assert_allclose(vectors[:3, 0], expected, rtol=0, atol=1e-6)
    searcher = Searcher(index, fashion_vl.load(index.model_source, device="cpu"))
    hits = searcher.by_text(rows[0]["text"], k=5)
    scores = vectors[:, 0] @ tiny.encode_texts([rows[0]["text"]], to_numpy=True)[0]
    assert [h.row for h in hits] == np.argsort(-scores, kind="stable")[:5].tolist()
    # a two-tower model has no outfit rule: the searcher says so (the service answers 400)
    with pytest.raises(SearchError, match="cannot do outfit search"):
        searcher.by_outfit([rows[0]["id"]], 0)
