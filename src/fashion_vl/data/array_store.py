"""Decode-free images: one uint8 ``[N, H, W, 3]`` array, memory-mapped, and the index naming its rows.

A split's store is two files beside its annotation file (FashionGen: ``FashionGen/train_images.npy``
and ``FashionGen/train_images.json``):

- ``<stem>.npy``: a NumPy ``.npy`` file of ``uint8 [N, H, W, 3]`` RGB pixels, opened with
  ``np.load(mmap_mode="r")``, so a read is a copy of one row out of the page cache, no decoding;
- ``<stem>.json``: ``{"format": "fashion_vl.array_store", "version": 1, "array": "<stem>.npy",
  "shape": [N, H, W, 3], "names": [...]}`` where ``names[i]`` is the image name of row ``i`` as the
  annotation file writes it (``100123_1.png``). Names are matched without their image extension, as
  files are (:func:`fashion_vl.data.images.resolve_image`).

A plain ``.npy`` rather than HDF5 or a database: NumPy memory-maps it in every DataLoader worker at no
cost, the operating system's page cache is shared between workers, and nothing outside NumPy is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from fashion_vl.data.images import IMAGE_SUFFIXES, ImageLoadError

INDEX_FORMAT = "fashion_vl.array_store"
INDEX_VERSION = 1


class ArrayStoreError(ValueError):
    """An array store's index or array is missing or malformed."""


def image_key(name: str) -> str:
    """``name`` without a known image extension: ``100123_1.png`` and ``100123_1`` are the same image."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def array_path(index_path: Path) -> Path:
    return index_path.with_suffix(".npy")


class ArrayStoreWriter:
    """Writes a store of ``num_images`` images of ``height x width`` row by row (rows in any order),
    then its index with :meth:`finish`. The array is written through a memory map, so a 50 GB split is
    never held in memory."""

    def __init__(self, index_path: str | Path, num_images: int, height: int, width: int) -> None:
        self.index_path = Path(index_path)
        self.shape = (num_images, height, width, 3)
        self.array = open_memmap(array_path(self.index_path), mode="w+", dtype=np.uint8, shape=self.shape)

    def write(self, start: int, pixels: np.ndarray) -> None:
        """Rows ``start .. start + len(pixels)``: ``uint8 [n, H, W, 3]``."""
        if pixels.dtype != np.uint8 or pixels.shape[1:] != self.shape[1:]:
            raise ArrayStoreError(
                f"{self.index_path}: rows must be uint8 {self.shape[1:]}, got {pixels.dtype} {pixels.shape[1:]}"
            )
        self.array[start : start + len(pixels)] = pixels

    def finish(self, names: Sequence[str]) -> None:
        """Flush the array and write the index (``names[i]``: the image name of row ``i``)."""
        if len(names) != self.shape[0]:
            raise ArrayStoreError(f"{self.index_path}: {len(names)} names for {self.shape[0]} rows")
        self.array.flush()
        del self.array
        index = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "array": array_path(self.index_path).name,
            "shape": list(self.shape),
            "names": list(names),
        }
        self.index_path.write_text(json.dumps(index))


class ArrayImageStore:
    """Reads images out of a store by name (see the module docstring for the layout).

    The array is memory-mapped on first use in each process and never pickled, so a store travels to
    DataLoader workers as its index alone.
    """

    def __init__(self, index_path: str | Path) -> None:
        self.index_path = Path(index_path)
        try:
            index = json.loads(self.index_path.read_text())
        except FileNotFoundError as err:
            raise ArrayStoreError(f"array store index not found: {self.index_path}") from err
        except json.JSONDecodeError as err:
            raise ArrayStoreError(f"{self.index_path}: not JSON ({err})") from err
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise ArrayStoreError(f"{self.index_path}: field 'format' is not {INDEX_FORMAT!r}")
        if index.get("version") != INDEX_VERSION:
            raise ArrayStoreError(
                f"{self.index_path}: version {index.get('version')!r}, expected {INDEX_VERSION}"
            )
        names = index.get("names")
        shape = index.get("shape")
        if not isinstance(names, list) or not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3:
            raise ArrayStoreError(
                f"{self.index_path}: fields 'names' (list) and 'shape' ([N, H, W, 3]) needed"
            )
        if len(names) != shape[0]:
            raise ArrayStoreError(f"{self.index_path}: {len(names)} names for {shape[0]} rows in 'shape'")
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.array_path = self.index_path.parent / str(index.get("array", array_path(self.index_path).name))
        self.rows = {image_key(name): row for row, name in enumerate(names)}
        self._array: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"ArrayImageStore({str(self.index_path)!r}, {self.shape[0]} images)"

    def __len__(self) -> int:
        return self.shape[0]

    def __contains__(self, name: str) -> bool:
        return image_key(name) in self.rows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # each process maps the file itself

    @property
    def array(self) -> np.ndarray:
        """The ``uint8 [N, H, W, 3]`` memory map (opened on first access)."""
        if self._array is None:
            try:
                array = np.load(self.array_path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise ArrayStoreError(f"{self.array_path}: cannot memory-map ({err})") from err
            if array.dtype != np.uint8 or array.shape != self.shape:
                raise ArrayStoreError(
                    f"{self.array_path}: holds {array.dtype} {array.shape}, the index says uint8 {self.shape}"
                )
            self._array = array
        return self._array

    def read(self, name: str) -> np.ndarray:
        """``uint8 [H, W, 3]`` pixels of ``name`` (a copy, writable)."""
        row = self.rows.get(image_key(name))
        if row is None:
            raise ImageLoadError(f"{self.index_path}[{name}]", "not in the array store")
        return np.array(self.array[row])

    def load(self, name: str) -> torch.Tensor:
        """``uint8 [3, H, W]``, the layout :func:`fashion_vl.data.images.read_image` gives."""
        return torch.from_numpy(self.read(name)).permute(2, 0, 1)
