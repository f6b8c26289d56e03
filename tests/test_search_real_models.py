"""Catalogue search end to end with real (tiny) models that ``fashion_vl.load`` opens: a FashionViL
checkpoint answers text -> image search over the synthetic FashionGen catalogue through the service,
and a CSA-Net checkpoint answers outfit completion over the synthetic Polyvore items (each item with
its outfit category); each answer equals brute force over the model's own embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import fashion_vl
from tests.helpers.run_if import run_if
from tests.test_inference import lightning_like_checkpoint

pytestmark = run_if(packages=("faiss", "fastapi", "multipart", "httpx"))


def _client(index_dir: Path, model):
    from fastapi.testclient import TestClient

    from fashion_vl.search.searcher import CatalogueIndex, Searcher
    from fashion_vl.search.service import create_app

    index = CatalogueIndex.open(index_dir)
    return index, TestClient(create_app(Searcher(index, model)))


def test_text_search_with_a_fashionvil_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    from fashion_vl.cli.index import main as fvl_index

    overrides = ["experiment=demo_itc", "image_size=56", "resize_size=64", "data.max_text_length=24"]
    _, _, ckpt = lightning_like_checkpoint(tmp_path / "run", synth_dir, overrides)
    out = tmp_path / "index"
    args = ["build", "--model", str(ckpt), "--catalogue", str(synth_dir), "--out", str(out), "--quiet"]
    assert fvl_index(args) == 0
    model = fashion_vl.load(ckpt, device="cpu")
    index, client = _client(out, model)
    assert index.model_source == str(ckpt.resolve())
    vectors = np.load(out / "vectors.npy")[:, 0]
    first = index.items.by_rows([0, 1, 2, 3])
    # the index holds the model's embeddings of the catalogue images
    expected = model.encode_images([item["image"] for item in first], to_numpy=True)
    np.testing.assert_allclose(vectors[:4], expected, rtol=0, atol=1e-6)
    query = first[3]["text"]
    body = client.post("/api/search/text", json={"text": query, "k": 5}).json()
    scores = vectors @ model.encode_texts([query], to_numpy=True)[0]
    best = np.argsort(-scores, kind="stable")[:5]
    assert [r["id"] for r in body["results"]] == [i["id"] for i in index.items.by_rows(best.tolist())]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[best], atol=1e-5)


def test_outfit_completion_with_a_csanet_checkpoint(tmp_path: Path, synth_dir: Path) -> None:
    from fashion_vl.search.build import build_index
    from fashion_vl.search.catalogue import OUTFIT_CATEGORY, read_catalogue

    _, _, ckpt = lightning_like_checkpoint(tmp_path / "run", synth_dir, ["experiment=demo_finetune_outfit"])
    model = fashion_vl.load(ckpt, device="cpu")
    assert "outfit" in model.capabilities
    catalogue = read_catalogue(synth_dir, dataset="PolyvoreOutfits", splits=["train"])
    assert len(catalogue) > 20 and all(OUTFIT_CATEGORY in item.meta for item in catalogue.items)
    out = tmp_path / "index"
    build_index(model, catalogue, out, model_source=str(ckpt))
    index, client = _client(out, model)
    health = client.get("/health").json()
    assert health["search"] == ["image", "outfit"]
    sizes = {c: len(rows) for c, rows in index.outfit_categories.items()}
    assert sorted(sizes) == health["outfit_categories"]
    category = max(sizes, key=sizes.get)  # the category with the most candidates
    outfit = index.items.by_rows([0, 1])
    request = {"item_ids": [i["id"] for i in outfit], "category": category, "k": 5}
    body = client.post("/api/search/outfit", json=request).json()
    # brute force: CSA-Net's query for this partial outfit against every other item of the category
    query = model.encode_outfits(
        [[i["image"] for i in outfit]],
        [[i["meta"][OUTFIT_CATEGORY] for i in outfit]],
        [category],
        to_numpy=True,
    )[0]
    candidates = np.setdiff1d(index.outfit_categories[category], [0, 1])
    vectors = np.load(out / "vectors.npy")[candidates, 0]
    scores = vectors @ query
    best = np.argsort(-scores, kind="stable")[:5]
    expected = index.items.by_rows(candidates[best].tolist())
    assert [r["id"] for r in body["results"]] == [i["id"] for i in expected]
    assert all(r["meta"][OUTFIT_CATEGORY] == category for r in body["results"])
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[best], atol=1e-5)
    # another category for the same outfit is another query (CSA-Net conditions on it)
    other = min(sizes, key=sizes.get)
    body = client.post("/api/search/outfit", json=request | {"category": other}).json()
    assert all(r["meta"][OUTFIT_CATEGORY] == other for r in body["results"])
    assert client.post("/api/search/text", json={"text": "a shirt"}).status_code == 400
