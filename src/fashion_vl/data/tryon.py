"""Virtual try-on data for UniFashion's editing branch: VITON-HD and Dress Code (multimodal).

Each item (:class:`TryOnDataset`), at ``(height, width)``:

=============  =====================  ===============================================================
key            type                   meaning
=============  =====================  ===============================================================
image          uint8 ``[3,H,W]``      the person (the model maps it to [-1, 1] on the device)
agnostic       uint8 ``[3,H,W]``      the person with the area to paint greyed
agnostic_mask  float ``[1,H,W]``      1 = area to paint, 0 elsewhere (thresholded at 128 of 255)
densepose      float ``[3,H,W]``      DensePose rendering in [-1, 1] (zeros, i.e. mid-grey, if the record
                                      has none: no uint8 value is exactly 0 in [-1, 1], so it stays float)
cloth          uint8 ``[3,H,W]``      the in-shop garment
cloth_mask     float ``[1,H,W]``      1 on the garment (thresholded at 128)
sketch         float ``[1,H,W]``      garment sketch in [0, 1], 1 = line (MGD's convention)
caption        ``str``                garment caption ("" when none)
person_id      ``str``                person image file name
cloth_id       ``str``                cloth image file name
bad_images     ``list[str]``          files skipped while building the item
=============  =====================  ===============================================================

Images are resized (bilinear, antialiased) to ``(height, width)``; masks are resized the same way
and then thresholded at 128, label maps by nearest neighbour. With ``flip`` (training) every map of
an item is mirrored together with probability 1/2, the decision drawn from the sample's seed. A
mirrored DensePose image keeps its colours, so its left/right part codes swap sides.

An item with a missing or corrupt file is replaced by another index drawn from the sample's seed,
with a logged warning and the path in ``bad_images``, at most ``max_consecutive_failures`` times
(:class:`~fashion_vl.data.datasets.ImageReader`; ``strict`` raises at once).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fashion_vl.data.base import FashionDataModule
from fashion_vl.data.collate import TextTokenizer
from fashion_vl.data.datasets import ImageReader, as_key
from fashion_vl.data.formats._tryon import TryOnRecord, check_mode
from fashion_vl.data.formats.dresscode import read_dresscode
from fashion_vl.data.formats.vitonhd import read_vitonhd
from fashion_vl.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, open_image
from fashion_vl.data.samplers import SampleKey

log = logging.getLogger(__name__)

AGNOSTIC_GREY = 128
TRYON_READERS = {"vitonhd": read_vitonhd, "dresscode": read_dresscode}
# Colours for DensePose part ids (0 background .. 24), for part-id maps (Dress Code).
_PALETTE = np.array(
    [(0, 0, 0)] + [((37 * i) % 256, (97 * i + 60) % 256, (151 * i + 120) % 256) for i in range(1, 25)],
    dtype=np.uint8,
)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def read_image_resized(
    path: Path,
    mode: str,
    size: tuple[int, int],
    resample: str = "bilinear",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` in PIL ``mode`` (``RGB``, ``L``, or ``labels`` for a label map kept as is) and
    resize to ``size = (height, width)``; ``uint8 [H,W(,3)]``. Failures, and images above
    ``max_pixels``, raise :class:`ImageLoadError`."""
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    height, width = size
    try:
        with open_image(path, max_pixels) as img:
            img.load()
            if mode == "labels":
                img = img if img.mode in ("L", "P") else img.convert("L")
            else:
                img = img.convert(mode)
            if img.size != (width, height):
                img = img.resize((width, height), _RESAMPLE[resample])
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise ImageLoadError(path, f"cannot decode ({type(err).__name__}: {str(err)[:120]})") from err


def _signed(rgb: np.ndarray) -> torch.Tensor:  # uint8 [H,W,3] -> float [3,H,W] in [-1, 1]
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _pixels(rgb: np.ndarray) -> torch.Tensor:  # uint8 [H,W,3] -> uint8 [3,H,W]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def _binary(mask: np.ndarray) -> torch.Tensor:  # bool/uint8 [H,W] -> float [1,H,W] in {0, 1}
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))[None]


