"""VITON-HD in the StableVITON layout, with MGD's multimodal additions (reference unifashion.md §5).

::

    <root>/train_pairs.txt, test_pairs.txt     lines "person.jpg cloth.jpg"
    <root>/<split>/image/<person>              the person (1024x768 on disk)
                  agnostic-v3.2/<person>       person with the garment area greyed
                  agnostic-mask/<stem>_mask.png  white = the area to paint
                  cloth/<cloth>, cloth-mask/<cloth>
                  image-densepose/<person>     DensePose rendered as RGB
                  im_sketch/<cloth stem>.png   (MGD) garment sketch, white lines on black
                  im_sketch_unpaired/<person stem>_<cloth stem>.png   (MGD, test) unpaired sketches
    <root>/captions.json                       (MGD) {"<first 5 chars>": ["phrase", ...]}
    <root>/datasetcap.<split>.caption.json     (UniFashion) {"<id>_00.jpg": "caption"}

The original code hard-codes where sketches and captions live; here they are arguments:
``sketch_dir``/``unpaired_sketch_dir`` are folders under ``<root>/<split>/`` (MGD's names by default,
``None``: no sketches, zeros), ``captions`` a file relative to ``root`` (default: ``captions.json``
if present, else ``datasetcap.<split>.caption.json``, else no captions).

Modes (StableVITON's convention): ``paired`` puts on each person their own garment, the cloth of the
same file name (the reconstruction setting, with ground truth); ``unpaired`` takes the cloth from
the pairs file's second column. VITON-HD's ``test_pairs.txt`` is already unpaired (each person with
another person's garment) and ``train_pairs.txt`` is paired, so ``unpaired`` on train is paired.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fashion_vl.data.formats._json import MissingDataFileError
from fashion_vl.data.formats._tryon import CaptionTable, TryOnRecord, check_mode, find_captions, read_pairs

log = logging.getLogger(__name__)

VITONHD_SPLITS = ("train", "test")
_HINT = (
    "Download VITON-HD (StableVITON layout) and MGD's multimodal additions into it, or write synthetic "
    "data in this layout with `fvl-data synth --only vitonhd --out <data_dir>` (written to "
    "<data_dir>/vitonhd)."
)


def read_vitonhd(
    root: str | Path,
    split: str,
    mode: str = "paired",
    sketch_dir: str | None = "im_sketch",
    unpaired_sketch_dir: str | None = "im_sketch_unpaired",
    captions: str | Path | None = None,
) -> list[TryOnRecord]:
    """The records of one split, in pairs-file order.

    Args:
        root: the VITON-HD folder (``<data_dir>/vitonhd``).
        split: ``train`` or ``test``.
        mode: ``paired`` or ``unpaired`` (see the module docstring).
        sketch_dir, unpaired_sketch_dir: sketch folders under ``<root>/<split>/``; ``None`` for none.
        captions: captions file relative to ``root`` (or absolute); ``None``: the first present of
            ``captions.json`` and ``datasetcap.<split>.caption.json``, else empty captions.

    Only the pairs file, the caption file and the split's ``image/`` folder are checked here; the
    images are checked when loaded (or by :func:`~fashion_vl.data.formats._tryon.missing_files`).
    """
    if split not in VITONHD_SPLITS:
        raise ValueError(f"VITON-HD split must be one of {VITONHD_SPLITS}, not {split!r}")
    check_mode(mode)
    root = Path(root).expanduser()
    rows = read_pairs(root / f"{split}_pairs.txt", dataset="VITON-HD", hint=_HINT)
    folder = root / split
    if not (folder / "image").is_dir():
        raise MissingDataFileError(f"VITON-HD image folder not found: {folder / 'image'}\n{_HINT}")
    table = find_captions(root, captions, ("captions.json", f"datasetcap.{split}.caption.json"))
    records, uncaptioned = [], 0
    for _, (person, listed) in rows:
        cloth = person if mode == "paired" else listed
        caption = table.get(cloth)
        uncaptioned += caption is None
        records.append(
            TryOnRecord(
                dataset="vitonhd",
                split=split,
                person=person,
                cloth=cloth,
                image=folder / "image" / person,
                cloth_image=folder / "cloth" / cloth,
                caption=caption or "",
                agnostic=folder / "agnostic-v3.2" / person,
                agnostic_mask=folder / "agnostic-mask" / f"{Path(person).stem}_mask.png",
                cloth_mask=folder / "cloth-mask" / cloth,
                densepose=folder / "image-densepose" / person,
                sketch=_sketch(folder, person, cloth, sketch_dir, unpaired_sketch_dir),
            )
        )
    if uncaptioned and len(table):
        log.warning("VITON-HD %s: %d of %d garments have no caption in %s (empty text)",
                    split, uncaptioned, len(records), table.path)  # fmt: skip
    elif not len(table):
        log.info("VITON-HD %s: no captions file under %s; every caption is empty", split, root)
    return records


def _sketch(
    folder: Path, person: str, cloth: str, paired_dir: str | None, unpaired_dir: str | None
) -> Path | None:
    """MGD's naming: the cloth's own sketch when the person wears it, else one per (person, cloth)."""
    if person == cloth or unpaired_dir is None:
        return None if paired_dir is None else folder / paired_dir / f"{Path(cloth).stem}.png"
    return folder / unpaired_dir / f"{Path(person).stem}_{Path(cloth).stem}.png"


def vitonhd_captions(
    root: str | Path, captions: str | Path | None = None, split: str = "train"
) -> CaptionTable:
    """The caption table :func:`read_vitonhd` would use."""
    root = Path(root).expanduser()
    return find_captions(root, captions, ("captions.json", f"datasetcap.{split}.caption.json"))
