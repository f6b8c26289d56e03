"""Embedding a catalogue into an index folder, resumably.

The catalogue is cut into shards of ``shard_size`` rows. Each shard's vectors (and the catalogue
rows they belong to) go to ``shards/shard-NNNNNN.npz`` under a temporary name, then the shard is
recorded in ``build.json``, also written atomically. A build killed at any point therefore finds
every recorded shard complete, embeds only the others, and nothing is embedded twice. When all
shards are in, the index files are written (each atomically) and ``index.json`` last: an index
folder without ``index.json`` is an unfinished build, never a half-written index.

A row whose image is missing or does not decode is skipped, counted and listed (``skipped.jsonl``
and the build's summary), never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashion_vl.data.images import ImageLoadError, read_image, resolve_image
from fashion_vl.search.catalogue import Catalogue, CatalogueItem, SkippedRow
from fashion_vl.search.embedder import EmbedderLike, check_embedder
from fashion_vl.search.item_table import write_item_table
from fashion_vl.search.layout import IndexLayout
from fashion_vl.search.vector_index import IndexSpec, VectorIndex, write_faiss
from fashion_vl.utils.io import open_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class BuildError(RuntimeError):
    """The index folder cannot be (re)built as asked; the message says what to do."""


@dataclass
class BuildReport:
    out: Path
    items: int
    skipped: list[SkippedRow]
    shards_embedded: int
    shards_reused: int
    seconds: float
    index: dict[str, Any] = field(default_factory=dict)
    up_to_date: bool = False

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


def build_index(
    embedder: EmbedderLike,
    catalogue: Catalogue,
    out: str | Path,
    *,
    model_source: str | None = None,
    spec: IndexSpec | None = None,
    shard_size: int = 1024,
    batch_size: int = 64,
    workers: int = 4,
    overwrite: bool = False,
    keep_shards: bool = False,
    progress: bool = False,
) -> BuildReport:
    """Embed ``catalogue`` with ``embedder`` and write an index folder at ``out`` (resuming an
    interrupted build of the same catalogue and model there).

    Args:
        model_source: what ``fashion_vl.load`` was given (recorded, so queries can reload the model);
            default ``embedder.name``.
        spec: the index kind and knobs (default: exact up to 50k items, HNSW above).
        shard_size: catalogue rows per shard (the unit of resumption).
        batch_size: images per ``encode_images`` call.
        workers: threads decoding images.
        overwrite: replace an index folder of another catalogue or model (else an error).
        keep_shards: keep ``shards/`` and ``build.json`` after the index is written.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    check_embedder(embedder)
    spec = spec or IndexSpec()
    layout = IndexLayout(Path(out).expanduser())
    source = model_source or embedder.name
    fingerprint = _fingerprint(catalogue, embedder, source, shard_size)
    start = time.perf_counter()

    if layout.info.is_file() and not overwrite:
        info = json.loads(layout.info.read_text())
        if info.get("build", {}).get("fingerprint") != fingerprint:
            raise BuildError(
                f"{layout.root} already holds an index of another catalogue or model; "
                "pass --overwrite to replace it, or choose another --out"
            )
        layout.remove_build_state()
        if info["index"].get("spec") != spec.to_dict():  # same vectors, another index: no re-embedding
            info = reindex(layout.root, spec)
            log.info("%s re-indexed (%s) from its vectors", layout.root, info["index"]["kind"])
            seconds = time.perf_counter() - start
            return BuildReport(layout.root, info["catalogue"]["items"], [], 0, 0, seconds, info["index"])
        log.info("%s is up to date (same catalogue, model and index settings)", layout.root)
        return BuildReport(layout.root, info["catalogue"]["items"], [], 0, 0, 0.0, info["index"], True)
    if overwrite:
        layout.remove_all()
    elif layout.root.is_dir() and any(layout.root.iterdir()) and not layout.manifest.is_file():
        raise BuildError(f"{layout.root} exists and is not an index folder; choose an empty or new --out")

    manifest = _open_manifest(layout, fingerprint, len(catalogue), shard_size)
    num_shards = -(-len(catalogue) // shard_size)
    todo = [s for s in range(num_shards) if str(s) not in manifest["shards"]]
    reused = num_shards - len(todo)
    if reused:
        log.info("resuming %s: %d of %d shards already embedded", layout.root, reused, num_shards)
    with _progress(progress, len(catalogue), reused * shard_size) as advance:
        for s in todo:
            rows = range(s * shard_size, min((s + 1) * shard_size, len(catalogue)))
            entry = _embed_shard(embedder, catalogue.items, rows, layout, s, batch_size, workers)
            manifest["shards"][str(s)] = entry
            _write_json(layout.manifest, manifest)
            advance(len(rows))

    report = _finalise(embedder, catalogue, layout, manifest, source, spec, fingerprint, start)
    report.shards_embedded, report.shards_reused = len(todo), reused
    if not keep_shards:
        layout.remove_build_state()
    return report


def _fingerprint(catalogue: Catalogue, embedder: EmbedderLike, source: str, shard_size: int) -> str:
    """What must match for a resumed build to continue: catalogue, model (and its file's size and
    modification time when it is a local path), vector shape, shard size."""
    identity = {
        "format_version": FORMAT_VERSION,
        "catalogue": catalogue.fingerprint(),
        "model": source,
        "model_name": embedder.name,
        "model_files": _file_stats(source),
        "embed_dim": int(embedder.embed_dim),
        "vectors_per_image": int(embedder.vectors_per_image),
        "shard_size": shard_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _file_stats(source: str) -> list[list[Any]]:
    path = Path(source).expanduser()
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else []
    )
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _open_manifest(layout: IndexLayout, fingerprint: str, num_rows: int, shard_size: int) -> dict[str, Any]:
    if layout.manifest.is_file():
        manifest = json.loads(layout.manifest.read_text())
        if manifest.get("fingerprint") != fingerprint:
            raise BuildError(
                f"{layout.manifest}: an unfinished build of another catalogue, model or shard size is here; "
                "pass --overwrite to start again, or choose another --out"
            )
        # a shard whose file went missing is embedded again
        manifest["shards"] = {
            s: e for s, e in manifest["shards"].items() if (layout.shards / e["file"]).is_file()
        }
        return manifest
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "rows": num_rows,
        "shard_size": shard_size,
        "shards": {},
    }
    _write_json(layout.manifest, manifest)
    return manifest


