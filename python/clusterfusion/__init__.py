"""ClusterFusion: fused batch-1 decode kernels for GPT-NeoX (Pythia) and Llama on Hopper GPUs (sm_90a).

Importing the package touches no GPU; KVCache, DecoderLayer and DecodeContext need one, a compute capability 9.0
GPU (H100/H200), and raise UnsupportedDeviceError without it (`require_hopper()` checks up front). torch is
optional: the kernels take any DLPack tensor, and only the transformers bridges (FusedLayer, from_transformers)
use torch.
"""

from ._C import (
    Activation,
    Architecture,
    CacheView,
    CudaError,
    DecodeContext,
    DecoderLayer,
    KVCache,
    ModelConfig,
    Norm,
    RopeScaling,
    RopeType,
    SamplingParams,
    UnsupportedDeviceError,
    __version__,
    model_names,
    reference_neox_layer,
    require_hopper,
    weight_schema,
)
from .config import config_from_transformers
from .engine import Engine, from_transformers
from .layer import FusedLayer, allocate_scratch

__all__ = [
    "Activation",
    "Architecture",
    "CacheView",
    "CudaError",
    "DecodeContext",
    "DecoderLayer",
    "Engine",
    "FusedLayer",
    "KVCache",
    "ModelConfig",
    "Norm",
    "RopeScaling",
    "RopeType",
    "SamplingParams",
    "UnsupportedDeviceError",
    "__version__",
    "allocate_scratch",
    "config_from_transformers",
    "from_transformers",
    "model_names",
    "reference_neox_layer",
    "require_hopper",
    "weight_schema",
]
