"""Hand-written data folders in the reference's formats, with tiny images for every referenced path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"


def _image_paths(root: Path) -> list[Path]:
    paths: list[Path] = []
    for dataset, split_dirs in (("FashionGen", {"train": "train", "val": "val"}), ("BigFACAD", None),
                                ("Fashion200k", None), ("PolyvoreOutfits", None)):  # fmt: skip
        for info in sorted((root / dataset).glob("*_info.json")):
            split = info.name.removesuffix("_info.json")
            image_dir = root / dataset / (split_dirs[split] if split_dirs else "images")
            for entry in json.loads(info.read_text()):
                images = entry["images"] if isinstance(entry["images"], list) else [entry["images"]]
                paths += [image_dir / name for name in images]
    for caption_file in sorted((root / "FashionIQ" / "captions").glob("cap.*.json")):
        for entry in json.loads(caption_file.read_text()):
            paths += [root / "FashionIQ" / "images" / f"{entry[k]}.jpg" for k in ("candidate", "target")]
    meta = root / "PolyvoreOutfits" / "polyvore_item_metadata.json"
    if meta.exists():
        paths += [
            root / "PolyvoreOutfits" / "images" / f"{item}.jpg" for item in json.loads(meta.read_text())
        ]
    return sorted(set(paths))


def make_fixture_data(dest: Path) -> Path:
    """Copy the hand-written annotation files to ``dest`` and draw a small image for each path."""
    shutil.copytree(FIXTURES, dest)
    for i, path in enumerate(_image_paths(dest)):
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256)
        Image.new("RGB", (40, 48), colour).save(path)
    return dest