def _load_image(item: CatalogueItem) -> torch.Tensor | str:
    """The item's image as ``uint8 [3, H, W]``, or the reason it cannot be read."""
    path = Path(item.image)
    try:
        return read_image(resolve_image(path.parent, path.name))
    except ImageLoadError as err:
        return err.reason


def _embed_shard(
    embedder: EmbedderLike,
    items: Sequence[CatalogueItem],
    rows: range,
    layout: IndexLayout,
    shard: int,
    batch_size: int,
    workers: int,
) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = list(pool.map(lambda r: _load_image(items[r]), rows))
    kept, images, skipped = [], [], {}
    for r, image in zip(rows, loaded):
        if isinstance(image, str):
            skipped[r] = _skip(items[r], r, image)
        else:
            kept.append(r)
            images.append(image)
    vectors = _encode(embedder, images, batch_size)
    for i, reason in vectors.failed.items():
        skipped[kept[i]] = _skip(items[kept[i]], kept[i], reason)
    kept = [r for r in kept if r not in skipped]
    for r in sorted(skipped):
        log.warning("skipped %s: %s", skipped[r].where, skipped[r].reason)
    name = f"shard-{shard:06d}.npz"
    with open_atomic(layout.shards / name) as f:
        np.savez(f, vectors=vectors.array, rows=np.asarray(kept, dtype=np.int64))
    return {
        "file": name,
        "start": rows.start,
        "end": rows.stop,
        "kept": len(kept),
        "skipped": [skipped[r].to_dict() for r in sorted(skipped)],
    }


def _resolved(item: CatalogueItem) -> CatalogueItem:
    """The item with the image file that was read (the catalogue may name it without its extension)."""
    path = Path(item.image)
    try:
        return replace(item, image=str(resolve_image(path.parent, path.name)))
    except ImageLoadError:  # gone since it was embedded: keep the name the catalogue gave
        return item


def _skip(item: CatalogueItem, row: int, reason: str) -> SkippedRow:
    return SkippedRow(item.where or f"catalogue row {row}", reason, item.id, item.image)


@dataclass
class _Encoded:
    array: np.ndarray  # [kept, Q, D]
    failed: dict[int, str]  # position in the input -> why the embedder refused it


def _encode(embedder: EmbedderLike, images: list[torch.Tensor], batch_size: int) -> _Encoded:
    q, d = int(embedder.vectors_per_image), int(embedder.embed_dim)
    if not images:
        return _Encoded(np.zeros((0, q, d), np.float32), {})
    try:
        return _Encoded(
            _as_items(embedder.encode_images(images, batch_size=batch_size, progress=False), q, d), {}
        )
    except ImageLoadError:
        pass
    # the embedder refused one image of the batch: embed one by one to find it, keep the rest
    arrays, failed = [], {}
    for i, image in enumerate(images):
        try:
            arrays.append(_as_items(embedder.encode_images([image], progress=False), q, d))
        except ImageLoadError as err:
            failed[i] = err.reason
    return _Encoded(np.concatenate(arrays) if arrays else np.zeros((0, q, d), np.float32), failed)


