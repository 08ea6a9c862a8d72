"""Operations: the primitive table of each space and the mixed operations over them.

``OPS`` maps an op name to a factory ``(C, stride, affine) -> nn.Module`` (the DARTS convention);
``MIXED_OPS`` maps a mixed-op name (``weighted``, ...) to the module that combines candidates on a
supernet edge.
"""

from raynas.ops import (
    convnext,  # noqa: F401 (registers the ConvNeXt-style DARTS operations)
    morphological,  # noqa: F401 (registers the morphological DARTS operations)
    nb201,  # noqa: F401 (registers the NAS-Bench-201 convolutions)
    robust,  # noqa: F401 (registers RobustDARTS's noise operation)
)
from raynas.ops.attention import AttentionPartialMixedOp
from raynas.ops.darts import OPS, PRIMITIVES, FactorizedReduce, Identity, ReLUConvBN, Zero
from raynas.ops.mixed import MIXED_OPS, WeightedMixedOp
from raynas.ops.partial import PartialChannelMixedOp, channel_shuffle
from raynas.ops.sampled import SampledMixedOp

__all__ = [
    "MIXED_OPS",
    "OPS",
    "PRIMITIVES",
    "AttentionPartialMixedOp",
    "FactorizedReduce",
    "Identity",
    "PartialChannelMixedOp",
    "ReLUConvBN",
    "SampledMixedOp",
    "WeightedMixedOp",
    "Zero",
    "channel_shuffle",
]
