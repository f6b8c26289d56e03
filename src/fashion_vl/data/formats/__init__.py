"""Readers for the datasets' on-disk formats (``docs/reference.md`` FashionViL §4).

Each reader validates every field it uses and raises :class:`MissingDataFileError` or
:class:`DataFormatError` naming the file, the entry and the field, and the command that produces it.
"""

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError
from fashion_vl.data.formats.fashioniq import FASHIONIQ_CATEGORIES, read_fashioniq
from fashion_vl.data.formats.polyvore import (
    POLYVORE_RAW_CATEGORY_IDS,
    read_ocir,
    read_polyvore_metadata,
)
from fashion_vl.data.formats.products import (
    FASHIONGEN_CLASSES,
    NUM_PSEUDO_ATTRIBUTES,
    BigFACADSource,
    Fashion200kSource,
    FashionGenSource,
    PolyvoreItemSource,
    ProductSource,
)

__all__ = [
    "FASHIONGEN_CLASSES",
    "FASHIONIQ_CATEGORIES",
    "NUM_PSEUDO_ATTRIBUTES",
    "POLYVORE_RAW_CATEGORY_IDS",
    "BigFACADSource",
    "DataFormatError",
    "Fashion200kSource",
    "FashionGenSource",
    "MissingDataFileError",
    "PolyvoreItemSource",
    "ProductSource",
    "read_fashioniq",
    "read_ocir",
    "read_polyvore_metadata",
]
