"""Training objectives, one module each, and the losses they are built from. Losses that need negatives
from other ranks gather them (``fashion_vl.dist``).

Every objective follows one protocol (:mod:`fashion_vl.losses.objective`): a weight-free module called
as ``objective(net, batch, step) -> {"loss": ..., metrics}``; it reads its head from the network
(``net.heads[...]``, ``net.qformer``) and, where the task shares passes between objectives (UniFashion),
the step's ``step.encoding``; random choices come from ``step.generator``.
"""

from fashion_vl.losses.caption import CaptionLoss
from fashion_vl.losses.composed import (
    ComposedItcLoss,
    ComposedItmLoss,
    ItmOnModificationText,
    TargetItmLoss,
    TtcLoss,
)
from fashion_vl.losses.itc import ContrastiveLoss, ItcLoss, MultiQueryContrastiveLoss, QueryItcLoss
from fashion_vl.losses.itg import ItgLoss
from fashion_vl.losses.itm import ItmLoss, QueryItmLoss
from fashion_vl.losses.mlm import MlmLoss
from fashion_vl.losses.mpfc import MpfcLoss
from fashion_vl.losses.mvc import MvcLoss
from fashion_vl.losses.objective import Objective, StepContext
from fashion_vl.losses.pac import PacLoss

__all__ = [
    "CaptionLoss",
    "ComposedItcLoss",
    "ComposedItmLoss",
    "ContrastiveLoss",
    "ItcLoss",
    "ItgLoss",
    "ItmLoss",
    "ItmOnModificationText",
    "MlmLoss",
    "MpfcLoss",
    "MultiQueryContrastiveLoss",
    "MvcLoss",
    "Objective",
    "PacLoss",
    "QueryItcLoss",
    "QueryItmLoss",
    "StepContext",
    "TargetItmLoss",
    "TtcLoss",
]
