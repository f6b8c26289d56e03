"""Attributes of synthetic garments and the rules that say which combinations exist."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

# name -> RGB; neutrals go with everything in an outfit
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (240, 240, 236),
    "grey": (128, 128, 132),
    "navy": (30, 40, 90),
    "beige": (214, 196, 160),
    "brown": (110, 70, 40),
    "red": (200, 30, 40),
    "pink": (236, 140, 170),
    "orange": (240, 130, 30),
    "yellow": (240, 210, 50),
    "green": (40, 140, 60),
    "blue": (50, 110, 210),
    "purple": (120, 60, 160),
}
NEUTRALS = ("black", "white", "grey", "navy", "beige", "brown")
ACCENTS = tuple(c for c in COLOURS if c not in NEUTRALS)

PATTERNS = ("solid", "striped", "checked", "dotted", "floral")
SLEEVES = ("sleeveless", "short sleeve", "long sleeve")
LENGTHS = ("mini", "midi", "maxi")
NECKLINES = ("crewneck", "v-neck", "collar", "turtleneck")
FITS = ("slim", "straight", "wide-leg")


@dataclass(frozen=True)
class SubCategory:
    """A garment type: the noun in titles, the drawing template, and allowed attribute values."""

    name: str  # noun used in titles ("t-shirt")
    kind: str  # drawing template: top, jacket, dress, skirt, pants, shoes, bag
    materials: tuple[str, ...]
    patterns: tuple[str, ...] = ("solid",)
    sleeves: tuple[str, ...] = ()
    lengths: tuple[str, ...] = ()
    necklines: tuple[str, ...] = ()
    fits: tuple[str, ...] = ()


_TOP_PATTERNS = ("solid", "striped", "checked", "dotted", "floral")

# FashionGen-style category name -> sub-categories. Ids are positions in these tables (stable).
TAXONOMY: dict[str, tuple[SubCategory, ...]] = {
    "TOPS": (
        SubCategory(
            "t-shirt",
            "top",
            ("cotton", "linen"),
            _TOP_PATTERNS,
            ("short sleeve",),
            (),
            ("crewneck", "v-neck"),
        ),
        SubCategory(
            "tank top", "top", ("cotton", "silk"), _TOP_PATTERNS, ("sleeveless",), (), ("crewneck", "v-neck")
        ),
        SubCategory("blouse", "top", ("silk", "cotton"), _TOP_PATTERNS, SLEEVES, (), ("v-neck", "collar")),
    ),
    "SHIRTS": (
        SubCategory(
            "shirt",
            "top",
            ("cotton", "linen"),
            ("solid", "striped", "checked"),
            ("short sleeve", "long sleeve"),
            (),
            ("collar",),
        ),
    ),
    "SWEATERS": (
        SubCategory(
            "sweater",
            "top",
            ("wool", "cashmere", "cotton"),
            ("solid", "striped"),
            ("long sleeve",),
            (),
            ("crewneck", "v-neck", "turtleneck"),
        ),
        SubCategory(
            "cardigan",
            "jacket",
            ("wool", "cashmere"),
            ("solid", "striped"),
            ("long sleeve",),
            (),
            ("v-neck",),
        ),
    ),
    "JACKETS & COATS": (
        SubCategory(
            "blazer", "jacket", ("wool", "linen"), ("solid", "checked"), ("long sleeve",), (), ("collar",)
        ),
        SubCategory(
            "jacket", "jacket", ("leather", "denim", "cotton"), ("solid",), ("long sleeve",), (), ("collar",)
        ),
        SubCategory(
            "coat",
            "jacket",
            ("wool", "cashmere"),
            ("solid", "checked"),
            ("long sleeve",),
            ("maxi",),
            ("collar",),
        ),
    ),
    "DRESSES": (
        SubCategory(
            "shift dress",
            "dress",
            ("cotton", "linen", "silk"),
            _TOP_PATTERNS,
            SLEEVES,
            LENGTHS,
            ("crewneck", "v-neck"),
        ),
        SubCategory(
            "a-line dress",
            "dress",
            ("cotton", "silk"),
            _TOP_PATTERNS,
            SLEEVES,
            LENGTHS,
            ("crewneck", "v-neck"),
        ),
    ),
    "SKIRTS": (
        SubCategory(
            "a-line skirt",
            "skirt",
            ("cotton", "denim", "leather"),
            ("solid", "checked", "floral"),
            (),
            LENGTHS,
        ),
        SubCategory(
            "pencil skirt", "skirt", ("wool", "leather", "cotton"), ("solid", "checked"), (), ("mini", "midi")
        ),
    ),
    "PANTS": (
        SubCategory(
            "trousers",
            "pants",
            ("wool", "cotton", "linen"),
            ("solid", "striped", "checked"),
            (),
            (),
            (),
            ("slim", "straight", "wide-leg"),
        ),
    ),
    "JEANS": (
        SubCategory("jeans", "pants", ("denim",), ("solid",), (), (), (), ("slim", "straight", "wide-leg")),
    ),
    "SHORTS": (
        SubCategory(
            "shorts",
            "shorts",
            ("cotton", "denim", "linen"),
            ("solid", "striped", "checked"),
            (),
            (),
            (),
            ("slim", "wide-leg"),
        ),
    ),
    "SHOES": (
        SubCategory("sneakers", "sneakers", ("canvas", "leather")),
        SubCategory("boots", "boots", ("leather", "suede")),
        SubCategory("heels", "heels", ("leather", "suede")),
    ),
    "BAGS": (
        SubCategory("tote bag", "tote", ("leather", "canvas")),
        SubCategory("clutch", "clutch", ("leather", "suede")),
        SubCategory("backpack", "backpack", ("canvas", "leather")),
    ),
}
CATEGORIES: tuple[str, ...] = tuple(TAXONOMY)
SUBCATEGORIES: tuple[tuple[str, SubCategory], ...] = tuple(
    (cat, sub) for cat, subs in TAXONOMY.items() for sub in subs
)
SUBCATEGORY_INDEX = {sub.name: i for i, (_, sub) in enumerate(SUBCATEGORIES)}
MATERIALS = tuple(sorted({m for _, s in SUBCATEGORIES for m in s.materials}))


def caption_vocabulary() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The colour words and sub-category names the synthetic product texts use: the vocabulary of
    :func:`fashion_vl.metrics.caption_attributes.caption_attribute_shares` on this data."""
    return tuple(COLOURS), tuple(sorted({sub.name for _, sub in SUBCATEGORIES}))


