"""Training objectives, one module each. Losses that need negatives from other ranks gather them here.

Pre-training objectives share one interface: ``objective(net, batch, generator) -> {"loss": ..., metrics}``;
each is built from the network (``Objective(net, **config)``) because its head reads the encoder's
sizes (and MLM ties its decoder to the word embeddings). UniFashion's objectives take the step's shared
passes too: ``objective(net, encoding, batch, generator)`` (the frozen ViT runs once per step).
"""

from fashion_vl.losses.caption import CaptionLoss
from fashion_vl.losses.composed import ComposedItcLoss, ComposedItmLoss, TargetItmLoss, TtcLoss
from fashion_vl.losses.itc import ContrastiveLoss, ItcLoss, MultiQueryContrastiveLoss, QueryItcLoss
from fashion_vl.losses.itg import ItgLoss
from fashion_vl.losses.itm import ItmLoss, QueryItmLoss
from fashion_vl.losses.mlm import MlmLoss
from fashion_vl.losses.mpfc import MpfcLoss
from fashion_vl.losses.mvc import MvcLoss
from fashion_vl.losses.pac import PacLoss

__all__ = [
    "CaptionLoss",
    "ComposedItcLoss",
    "ComposedItmLoss",
    "ContrastiveLoss",
    "ItcLoss",
    "ItgLoss",
    "ItmLoss",
    "MlmLoss",
    "MpfcLoss",
    "MultiQueryContrastiveLoss",
    "MvcLoss",
    "PacLoss",
    "QueryItcLoss",
    "QueryItmLoss",
    "TargetItmLoss",
    "TtcLoss",
]
