"""fashion-vl: FashionViL and UniFashion as PyTorch Lightning modules and Hydra experiments.

Subpackages, one concern each:

- ``models``: pure ``nn.Module``s (encoders, fusion, heads); no Lightning, no data I/O.
- ``losses``: one module per training objective; distributed gathering lives here.
- ``metrics``: evaluation protocols (recall@K and friends), vectorised, device-agnostic.
- ``data``: on-disk format readers, datasets, collation, DataModules, the synthetic generator.
- ``lit``: LightningModules (the task: losses, metrics, optimisation) and callbacks.
- ``cli``: the ``fvl-train``, ``fvl-eval`` and ``fvl-data`` entry points.
"""

__version__ = "0.1.0"
