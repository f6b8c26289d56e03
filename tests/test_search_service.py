"""The search service: every endpoint answers, and bad requests get a 4xx with a clear message, never
a 5xx (FastAPI's TestClient, no server process)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.fake_embedder import FakeEmbedder, build_colour_index
from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss", "fastapi", "multipart", "httpx"))


def _client(folder: Path, embedder: FakeEmbedder, **kw):
    from fastapi.testclient import TestClient

    from fashion_vl.search.searcher import CatalogueIndex, Searcher
    from fashion_vl.search.service import create_app

    index_dir = build_colour_index(folder, FakeEmbedder())
    client = TestClient(create_app(Searcher(CatalogueIndex.open(index_dir), embedder), **kw))
    client.fake = embedder
    return client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    caps = ("image", "text", "composed", "outfit")
    with _client(
        tmp_path_factory.mktemp("service"), FakeEmbedder(capabilities=caps), max_upload_bytes=50_000
    ) as c:
        yield c


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_page(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 18
    assert health["search"] == ["text", "image", "composed", "outfit"]
    assert health["outfit_categories"] == [0, 1, 2]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_text_search_ranks_the_named_colour_first_and_serves_its_images(client) -> None:
    body = client.post("/api/search/text", json={"text": "a green dress", "k": 4}).json()
    assert body["kind"] == "text" and len(body["results"]) == 4
    assert [r["id"].split("-")[0] for r in body["results"][:3]] == ["green"] * 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    image = client.get(body["results"][0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).getpixel((0, 0))[1] > 100  # a green picture


def test_image_composed_and_outfit_search(client) -> None:
    blue = _png((50, 110, 210))
    body = client.post(
        "/api/search/image", files={"image": ("q.png", blue, "image/png")}, data={"k": "3"}
    ).json()
    assert [r["id"].split("-")[0] for r in body["results"]] == ["blue"] * 3
    body = client.post(
        "/api/search/composed",
        files={"image": ("q.png", blue, "image/png")},
        data={"text": "the same in yellow", "k": "3"},
    ).json()
    assert [r["id"].split("-")[0] for r in body["results"]] == ["yellow"] * 3
    # items of outfit category 2 (the third shade of every colour) completing a red outfit of 0 and 1
    outfit = {"item_ids": ["red-0", "red-1"], "category": 2, "k": 5}
    body = client.post("/api/search/outfit", json=outfit).json()
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 5 and ids[0] == "red-2" and all(i.endswith("-2") for i in ids)
    assert body["query"] == {"item_ids": ["red-0", "red-1"], "category": 2}
    # the model got each item's category and the missing one's
    assert client.fake.outfit_calls[-1] == ([[0, 1]], [2])
    # the outfit's own items are never proposed
    body = client.post("/api/search/outfit", json={"item_ids": ["red-1"], "category": 1, "k": 10}).json()
    assert "red-1" not in [r["id"] for r in body["results"]] and len(body["results"]) == 5


def _refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    for word in words:
        assert word in detail, detail


def test_bad_requests_get_a_4xx_with_a_clear_message(client) -> None:
    post = client.post
    png = _png((200, 30, 40))
    _refused(post("/api/search/text", json={"text": "   "}), 422, "text", "empty")
    _refused(post("/api/search/text", json={"text": ""}), 422, "text")
    _refused(post("/api/search/text", json={}), 422, "text", "required")
    _refused(post("/api/search/text", json={"text": 3}), 422, "text")
    _refused(post("/api/search/text", json={"text": "red", "k": 0}), 422, "k")
    _refused(post("/api/search/text", json={"text": "red", "k": 10_000}), 422, "k")
    _refused(post("/api/search/text", json={"text": "red", "colour": "x"}), 422, "colour")
    _refused(post("/api/search/text", json={"text": "x" * 5000}), 422, "text")
    _refused(
        post("/api/search/text", content=b"{not json", headers={"content-type": "application/json"}), 422
    )
    _refused(post("/api/search/text", content=b"red dress"), 422)
    _refused(post("/api/search/image", data={"k": "3"}), 422, "image", "required")
    _refused(post("/api/search/image", files={"image": ("q.txt", b"hello", "text/plain")}), 415, "q.txt")
    _refused(post("/api/search/image", files={"image": ("q.png", png[:40], "image/png")}), 415, "q.png")
    _refused(post("/api/search/image", files={"image": ("e.png", b"", "image/png")}), 422, "empty")
    _refused(
        post("/api/search/image", files={"image": ("q.png", png, "image/png")}, data={"k": "many"}), 422, "k"
    )
    _refused(post("/api/search/composed", files={"image": ("q.png", png, "image/png")}), 422, "text")
    _refused(
        post("/api/search/composed", files={"image": ("q.png", png, "image/png")}, data={"text": " "}), 422
    )
    _refused(post("/api/search/outfit", json={"item_ids": [], "category": 0}), 422, "item_ids")
    _refused(post("/api/search/outfit", json={"item_ids": ["red-0"]}), 422, "category")
    _refused(post("/api/search/outfit", json={"item_ids": ["red-0"], "category": -1}), 422, "category")
    _refused(
        post("/api/search/outfit", json={"item_ids": ["no-such-item"], "category": 0}), 400, "no-such-item"
    )
    _refused(
        post("/api/search/outfit", json={"item_ids": ["red-0"], "category": 7}), 400, "outfit_category 7"
    )
    _refused(post("/api/search/sketch", json={"text": "red"}), 404, "sketch")
    _refused(client.get("/api/search/text"), 405)
    _refused(client.get("/images/999"), 404, "999")
    _refused(client.get("/images/-1"), 404)
    _refused(client.get("/images/abc"), 422)


def test_oversized_uploads_are_refused_with_413(client) -> None:
    big = _png((1, 2, 3), (400, 400))  # incompressible enough? pad to be sure
    big = big + b"\0" * 60_000
    _refused(client.post("/api/search/image", files={"image": ("big.png", big, "image/png")}), 413, "limit")

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for _ in range(20):
            yield b"x" * 5_000

    _refused(
        client.post(
            "/api/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        ),
        413,
    )


def test_images_with_too_many_pixels_are_refused(tmp_path: Path) -> None:
    with _client(tmp_path, FakeEmbedder(), max_pixels=100 * 100) as c:
        files = {"image": ("wide.png", _png((9, 9, 9), (200, 100)), "image/png")}
        _refused(c.post("/api/search/image", files=files), 413, "200x100")


def test_a_kind_the_model_cannot_do_is_a_400(tmp_path: Path) -> None:
    with _client(tmp_path, FakeEmbedder(capabilities=("image", "text"))) as c:
        assert c.get("/health").json()["search"] == ["text", "image"]
        files = {"image": ("q.png", _png((1, 1, 1)), "image/png")}
        _refused(
            c.post("/api/search/composed", files=files, data={"text": "red"}), 400, "composed", "text, image"
        )
        _refused(c.post("/api/search/outfit", json={"item_ids": ["red-0"], "category": 0}), 400, "outfit")


def test_random_bytes_never_cause_a_server_error(client) -> None:
    import random

    rng = random.Random(0)
    for i in range(40):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
        ctype = rng.choice(
            ["application/json", "multipart/form-data; boundary=xyz", "image/png", "text/plain"]
        )
        path = rng.choice(
            ["/api/search/text", "/api/search/image", "/api/search/composed", "/api/search/outfit"]
        )
        response = client.post(path, content=blob, headers={"content-type": ctype})
        assert 400 <= response.status_code < 500, (i, path, ctype, response.status_code, response.text)
