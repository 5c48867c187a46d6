"""ClusterFusion: fused batch-1 decode kernels for GPT-NeoX (Pythia) on Hopper GPUs (sm_90a).

Importing the package touches no GPU; KVCache, NeoXLayer and DecodeContext need one. torch is optional: the
kernels take any DLPack tensor, and only the transformers bridges (FusedNeoXLayer, from_transformers) use torch.
"""

from ._C import (
    Activation,
    Architecture,
    CacheView,
    CudaError,
    DecodeContext,
    KVCache,
    ModelConfig,
    NeoXLayer,
    Norm,
    SamplingParams,
    __version__,
    reference_neox_layer,
)
from .config import config_from_transformers
from .engine import Engine, from_transformers
from .layer import FusedNeoXLayer, allocate_scratch

__all__ = [
    "Activation",
    "Architecture",
    "CacheView",
    "CudaError",
    "DecodeContext",
    "Engine",
    "FusedNeoXLayer",
    "KVCache",
    "ModelConfig",
    "NeoXLayer",
    "Norm",
    "SamplingParams",
    "__version__",
    "allocate_scratch",
    "config_from_transformers",
    "from_transformers",
    "reference_neox_layer",
]
