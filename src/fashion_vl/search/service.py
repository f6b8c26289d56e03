"""The search service behind ``fvl-serve``: JSON endpoints over an index folder, and its web page.

  GET  /health                 status, model, item count, the search kinds the model can do
  POST /api/search/text        {"text": "...", "k": 10}
  POST /api/search/image       multipart: image (file), k
  POST /api/search/composed    multipart: image (file), text (the modification), k
  POST /api/search/outfit      {"item_ids": ["...", ...], "category": 11, "k": 10}   (outfit-capable models:
                               items of that outfit category completing the outfit)
  GET  /images/{row}           a catalogue image (the results' ``image_url``)
  GET  /                       the web page (static HTML + JS in ``static/``)

Every bad request gets a 4xx with a one-line ``detail``: 413 for a body over ``max_upload_bytes`` or
an image over ``max_pixels``, 415 for an upload that is not a decodable image, 422 for a missing,
empty or mistyped field, 400 for a search kind the model cannot do, 404 for an unknown kind or image.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from fashion_vl import __version__
from fashion_vl.search.embedder import SEARCH_CAPABILITIES
from fashion_vl.search.searcher import Hit, Searcher, SearchError

MAX_K = 100
MAX_TEXT = 1000
MAX_OUTFIT_ITEMS = 16
STATIC = files("fashion_vl.search") / "static"


class TextQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT)
    k: int = Field(10, ge=1, le=MAX_K)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the query text is empty")
        return text.strip()


class OutfitQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[str] = Field(min_length=1, max_length=MAX_OUTFIT_ITEMS)
    category: int = Field(ge=0)  # the outfit category of the missing item (the results' category)
    k: int = Field(10, ge=1, le=MAX_K)


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, whether announced by Content-Length or
    streamed (chunked): the app sees a disconnect and its response is replaced. Starlette has no body
    limit of its own, and its multipart parser would otherwise spool any upload to disk."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive() -> dict:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"]:
                return  # the 413 below replaces whatever the app answers to the cut-off body
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        response = JSONResponse(
            {"detail": f"request body over the {self.max_bytes}-byte limit"}, status_code=413
        )
        await response({"type": "http"}, None, send)


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> Image.Image:
    """An uploaded file as an RGB image; 413 / 415 / 422 with the reason otherwise."""
    name = filename or "upload"
    if not data:
        raise HTTPException(422, f"{name}: the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise HTTPException(
                    413, f"{name}: {width}x{height} pixels, over the {max_pixels}-pixel limit"
                )
            img.load()
            return img.convert("RGB")
    except HTTPException:
        raise
    except Image.DecompressionBombError as err:
        raise HTTPException(413, f"{name}: {err}") from err
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise HTTPException(415, f"{name}: not an image that can be decoded ({type(err).__name__})") from err


def _one_line(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    searcher: Searcher, *, max_upload_bytes: int = 10 * 2**20, max_pixels: int = 40_000_000
) -> FastAPI:
    """The FastAPI app serving ``searcher``'s index and model."""
    app = FastAPI(title="fashion-vl search", version=__version__, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    index = searcher.index

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=422)

    @app.exception_handler(SearchError)
    async def _unsearchable(request: Request, err: SearchError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    def require(kind: str) -> None:
        if kind not in searcher.kinds:
            raise HTTPException(
                400,
                f"the model {searcher.embedder.name!r} cannot do {kind} search "
                f"(it can do: {', '.join(searcher.kinds) or 'none'})",
            )

    async def answer(
        kind: str, query: dict[str, Any], k: int, run: Callable[[], list[Hit]]
    ) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            hits = await run_in_threadpool(run)
        except SearchError:
            raise
        except ValueError as err:  # the model refused the input (e.g. UnsupportedCapability)
            raise HTTPException(400, str(err).splitlines()[0]) from err
        return {
            "kind": kind,
            "query": query,
            "k": k,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
            "results": [
                {
                    "rank": h.rank,
                    "id": h.id,
                    "score": round(h.score, 6),
                    "text": h.text,
                    "image_url": f"/images/{h.row}",
                    "meta": h.meta,
                }
                for h in hits
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        outfit = "outfit" in searcher.kinds
        return {
            "status": "ok",
            "version": __version__,
            "model": searcher.embedder.name,
            "items": len(index),
            "index": index.vectors.params["kind"],
            "search": searcher.kinds,
            "max_upload_bytes": max_upload_bytes,
            "max_k": MAX_K,
            # the outfit categories of the catalogue's items (what an outfit search can ask for)
            "outfit_categories": list(index.outfit_categories) if outfit else [],
        }

    @app.post("/api/search/text")
    async def search_text(query: TextQuery) -> dict[str, Any]:
        require("text")
        return await answer(
            "text", {"text": query.text}, query.k, lambda: searcher.by_text(query.text, query.k)
        )

    @app.post("/api/search/image")
    async def search_image(
        image: Annotated[UploadFile, File()], k: Annotated[int, Form(ge=1, le=MAX_K)] = 10
    ) -> dict[str, Any]:
        require("image")
        picture = decode_upload(await image.read(), image.filename, max_pixels)
        return await answer("image", {"image": image.filename}, k, lambda: searcher.by_image(picture, k))

    @app.post("/api/search/composed")
    async def search_composed(
        image: Annotated[UploadFile, File()],
        text: Annotated[str, Form(max_length=MAX_TEXT)],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
    ) -> dict[str, Any]:
        require("composed")
        if not text.strip():
            raise HTTPException(422, "text: the modification text is empty")
        picture = decode_upload(await image.read(), image.filename, max_pixels)
        query = {"image": image.filename, "text": text.strip()}
        return await answer("composed", query, k, lambda: searcher.by_composed(picture, text.strip(), k))

    @app.post("/api/search/outfit")
    async def search_outfit(query: OutfitQuery) -> dict[str, Any]:
        require("outfit")
        return await answer(
            "outfit",
            {"item_ids": query.item_ids, "category": query.category},
            query.k,
            lambda: searcher.by_outfit(query.item_ids, query.category, query.k),
        )

    @app.api_route("/api/search/{kind}", methods=["GET", "POST"])
    async def unknown_kind(kind: str) -> None:
        known = ", ".join(SEARCH_CAPABILITIES)
        if kind in SEARCH_CAPABILITIES:
            raise HTTPException(405, f"/api/search/{kind} takes POST")
        raise HTTPException(404, f"unknown search kind {kind!r}; the service has: {known}")

    @app.get("/images/{row}")
    async def catalogue_image(row: int) -> FileResponse:
        if not 0 <= row < len(index):
            raise HTTPException(404, f"no catalogue item at row {row} (the index has {len(index)})")
        path = index.items.by_rows([row])[0]["image"]
        try:
            return FileResponse(path, stat_result=os.stat(path))
        except OSError as err:
            raise HTTPException(404, f"the image of row {row} is gone from the catalogue: {path}") from err

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
