# Makes conf/ importable as ``fashion_vl.conf`` (pyproject maps it), so Hydra finds the configs
# with ``pkg://fashion_vl.conf`` from an editable install and from a wheel alike.
