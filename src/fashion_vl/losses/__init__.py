"""Training objectives, one module each. Losses that need negatives from other ranks gather them here.

Pre-training objectives share one interface: ``objective(net, batch, generator) -> {"loss": ..., metrics}``;
each is built from the network (``Objective(net, **config)``) because its head reads the encoder's
sizes (and MLM ties its decoder to the word embeddings).
"""

from fashion_vl.losses.itc import ContrastiveLoss, ItcLoss
from fashion_vl.losses.itm import ItmLoss
from fashion_vl.losses.mlm import MlmLoss
from fashion_vl.losses.mpfc import MpfcLoss
from fashion_vl.losses.mvc import MvcLoss
from fashion_vl.losses.pac import PacLoss

__all__ = ["ContrastiveLoss", "ItcLoss", "ItmLoss", "MlmLoss", "MpfcLoss", "MvcLoss", "PacLoss"]
