"""Dress Code multimodal (MGD's release over Dress Code; ``docs/reference.md`` UniFashion §5).

The reference only says: per-category folders ``dresses/``, ``upper_body/``, ``lower_body/`` with
``images/``, masks/label maps, ``keypoints/``, sketches, a captions JSON and pairs files per split.
What this reader assumes, following the Dress Code and MGD releases::

    <root>/<category>/train_pairs.txt, test_pairs_paired.txt, test_pairs_unpaired.txt
                                            lines "<id>_0.jpg <id>_1.jpg" (person, in-shop garment)
    <root>/<category>/images/<id>_0.jpg     the person;  images/<id>_1.jpg  the garment
                     label_maps/<id>_4.png  human parsing (one label per pixel)
                     dense/<id>_5.png       DensePose part ids (0 = background)
                     keypoints/<id>_2.json  OpenPose keypoints (kept in the record, not read)
                     im_sketch/<cloth stem>.png, im_sketch_unpaired/<person stem>_<cloth stem>.png
    <root>/fine_captions.json               {"<id>": ["phrase", ...]} (MGD); keys are the cloth
                                            name up to its first "_"

Choices where the release differs from VITON-HD:

* If a category has no pairs file of its own, the root-level file of the same name is read and its
  third column (Dress Code's category id: 0 upper_body, 1 lower_body, 2 dresses) selects the lines.
* ``paired``/``unpaired`` pick ``test_pairs_paired.txt``/``test_pairs_unpaired.txt`` for test;
  train always reads ``train_pairs.txt``.
* There is no agnostic image or inpainting mask on disk: the mask is the label-map pixels of the
  garment's classes plus the body parts it covers (:data:`MASK_LABELS`, a simplification of MGD's
  mask, without its bounding-box variant), and the agnostic image is the person greyed there.
* There is no cloth mask: it is the non-white pixels of the in-shop image.
* DensePose is the part-id map; the dataset colours it with a fixed palette.
* Captions: the first present of ``fine_captions.json``, ``coarse_captions.json``, ``captions.json``
  (MGD drops garments with fewer than three phrases; here they keep what they have).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from fashion_vl.data.formats._json import MissingDataFileError
from fashion_vl.data.formats._tryon import TryOnRecord, check_mode, find_captions, read_pairs

log = logging.getLogger(__name__)

DRESSCODE_CATEGORIES = ("dresses", "upper_body", "lower_body")
DRESSCODE_CATEGORY_IDS = {"0": "upper_body", "1": "lower_body", "2": "dresses"}
# Dress Code label map: 4 upper clothes, 5 skirt, 6 pants, 7 dress, 12/13 legs, 14/15 arms.
MASK_LABELS: dict[str, tuple[int, ...]] = {
    "upper_body": (4, 14, 15),
    "lower_body": (5, 6, 12, 13),
    "dresses": (4, 5, 6, 7, 12, 13, 14, 15),
}
_HINT = "Download Dress Code and MGD's multimodal additions (captions, sketches) into this layout."


def _pairs_name(split: str, mode: str) -> str:
    return "train_pairs.txt" if split == "train" else f"test_pairs_{mode}.txt"


def read_dresscode(
    root: str | Path,
    split: str,
    mode: str = "paired",
    categories: Sequence[str] = DRESSCODE_CATEGORIES,
    sketch_dir: str | None = "im_sketch",
    unpaired_sketch_dir: str | None = "im_sketch_unpaired",
    captions: str | Path | None = None,
) -> list[TryOnRecord]:
    """The records of one split, category by category in the order given, pairs-file order within.

    Args: as :func:`~fashion_vl.data.formats.vitonhd.read_vitonhd`, with ``categories`` a subset of
    :data:`DRESSCODE_CATEGORIES` and sketch folders under ``<root>/<category>/``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Dress Code split must be train or test, not {split!r}")
    check_mode(mode)
    unknown = sorted(set(categories) - set(DRESSCODE_CATEGORIES))
    if unknown:
        raise ValueError(f"Dress Code categories must be among {DRESSCODE_CATEGORIES}, not {unknown}")
    root = Path(root).expanduser()
    table = find_captions(root, captions, ("fine_captions.json", "coarse_captions.json", "captions.json"))
    name = _pairs_name(split, mode)
    records, uncaptioned = [], 0
    for category in categories:
        folder = root / category
        if not (folder / "images").is_dir():
            raise MissingDataFileError(f"Dress Code image folder not found: {folder / 'images'}\n{_HINT}")
        if (folder / name).is_file():
            rows = [cols for _, cols in read_pairs(folder / name, dataset="Dress Code", hint=_HINT)]
        else:
            rows = [
                cols
                for _, cols in read_pairs(root / name, dataset="Dress Code", hint=_HINT, max_columns=3)
                if len(cols) < 3 or DRESSCODE_CATEGORY_IDS.get(cols[2]) == category
            ]
        for person, cloth, *_ in rows:
            pid, cid = Path(person).stem, Path(cloth).stem
            number = pid.rsplit("_", 1)[0]
            caption = table.get(cloth)
            uncaptioned += caption is None
            if person.split("_")[0] == cloth.split("_")[0] or unpaired_sketch_dir is None:
                sketch = None if sketch_dir is None else folder / sketch_dir / f"{cid}.png"
            else:
                sketch = folder / unpaired_sketch_dir / f"{pid}_{cid}.png"
            records.append(
                TryOnRecord(
                    dataset="dresscode",
                    split=split,
                    person=person,
                    cloth=cloth,
                    image=folder / "images" / person,
                    cloth_image=folder / "images" / cloth,
                    caption=caption or "",
                    densepose=folder / "dense" / f"{number}_5.png",
                    densepose_labels=True,
                    sketch=sketch,
                    label_map=folder / "label_maps" / f"{number}_4.png",
                    mask_labels=MASK_LABELS[category],
                    keypoints=folder / "keypoints" / f"{number}_2.json",
                    category=category,
                )
            )
    if uncaptioned and len(table):
        log.warning("Dress Code %s: %d of %d garments have no caption in %s (empty text)",
                    split, uncaptioned, len(records), table.path)  # fmt: skip
    return records
