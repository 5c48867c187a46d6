"""ClusterFusion: fused batch-1 decode kernels for GPT-NeoX (Pythia) on Hopper GPUs (sm_90a).

Importing the package touches no GPU; KVCache and NeoXLayer need one. torch is optional: the kernels take
any DLPack tensor, and only FusedNeoXLayer (the transformers bridge) uses torch.
"""

from ._C import (
    Activation,
    Architecture,
    CacheView,
    CudaError,
    KVCache,
    ModelConfig,
    NeoXLayer,
    Norm,
    __version__,
    reference_neox_layer,
)
from .config import config_from_transformers
from .layer import FusedNeoXLayer, allocate_scratch

__all__ = [
    "Activation",
    "Architecture",
    "CacheView",
    "CudaError",
    "FusedNeoXLayer",
    "KVCache",
    "ModelConfig",
    "NeoXLayer",
    "Norm",
    "__version__",
    "allocate_scratch",
    "config_from_transformers",
    "reference_neox_layer",
]
