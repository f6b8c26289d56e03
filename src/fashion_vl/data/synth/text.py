"""Texts that describe synthetic garments, in each dataset's style.

What a text says comes from the garment's attributes (the signal); the phrasing, the order and the
filler sentences vary at random (the noise), as in real catalogue copy.
"""

from __future__ import annotations

import random

from fashion_vl.data.synth.taxonomy import Garment, luminance

BRANDS = (
    "Aldo",
    "Boden",
    "Cora",
    "Dunes",
    "Elm & Oak",
    "Fenwick",
    "Gala",
    "Hale",
    "Ivo",
    "Juno",
    "Kite",
    "Lark",
)
FILLERS = (
    "Tonal stitching",
    "Logo at chest",
    "Made in Italy",
    "Dry clean only",
    "Unlined",
    "Logo patch at back",
    "Signature hardware",
    "Machine washable",
)
_PATTERN_PHRASE = {"striped": "Striped pattern throughout", "checked": "Check pattern throughout",
                   "dotted": "Polka dot print throughout", "floral": "Floral print throughout"}  # fmt: skip
_NECK_PHRASE = {
    "crewneck": "Crewneck collar",
    "v-neck": "V-neck",
    "collar": "Spread collar",
    "turtleneck": "Turtleneck",
}


def title(g: Garment, *, with_colour: bool = True) -> str:
    """FashionGen-style title: ``Navy wool blazer``; patterns sometimes lead (``Striped cotton t-shirt``)."""
    words = [g.colour] if with_colour else []
    if g.pattern != "solid":
        words.insert(0, g.pattern)
    words += [g.material, g.sub.name]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def description(g: Garment, rng: random.Random) -> str:
    """FashionGen-style description: attribute sentences in random order, one or two fillers."""
    lead = " ".join(w for w in (g.sleeve, g.length, g.fit, g.material, g.sub.name) if w)
    sentences = [f"{lead[0].upper()}{lead[1:]} in {g.colour}"]
    extra = []
    if g.pattern != "solid":
        extra.append(_PATTERN_PHRASE[g.pattern])
    if g.neckline:
        extra.append(_NECK_PHRASE[g.neckline])
    if g.sub.kind in ("pants", "shorts"):
        extra.append(rng.choice(("Belt loops at waistband", "Four-pocket styling", "Zip fly")))
    if g.sub.kind == "jacket":
        extra.append(rng.choice(("Button closure at front", "Two flap pockets", "Welt pockets at waist")))
    extra += rng.sample(FILLERS, k=rng.randint(1, 2))
    rng.shuffle(extra)
    return ". ".join(sentences + extra) + "."


def facad_fields(g: Garment, rng: random.Random) -> tuple[str, str, str]:
    """BigFACAD: a separate colour, a colourless title and a free-style description."""
    adjective = rng.choice(("soft", "classic", "relaxed", "tailored", "lightweight", "cosy"))
    bits = [f"a {adjective} {g.sub.name}"]
    if g.pattern != "solid":
        bits.append(f"with a {g.pattern} pattern")
    if g.sleeve:
        bits.append(f"with {g.sleeve}s" if g.sleeve != "sleeveless" else "without sleeves")
    if g.length:
        bits.append(f"in a {g.length} length")
    return g.colour, title(g, with_colour=False), " ".join(bits)


def fashion200k_title(g: Garment) -> str:
    """Fashion200k: lower-case attribute words then the noun (``black sleeveless a-line dress``)."""
    words = [g.colour]
    for value in (g.pattern if g.pattern != "solid" else "", g.sleeve, g.length, g.fit):
        if value:
            words.append(value.replace(" ", "-"))
    words.append(g.sub.name)
    return " ".join(words)


def polyvore_fields(g: Garment, rng: random.Random) -> tuple[str, str]:
    """Polyvore: ``Brand material noun`` title and a short description."""
    name = f"{rng.choice(BRANDS)} {g.colour} {g.material} {g.sub.name}"
    detail = [g.pattern if g.pattern != "solid" else "", g.sleeve, g.length, g.neckline, g.fit]
    return name, ", ".join(d for d in detail if d) or rng.choice(FILLERS).lower()


def relative_captions(
    source: Garment, target: Garment, changed: tuple[str, ...], rng: random.Random
) -> list[str]:
    """Two FashionIQ-style captions saying how ``target`` differs from ``source``."""
    phrases = [_change_phrases(source, target, field) for field in changed]
    if len(phrases) == 1:
        a, b = rng.sample(phrases[0], k=2)
        return [a, b]
    return [rng.choice(phrases[0]), rng.choice(phrases[1])]


def _change_phrases(source: Garment, target: Garment, field: str) -> list[str]:
    new = getattr(target, field)
    if field == "colour":
        darker = luminance(target.colour) < luminance(source.colour)
        return [f"is {new}", f"is {new} in color", f"is {'darker' if darker else 'lighter'} and {new}",
                f"is {new} instead of {source.colour}"]  # fmt: skip
    if field == "pattern":
        if new == "solid":
            return ["is solid colored", "has no pattern", "is plain with no print"]
        return [f"has a {new} pattern", f"is {new}", f"has {new} print"]
    if field == "sleeve":
        if new == "sleeveless":
            return ["is sleeveless", "has no sleeves", "is without sleeves"]
        return [f"has {new}s", f"is {new}", f"has {new.split()[0]} sleeves"]
    if field == "length":
        order = ("mini", "midi", "maxi")
        shorter = order.index(new) < order.index(getattr(source, field))
        return [f"is {'shorter' if shorter else 'longer'}", f"is {new} length", f"is a {new}"]
    if field == "neckline":
        return [f"has a {new}", f"is {new}", f"has {new} neckline"]
    if field == "fit":
        return [f"is {new}", f"has a {new} fit", f"is more {new}"]
    raise ValueError(field)


def llava_caption(g: Garment, rng: random.Random, degenerate: bool = False) -> str:
    """A Fashion-IQ-Cap style caption: leading newline, chatty, sometimes a degenerate repetition."""
    text = f"\nThe image shows a {g.colour} {g.sub.name}"
    details = []
    if g.pattern != "solid":
        details.append(f"a {g.pattern} pattern")
    if g.sleeve:
        details.append(g.sleeve + "s" if g.sleeve != "sleeveless" else "no sleeves")
    if g.neckline:
        details.append(f"a {g.neckline}")
    if details:
        text += " with " + " and ".join(details)
    text += f". It is made of {g.material} and has a {rng.choice(('casual', 'elegant', 'relaxed', 'fitted'))} style."
    if degenerate:
        word = rng.choice(("fitted", "stylish", "comfortable"))
        text += " " + ", ".join([word] * 40)
    return text