# Pseudo-attribute vocabulary: every value a text can name. ``attributes_id`` index into it.
ATTRIBUTE_VOCAB: tuple[str, ...] = (
    *COLOURS, *PATTERNS[1:], *MATERIALS, *SLEEVES, *LENGTHS, *NECKLINES, *FITS,
    *(sub.name for _, sub in SUBCATEGORIES),
)  # fmt: skip
ATTRIBUTE_INDEX = {a: i for i, a in enumerate(ATTRIBUTE_VOCAB)}


@dataclass(frozen=True)
class Garment:
    """One product's attributes; the renderer draws it and the text module describes it."""

    category: str
    sub: SubCategory
    colour: str
    pattern: str = "solid"
    accent: str = "white"  # second colour of a pattern
    material: str = "cotton"
    sleeve: str = ""
    length: str = ""
    neckline: str = ""
    fit: str = ""

    @property
    def category_id(self) -> int:
        return CATEGORIES.index(self.category)

    @property
    def subcategory_id(self) -> int:
        return SUBCATEGORY_INDEX[self.sub.name]

    def attribute_names(self) -> list[str]:
        names = [self.colour, self.material, self.sub.name]
        names += [v for v in (self.sleeve, self.length, self.neckline, self.fit) if v]
        if self.pattern != "solid":
            names.append(self.pattern)
        return names

    def attribute_ids(self) -> list[int]:
        return sorted({ATTRIBUTE_INDEX[n] for n in self.attribute_names()})

    def changed(self, rng: random.Random, fields: tuple[str, ...]) -> Garment:
        """A copy with each named attribute set to another value this sub-category allows."""
        updates = {}
        for name in fields:
            options = [v for v in allowed_values(self.sub, name) if v != getattr(self, name)]
            if not options:
                raise ValueError(f"{self.sub.name} has no alternative {name}")
            updates[name] = rng.choice(options)
        return replace(self, **updates)


def allowed_values(sub: SubCategory, name: str) -> tuple[str, ...]:
    return {
        "colour": tuple(COLOURS),
        "pattern": sub.patterns,
        "material": sub.materials,
        "sleeve": sub.sleeves,
        "length": sub.lengths,
        "neckline": sub.necklines,
        "fit": sub.fits,
    }[name]


def changeable_fields(sub: SubCategory) -> tuple[str, ...]:
    """Attributes that are visible in the picture and have alternatives."""
    return tuple(
        n
        for n in ("colour", "pattern", "sleeve", "length", "neckline", "fit")
        if len(allowed_values(sub, n)) > 1
    )


def sample_garment(
    rng: random.Random,
    subs: tuple[tuple[str, SubCategory], ...] = SUBCATEGORIES,
    colours: tuple[str, ...] = tuple(COLOURS),
) -> Garment:
    category, sub = rng.choice(subs)
    colour = rng.choice(colours)
    pattern = rng.choice(sub.patterns)
    return Garment(
        category=category,
        sub=sub,
        colour=colour,
        pattern=pattern,
        accent=rng.choice([c for c in ("white", "black", "beige", "navy", "red") if c != colour]),
        material=rng.choice(sub.materials),
        sleeve=rng.choice(sub.sleeves) if sub.sleeves else "",
        length=rng.choice(sub.lengths) if sub.lengths else "",
        neckline=rng.choice(sub.necklines) if sub.necklines else "",
        fit=rng.choice(sub.fits) if sub.fits else "",
    )


def subcategories_of(*kinds: str) -> tuple[tuple[str, SubCategory], ...]:
    return tuple((c, s) for c, s in SUBCATEGORIES if s.kind in kinds)


def luminance(colour: str) -> float:
    r, g, b = COLOURS[colour]
    return 0.299 * r + 0.587 * g + 0.114 * b
