"""The web page in a real headless browser: the OS's Chromium, driven by Playwright, against uvicorn
on a free localhost port. A person's steps: type a query and see the result images load; drop an
image; add a modification text.

Skips when Chromium or Playwright is missing, unless FVL_REQUIRE_BROWSER=1 (CI sets it), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fake_embedder import FakeEmbedder, build_colour_index
from tests.helpers.ports import free_port
from tests.helpers.run_if import run_if

pytestmark = run_if(packages=("faiss", "fastapi", "uvicorn", "multipart"))

CHROMIUM_FLAGS = [
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_skip() -> str:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if executable is None:
        missing.append("Chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright (pip install playwright; no browser download needed)")
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("FVL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and FVL_REQUIRE_BROWSER=1 says it must run")
        pytest.skip(reason)
    return executable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The service's address and the catalogue folder it serves."""
    import uvicorn

    from fashion_vl.search.searcher import CatalogueIndex, Searcher
    from fashion_vl.search.service import create_app

    folder = tmp_path_factory.mktemp("browser")
    embedder = FakeEmbedder(capabilities=("image", "text", "composed", "outfit"))
    app = create_app(Searcher(CatalogueIndex.open(build_colour_index(folder, embedder)), embedder))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", folder / "catalogue"
    server.should_exit = True
    thread.join(timeout=10)


# every result image has arrived and decoded; returns the results' ids
RESULTS_LOADED = """(k) => {
  const cards = [...document.querySelectorAll('#results .result')];
  const images = cards.map((c) => c.querySelector('img'));
  if (cards.length !== k || !images.every((i) => i.complete && i.naturalWidth > 0)) return false;
  return cards.map((c) => c.dataset.id);
}"""

# the colour of the first result's picture, read back from the decoded image
FIRST_IMAGE_RGB = """() => {
  const img = document.querySelector('#results .result img');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(1, 1, 1, 1).data.slice(0, 3));
}"""


def test_a_person_searches_by_text_then_by_image_then_image_and_text(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    url, catalogue = server
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("requestfailed", lambda req: errors.append(f"{req.url}: {req.failure}"))
            page.on("response", lambda r: errors.append(f"{r.url}: {r.status}") if r.status >= 400 else None)
            page.goto(url + "/")
            page.wait_for_function("() => document.getElementById('info').textContent.includes('18 items')")

            # type a query, press Enter, see ten result images load, red ones first
            page.fill("#query", "a red dress")
            page.press("#query", "Enter")
            ids = page.wait_for_function(RESULTS_LOADED, arg=10, timeout=20_000).json_value()
            assert [i.split("-")[0] for i in ids[:3]] == ["red"] * 3, ids
            r, g, b = page.evaluate(FIRST_IMAGE_RGB)
            assert r > 150 and g < 80 and b < 80, (r, g, b)
            assert "10 results for text search" in page.text_content("#status")

            # choose an image (the drop zone's file input): image search, blue first
            page.fill("#query", "")
            page.select_option("#k", "5")
            page.set_input_files("#file", str(catalogue / "blue-0.png"))
            page.wait_for_function(
                "() => document.getElementById('status').textContent.includes('image search')"
            )
            ids = page.wait_for_function(RESULTS_LOADED, arg=5, timeout=20_000).json_value()
            assert ids[0] == "blue-0" and [i.split("-")[0] for i in ids[:3]] == ["blue"] * 3, ids
            assert page.is_visible("#preview")

            # the same image with a modification text: composed search
            page.fill("#query", "the same in yellow")
            page.click("#go")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('composed')")
            ids = page.wait_for_function(RESULTS_LOADED, arg=5, timeout=20_000).json_value()
            assert [i.split("-")[0] for i in ids[:3]] == ["yellow"] * 3, ids

            # complete the outfit of the first result with items of outfit category 2
            assert page.is_visible("#outfit-category")
            page.select_option("#outfit-category", "2")
            page.click("#results .result:first-child button")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('outfit')")
            ids = page.wait_for_function(RESULTS_LOADED, arg=5, timeout=20_000).json_value()
            assert all(i.endswith("-2") for i in ids), ids

            # nothing to search: a message, no request
            page.click("#clear-image")
            page.fill("#query", "   ")
            page.press("#query", "Enter")
            assert "Type a query or drop an image" in page.text_content("#status")
            page.screenshot(path=os.environ.get("FVL_SCREENSHOT", str(tmp_path / "page.png")), full_page=True)
            assert not errors, errors
        finally:
            context.close()
