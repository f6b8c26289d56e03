"""Training objectives, one module each. Losses that need negatives from other ranks gather them here."""

from fashion_vl.losses.itc import ContrastiveLoss

__all__ = ["ContrastiveLoss"]
