"""fashion-vl: FashionViL and UniFashion as PyTorch Lightning modules and Hydra experiments.

Subpackages, one concern each, layered top-down (``docs/architecture.md``; ``lint-imports`` checks it):

- ``bench``, ``cli``: the benchmarks and the ``fvl-*`` entry points; ``search``: the catalogue index and
  its service; ``inference``: a checkpoint as a ready-to-use model (``fashion_vl.load``); ``build``:
  ``compose()`` and ``build(cfg)``, the one way from a config to a run; ``convert``: the authors'
  checkpoints -> ours.
- ``lit``: LightningModules (the task: objectives, metrics, optimisation) and callbacks; ``viz``: grids.
- ``metrics``: evaluation protocols (recall@K and friends), vectorised, device-agnostic.
- ``losses``: weight-free objectives, one protocol ``objective(net, batch, step)``.
- ``models``: pure ``nn.Module``s that own every weight (encoders, fusion, heads, branches).
- ``data``: on-disk format readers, datasets, collation, DataModules; ``prepare``, ``synth`` beside.
- ``dist``, ``hub``, ``optim``, ``utils``: ranks and gathers, offline-safe hub loading, parameter groups.

``fashion_vl.load(source)`` (``inference``: a checkpoint as a ready-to-use model) is imported on first
use, so ``import fashion_vl`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from fashion_vl.inference import load

        return load
    raise AttributeError(f"module 'fashion_vl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load"])
