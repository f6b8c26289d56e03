"""Entry points: ``fvl-train``, ``fvl-eval`` (Hydra) and ``fvl-data`` (argparse)."""
