"""Graph passes of the onnxcomp pipeline: select weights, prune, share (codebooks), pack (rewrite + records,
or standard-op codebook lookups for the portable format).

Each pass is a small class named VerbNounPass with keyword-only options; calling it on a
``CompressionState`` returns a ``PassResult`` whose ``modified`` flag says whether it changed anything.
``Pipeline`` runs a list of passes in order.

Layer: the graph layer. Besides the passes it holds ``model_io`` (reading and writing models with their sidecars)
and ``calibration`` (collecting layer inputs with onnxruntime). Imports ``onnxcomp.core``, never the pipeline or
front layers.
"""

from .base import CompressionState, PassResult, Pipeline, WeightTarget
from .allocate_weights import AllocateWeightsPass
from .calibrate_weights import CalibrateWeightsPass
from .pack_portable import PackPortableWeightsPass
from .pack_weights import PackWeightsPass
from .prune_weights import PruneWeightsPass
from .reconstruct_weights import ReconstructWeightsPass
from .select_weights import SelectWeightsPass
from .share_weights import ShareWeightsPass

__all__ = [
    "CompressionState", "PassResult", "Pipeline", "WeightTarget",
    "SelectWeightsPass", "AllocateWeightsPass", "CalibrateWeightsPass", "PruneWeightsPass", "ReconstructWeightsPass", "ShareWeightsPass",
    "PackWeightsPass", "PackPortableWeightsPass",
]