def _as_items(vectors: torch.Tensor | np.ndarray, q: int, d: int) -> np.ndarray:
    """``[N, D]`` or ``[N, Q, D]`` -> ``[N, Q, D]`` float32, checked."""
    array = (
        vectors.detach().float().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    )
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array[:, None, :]
    if array.shape[1:] != (q, d):
        raise ValueError(f"encode_images returned vectors of shape {array.shape}; expected [N, {q}, {d}]")
    if not np.isfinite(array).all():
        raise ValueError("encode_images returned non-finite values")
    return array


def _finalise(
    embedder: EmbedderLike,
    catalogue: Catalogue,
    layout: IndexLayout,
    manifest: dict[str, Any],
    source: str,
    spec: IndexSpec,
    fingerprint: str,
    start: float,
) -> BuildReport:
    entries = [manifest["shards"][str(s)] for s in range(len(manifest["shards"]))]
    arrays, rows = [], []
    for entry in entries:
        with np.load(layout.shards / entry["file"]) as shard:
            arrays.append(shard["vectors"])
            rows.append(shard["rows"])
    skipped = list(catalogue.skipped) + [SkippedRow(**s) for e in entries for s in e["skipped"]]
    kept_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if len(kept_rows) == 0:
        reasons = "; ".join(f"{s.where}: {s.image}: {s.reason}" for s in skipped[:3])
        raise BuildError(f"no row of {catalogue.source} could be indexed ({len(skipped)} skipped: {reasons})")
    info = write_index(
        layout.root,
        np.concatenate(arrays),
        [_resolved(catalogue.items[r]) for r in kept_rows],
        model=model_info(embedder, source),
        catalogue={"source": catalogue.source, "rows": len(catalogue) + len(catalogue.skipped)},
        spec=spec,
        skipped=skipped,
        build={"fingerprint": fingerprint, "shard_size": manifest["shard_size"]},
        start=start,
    )
    return BuildReport(layout.root, len(kept_rows), skipped, 0, 0, info["build"]["seconds"], info["index"])


def reindex(root: Path, spec: IndexSpec) -> dict[str, Any]:
    """Rebuild the FAISS index of a finished index folder from its ``vectors.npy`` with ``spec``."""
    layout = IndexLayout(root)
    info = json.loads(layout.info.read_text())
    vectors = np.load(layout.vectors, mmap_mode="r")
    params = spec.resolve(vectors.shape[0], vectors.shape[1], vectors.shape[2])
    write_faiss(VectorIndex.build(vectors, params).index, layout.faiss)
    info["index"] = {**params, "spec": spec.to_dict()}
    _write_json(layout.info, info)
    return info


def model_info(embedder: EmbedderLike, source: str) -> dict[str, Any]:
    """What ``index.json`` records of the model (queries reload it from ``source``)."""
    return {
        "source": source,
        "name": embedder.name,
        "embed_dim": int(embedder.embed_dim),
        "vectors_per_image": int(embedder.vectors_per_image),
        "capabilities": sorted(embedder.capabilities),
    }


def write_index(
    root: Path,
    vectors: np.ndarray,
    items: Sequence[CatalogueItem],
    *,
    model: dict[str, Any],
    catalogue: dict[str, Any],
    spec: IndexSpec,
    skipped: Sequence[SkippedRow] = (),
    build: dict[str, Any] | None = None,
    start: float | None = None,
) -> dict[str, Any]:
    """Write the index files for ``vectors`` ``[N, Q, D]`` and their ``items`` (row ``i`` = item ``i``),
    each atomically, ``index.json`` last; returns ``index.json``'s content."""
    start = time.perf_counter() if start is None else start
    layout = IndexLayout(root)
    params = spec.resolve(len(items), vectors.shape[1], vectors.shape[2])
    log.info("indexing %d items (%s)", len(items), params["kind"])
    index = VectorIndex.build(vectors, params)
    with open_atomic(layout.vectors) as f:
        np.save(f, vectors)
    write_item_table(layout.items, items)
    write_faiss(index.index, layout.faiss)
    with open_atomic(layout.skipped, "w") as f:
        f.writelines(json.dumps(s.to_dict()) + "\n" for s in skipped)
    info = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "catalogue": {**catalogue, "items": len(items), "skipped": len(skipped)},
        "index": {**params, "spec": spec.to_dict()},
        "build": {
            **(build or {}),
            "seconds": round(time.perf_counter() - start, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    _write_json(layout.info, info)
    return info


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with open_atomic(path, "w") as f:
        json.dump(payload, f, indent=1)


@contextmanager
def _progress(enabled: bool, total: int, done: int) -> Iterator[Callable[[int], None]]:
    """``advance(rows)`` for a rich progress bar over catalogue rows, or a no-op when not ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("embedding", total=total, completed=min(done, total))
        yield lambda n: bar.advance(task, n)