class TryOnDataset(Dataset):
    """Try-on items from :class:`~fashion_vl.data.formats._tryon.TryOnRecord` (either dataset).

    Args:
        records: from :func:`~fashion_vl.data.formats.vitonhd.read_vitonhd` or
            :func:`~fashion_vl.data.formats.dresscode.read_dresscode`.
        size: ``(height, width)``; the reference uses 512x384 (the files are 1024x768).
        flip: mirror each item with probability 1/2 (training).
        reader: bad-image policy (``strict``, ``max_consecutive_failures``).
    """

    def __init__(
        self,
        records: Sequence[TryOnRecord],
        size: tuple[int, int] = (512, 384),
        flip: bool = False,
        reader: ImageReader | None = None,
    ) -> None:
        if not records:
            raise ValueError("no try-on records")
        self.records = list(records)
        self.size = (int(size[0]), int(size[1]))
        self.flip = flip
        self.reader = reader or ImageReader()

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: TryOnRecord) -> dict[str, torch.Tensor]:
        """The tensors of one record, unflipped; raises :class:`ImageLoadError` on a bad file."""
        size = self.size
        read_resized = functools.partial(read_image_resized, max_pixels=self.reader.max_pixels)
        person = read_resized(record.image, "RGB", size)
        if record.agnostic_mask is not None:
            mask = read_resized(record.agnostic_mask, "L", size) >= 128
        elif record.label_map is not None:
            mask = np.isin(read_resized(record.label_map, "labels", size, "nearest"), record.mask_labels)
        else:
            raise ImageLoadError(record.image, "record has neither an agnostic mask nor a label map")
        if record.agnostic is not None:
            agnostic = read_resized(record.agnostic, "RGB", size)
        else:
            agnostic = np.where(mask[..., None], np.uint8(AGNOSTIC_GREY), person)
        if record.densepose is None:
            densepose = torch.zeros(3, *size)
        elif record.densepose_labels:
            densepose = _signed(_PALETTE[read_resized(record.densepose, "labels", size, "nearest") % 25])
        else:
            densepose = _signed(read_resized(record.densepose, "RGB", size))
        cloth = read_resized(record.cloth_image, "RGB", size)
        if record.cloth_mask is not None:
            cloth_mask = read_resized(record.cloth_mask, "L", size) >= 128
        else:
            cloth_mask = cloth.min(axis=2) < 240  # in-shop garments are shot on white
        if record.sketch is not None:
            sketch = torch.from_numpy(read_resized(record.sketch, "L", size)).float().div(255.0)[None]
        else:
            sketch = torch.zeros(1, *size)
        return {
            "image": _pixels(person),
            "agnostic": _pixels(agnostic),
            "agnostic_mask": _binary(mask),
            "densepose": densepose,
            "cloth": _pixels(cloth),
            "cloth_mask": _binary(cloth_mask),
            "sketch": sketch,
        }

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        key = as_key(key)
        rng = random.Random(key.seed)
        bad: list[str] = []
        index, tensors = self.reader.load_or_replace(
            lambda i: self.load(self.records[i]), key.index, len(self), rng, bad, "try-on"
        )
        record = self.records[index]
        if self.flip and rng.random() < 0.5:
            tensors = {k: v.flip(-1) for k, v in tensors.items()}
        return {
            **tensors,
            "caption": record.caption,
            "person_id": record.person,
            "cloth_id": record.cloth,
            "bad_images": bad,
        }


def collate_tryon(samples: Sequence[Mapping[str, Any]], text: TextTokenizer | None = None) -> dict[str, Any]:
    """Stack the tensors (``[B,C,H,W]``); strings become lists; ``bad_images`` is concatenated. With
    ``text``, the captions are also tokenised (``input_ids``, ``attention_mask``)."""
    batch: dict[str, Any] = {}
    for k, v in samples[0].items():
        if torch.is_tensor(v):
            batch[k] = torch.stack([s[k] for s in samples])
        elif k == "bad_images":
            batch[k] = [path for s in samples for path in s[k]]
        else:
            batch[k] = [s[k] for s in samples]
    if text is not None:
        batch.update(text(batch["caption"]))
    return batch


class TryOnDataModule(FashionDataModule):
    """VITON-HD or Dress Code try-on batches (:func:`collate_tryon`; keys in the module docstring).

    VITON-HD and Dress Code have no validation split: validation reads the test split paired (with
    ground truth), test reads it in ``test_mode``. Training reads train paired, flipped if ``flip``.

    Args:
        dataset: ``vitonhd`` or ``dresscode``.
        data_dir: the dataset's folder (``<data_dir>/vitonhd``).
        height, width: item size (reference: 512x384).
        test_mode: ``paired`` or ``unpaired`` (the standard VITON-HD/Dress Code evaluation).
        format_options: keyword arguments of the reader (``sketch_dir``, ``unpaired_sketch_dir``,
            ``captions``; Dress Code also ``categories``).
        max_items: keep the first N records of each split (smoke runs).
        Others as :class:`~fashion_vl.data.base.FashionDataModule`. ``tokenizer: none`` (the
        default) leaves the captions as raw strings for the diffusion branch's own text encoder; a
        tokenizer (the Q-Former's) also gives ``input_ids`` / ``attention_mask`` of the captions for
        the sketch-and-caption query encoder.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        height: int = 512,
        width: int = 384,
        test_mode: str = "unpaired",
        flip: bool = True,
        format_options: Mapping[str, Any] | None = None,
        max_items: int | None = None,
        **common: Any,
    ) -> None:
        if dataset not in TRYON_READERS:
            raise ValueError(f"data.dataset must be one of {sorted(TRYON_READERS)}, not {dataset!r}")
        check_mode(test_mode)
        common.setdefault("tokenizer", "none")
        common.setdefault("train_transform", None)
        common.setdefault("eval_transform", None)
        super().__init__(**common)
        self.dataset = dataset
        self.data_dir = Path(data_dir).expanduser()
        self.size = (height, width)
        self.test_mode = test_mode
        self.flip = flip
        self.format_options = dict(format_options or {})
        self.max_items = max_items
        self.train_set: TryOnDataset | None = None
        self.val_set: TryOnDataset | None = None
        self.test_set: TryOnDataset | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        return None if self.tokenizer_name in (None, "none") else super().tokenizer

    def records(self, split: str, mode: str) -> list[TryOnRecord]:
        records = TRYON_READERS[self.dataset](self.data_dir, split, mode, **self.format_options)
        return records[: self.max_items] if self.max_items else records

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = TryOnDataset(self.records("train", "paired"), self.size, self.flip, self.reader)
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = TryOnDataset(self.records("test", "paired"), self.size, False, self.reader)
        if stage in ("test", None) and self.test_set is None:
            self.test_set = TryOnDataset(self.records("test", self.test_mode), self.size, False, self.reader)

    def _loader(self, dataset: TryOnDataset | None, train: bool) -> StatefulDataLoader:
        if dataset is None:
            raise RuntimeError("call setup() for this stage first")
        text = None if self.tokenizer is None else self.text
        return self.make_loader(dataset, functools.partial(collate_tryon, text=text), train=train)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.test_set, False)
