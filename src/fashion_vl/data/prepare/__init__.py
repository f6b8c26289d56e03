"""``fvl-data prepare``: converters from the official dataset releases to our data folder layout.

Each converter lives in its own module (``fashiongen``, ``fashioniq``, ...) and exposes

* ``DESCRIPTION``: the ``--help`` text, stating which official files it reads and any assumption
  about their layout;
* ``add_arguments(parser)``: converter-specific options (``--raw`` and ``--out`` are added for it);
* ``convert(raw, out, args, progress) -> dict[str, int]``: writes the dataset under ``out`` through
  :func:`fashion_vl.data.prepare.staging.staged_output` (never a half dataset) and returns counts
  for the summary table.

Modules are imported lazily so ``fvl-data --help`` does not pay for h5py and friends.
"""

from __future__ import annotations

import importlib
from types import ModuleType

CONVERTERS: dict[str, str] = {
    "fashiongen": "fashion_vl.data.prepare.fashiongen",
    "fashioniq": "fashion_vl.data.prepare.fashioniq",
    "fashioniq_cap": "fashion_vl.data.prepare.fashioniq_cap",
    "fashion200k": "fashion_vl.data.prepare.fashion200k",
    "polyvore": "fashion_vl.data.prepare.polyvore",
    "bigfacad": "fashion_vl.data.prepare.bigfacad",
}


def load_converter(name: str) -> ModuleType:
    if name not in CONVERTERS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(CONVERTERS))}")
    return importlib.import_module(CONVERTERS[name])
