"""Synthetic VITON-HD: people wearing synthetic tops, in the StableVITON + MGD layout.

Each item is one person (a flat figure of head, torso, arms and legs on a plain background) wearing
one top drawn by :func:`~fashion_vl.data.synth.render.render`, and every file VITON-HD has for it
(see :mod:`fashion_vl.data.formats.vitonhd`):

* ``image/`` the person; ``agnostic-v3.2/`` the same with the garment area, slightly dilated, filled
  grey (128, 128, 128); ``agnostic-mask/`` that area in white;
* ``image-densepose/`` body parts coloured by part id on black (a stand-in for DensePose);
* ``cloth/`` the top alone on white at product view, ``cloth-mask/`` its silhouette;
* ``im_sketch/`` edges of the cloth image, white lines on black; for the test split also
  ``im_sketch_unpaired/<person>_<cloth>.png``, the sketch of the cloth that ``test_pairs.txt`` gives
  that person;
* ``captions.json`` (MGD form: phrases by the first 5 characters of the cloth name), and
  ``synthetic_attributes.json``, the attributes that drew each garment (colour, category, pattern,
  ...), for attribute classifiers trained on generated images.

Pictures are ``image_size`` high and 3/4 as wide (VITON-HD's 1024x768 is 4:3 portrait).
``train_pairs.txt`` is paired; ``test_pairs.txt`` gives each person another person's cloth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFilter

from fashion_vl.data.synth.render import View, _mask_extras, _px, render, silhouette
from fashion_vl.data.synth.taxonomy import Garment, sample_garment, subcategories_of

if TYPE_CHECKING:
    from fashion_vl.data.synth.generate import SizeSpec, Written

Point = tuple[float, float]
ROOT = "vitonhd"
GREY = (128, 128, 128)
SKINS = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))
HAIR = ((40, 30, 25), (90, 60, 30), (200, 160, 90), (20, 20, 20))
TROUSERS = ((30, 40, 90), (28, 28, 30), (214, 196, 160), (60, 90, 150))
BACKDROPS = ((235, 235, 240), (245, 240, 230), (225, 235, 245), (240, 228, 228))

# The body in units of the picture width (y down, the picture is 4/3 units high), laid out so that
# render()'s top templates (drawn in the unit square at the top) sit on its shoulders.
_ARM = [(0.32, 0.23), (0.14, 0.64), (0.19, 0.665), (0.34, 0.36)]
_LEG = [(0.35, 0.72), (0.497, 0.72), (0.48, 1.27), (0.38, 1.27)]
_FOOT = [(0.36, 1.26), (0.49, 1.26), (0.49, 1.30), (0.34, 1.30)]


def _mirror(points: list[Point]) -> list[Point]:
    return [(1.0 - x, y) for x, y in points]


# part id -> polygons (ellipses are given by their bounding box, 2 points)
BODY_PARTS: dict[int, list[list[Point]]] = {
    1: [[(0.32, 0.22), (0.68, 0.22), (0.66, 0.75), (0.34, 0.75)],  # torso and neck
        [(0.46, 0.17), (0.54, 0.17), (0.54, 0.24), (0.46, 0.24)]],
    2: [[(0.425, 0.025), (0.575, 0.205)]],  # head (ellipse)
    3: [_ARM], 4: [_mirror(_ARM)],
    5: [[(0.13, 0.65), (0.20, 0.72)]], 6: [[(0.80, 0.65), (0.87, 0.72)]],  # hands (ellipses)
    7: [_LEG], 8: [_mirror(_LEG)],
    9: [_FOOT], 10: [_mirror(_FOOT)],
}  # fmt: skip
PART_COLOURS = {1: (20, 80, 200), 2: (230, 200, 40), 3: (40, 180, 90), 4: (180, 40, 160),
                5: (240, 120, 30), 6: (30, 200, 200), 7: (200, 30, 40), 8: (120, 60, 200),
                9: (150, 150, 30), 10: (60, 120, 60)}  # fmt: skip
_ELLIPSES = {2, 5, 6}
_TROUSERS = [
    (0.34, 0.70),
    (0.66, 0.70),
    (0.63, 1.25),
    (0.515, 1.25),
    (0.50, 0.82),
    (0.485, 1.25),
    (0.37, 1.25),
]


@dataclass(frozen=True)
class TryOnJob:
    """Everything drawn for one VITON-HD item (several files); runs in the render pool."""

    split: str
    name: str  # "00006_00"
    garment: Garment
    seed: int
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    trousers: tuple[int, int, int]
    backdrop: tuple[int, int, int]
    sketch_copies: tuple[str, ...] = ()  # more paths (relative to the output root) for the cloth's sketch

    def write(self, root: Path, image_size: int) -> None:
        height, width = image_size, image_size * 3 // 4
        folder = root / ROOT / self.split
        files = draw_item(self, height, width)
        for sub, (img, suffix) in files.items():
            path = (
                folder / sub / (f"{self.name}_mask.png" if sub == "agnostic-mask" else f"{self.name}{suffix}")
            )
            _save(img, path)
        for rel in self.sketch_copies:
            _save(files["im_sketch"][0], root / rel)


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        img.save(path, format="PNG", compress_level=1)
    else:
        img.save(path, format="JPEG", quality=90)


def _draw_parts(draw: ImageDraw.ImageDraw, scale: float, colour_of) -> None:
    for part, polys in BODY_PARTS.items():
        for poly in polys:
            points = [(x * scale, y * scale) for x, y in poly]
            if part in _ELLIPSES:
                draw.ellipse(points, fill=colour_of(part))
            else:
                draw.polygon(points, fill=colour_of(part))


def garment_mask(g: Garment, size: int) -> Image.Image:
    """``L`` mask of the garment as :func:`render` draws it in a ``size``-square (soft edges)."""
    big = Image.new("L", (2 * size, 2 * size), 0)
    draw = ImageDraw.Draw(big)
    for poly in silhouette(g):
        draw.polygon(_px(poly, 2 * size), fill=255)
    _mask_extras(draw, g, 2 * size)
    return big.reduce(2)


def draw_item(job: TryOnJob, height: int, width: int) -> dict[str, tuple[Image.Image, str]]:
    """Folder name -> (picture, file suffix) for one item."""
    scale = 2 * width  # drawn at twice the size, then reduced
    body = Image.new("RGB", (2 * width, 2 * height), job.backdrop)
    draw = ImageDraw.Draw(body)
    _draw_parts(draw, scale, lambda part: job.skin)
    draw.polygon([(x * scale, y * scale) for x, y in _TROUSERS], fill=job.trousers)
    draw.chord([(0.42 * scale, 0.015 * scale), (0.58 * scale, 0.15 * scale)], 180, 360, fill=job.hair)
    person = body.reduce(2)

    soft = garment_mask(job.garment, width)  # [width, width], the top of the picture
    worn = render(job.garment, View(), width, job.seed)
    person.paste(worn, (0, 0), soft)

    mask = Image.new("L", (width, height), 0)
    mask.paste(soft.point(lambda v: 255 if v >= 128 else 0), (0, 0))
    mask = mask.filter(ImageFilter.MaxFilter(3))  # slightly dilated, as the real agnostic masks are
    agnostic = Image.composite(Image.new("RGB", person.size, GREY), person, mask)

    pose = Image.new("RGB", (2 * width, 2 * height), (0, 0, 0))
    _draw_parts(ImageDraw.Draw(pose), scale, PART_COLOURS.__getitem__)
    pose = pose.reduce(2)

    top = (height - width) // 2  # the product shot, centred on white
    cloth = Image.new("RGB", (width, height), (255, 255, 255))
    cloth.paste(render(job.garment, View(background=(255, 255, 255)), width, job.seed), (0, top))
    cloth_mask = Image.new("L", (width, height), 0)
    cloth_mask.paste(soft.point(lambda v: 255 if v >= 128 else 0), (0, top))
    edges = cloth.convert("L").filter(ImageFilter.FIND_EDGES)
    sketch = edges.point(lambda v: 255 if v > 24 else 0)
    return {
        "image": (person, ".jpg"),
        "agnostic-v3.2": (agnostic, ".jpg"),
        "agnostic-mask": (mask, ".png"),
        "image-densepose": (pose, ".jpg"),
        "cloth": (cloth, ".jpg"),
        "cloth-mask": (cloth_mask, ".jpg"),
        "im_sketch": (sketch, ".png"),
    }


_NECK = {"crewneck": "crew neck", "v-neck": "v-neck", "collar": "collar", "turtleneck": "turtleneck"}


def caption_phrases(g: Garment, rng: random.Random) -> list[str]:
    """MGD-style noun chunks: colour and garment, pattern, material, sleeves, neckline (shuffled
    after the first)."""
    phrases = [
        "solid color" if g.pattern == "solid" else f"{g.pattern} pattern",
        f"{g.material} fabric",
        "no sleeves" if g.sleeve == "sleeveless" else f"{g.sleeve}s",
    ]
    if g.neckline:
        phrases.append(_NECK[g.neckline])
    rng.shuffle(phrases)
    return [f"{g.colour} {g.sub.name}", *phrases]


def attributes(g: Garment, split: str) -> dict[str, object]:
    return dict(
        split=split,
        colour=g.colour,
        category=g.category,
        subcategory=g.sub.name,
        pattern=g.pattern,
        material=g.material,
        sleeve=g.sleeve,
        neckline=g.neckline,
        category_id=g.category_id,
        subcategory_id=g.subcategory_id,
        attributes_id=g.attribute_ids(),
    )


def _unique_ids(rng: random.Random, count: int, taken: set[int]) -> list[int]:
    ids = []
    while len(ids) < count:
        i = rng.randrange(10**5)
        if i not in taken:
            taken.add(i)
            ids.append(i)
    return sorted(ids)


def write_vitonhd(rng: random.Random, spec: SizeSpec) -> Written:
    """VITON-HD (StableVITON layout + MGD sketches and captions) with ``spec.vitonhd`` train/test people."""
    from fashion_vl.data.synth.generate import Written  # generate imports this module

    out = Written()
    tops = subcategories_of("top")
    taken: set[int] = set()
    captions: dict[str, list[str]] = {}
    sidecar: dict[str, dict[str, object]] = {}
    for split, count in zip(("train", "test"), spec.vitonhd):
        names = [f"{i:05d}_00" for i in _unique_ids(rng, count, taken)]
        garments = {n: sample_garment(rng, tops) for n in names}
        if split == "test" and count > 1:  # each person gets another's cloth (a derangement)
            order = names[:]
            rng.shuffle(order)
            cloth_of = {order[k]: order[(k + 1) % count] for k in range(count)}
        else:
            cloth_of = {n: n for n in names}
        worn_by = {c: p for p, c in cloth_of.items()}
        for n in names:
            g = garments[n]
            copies = ()
            if worn_by[n] != n:
                copies = (f"{ROOT}/{split}/im_sketch_unpaired/{worn_by[n]}_{n}.png",)
            seed = rng.getrandbits(31)
            looks = (rng.choice(SKINS), rng.choice(HAIR), rng.choice(TROUSERS), rng.choice(BACKDROPS))
            out.jobs.append(TryOnJob(split, n, g, seed, *looks, sketch_copies=copies))
            captions[n[:5]] = caption_phrases(g, rng)
            sidecar[f"{n}.jpg"] = attributes(g, split)
            out.texts.append(", ".join(captions[n[:5]]))
        out.files[f"{ROOT}/{split}_pairs.txt"] = "".join(f"{p}.jpg {cloth_of[p]}.jpg\n" for p in names)
        out.counts[f"{ROOT}/{split}"] = count
    out.files[f"{ROOT}/captions.json"] = captions
    out.files[f"{ROOT}/synthetic_attributes.json"] = sidecar
    return out
