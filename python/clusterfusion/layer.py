"""FusedLayer: a transformers decoder layer (GPTNeoXLayer, LlamaDecoderLayer) run by the fused kernels, with the
scratch one step needs.

torch is imported where it is used: the package itself does not need it (DecoderLayer takes any DLPack tensor).
"""

from __future__ import annotations

from ._C import DecoderLayer, KVCache, ModelConfig
from .weights import layer_weights


def allocate_scratch(config: ModelConfig, device="cuda"):
    """The buffers a step hands from phase to phase: attn [hidden] and mlp_act [ffn] float32, and h1 [hidden]
    float16 (x + attention; used by sequential-residual architectures)."""
    import torch

    return dict(attn=torch.empty(config.hidden, dtype=torch.float32, device=device),
                mlp_act=torch.empty(config.ffn, dtype=torch.float32, device=device),
                h1=torch.empty(config.hidden, dtype=torch.float16, device=device))


class FusedLayer:
    """One decoder layer on the fused kernels plus its own scratch (torch tensors).

    `weights` maps the schema's layer keywords (weight_schema(config)['layer']) to CUDA float16 tensors; the
    layer reads them in place and keeps them alive.
    """

    def __init__(self, config: ModelConfig, max_seq: int, weights: dict):
        self.kernel = DecoderLayer(config, max_seq, **weights)
        self.scratch = allocate_scratch(config, device=next(iter(weights.values())).device)

    @classmethod
    def from_transformers(cls, hf_layer, config: ModelConfig, max_seq: int) -> "FusedLayer":
        """The layer of a transformers decoder layer whose parameters are float16 on the GPU already (no copy is
        made: call model.half().cuda() first). TypeError / ValueError name the transformers parameter."""
        return cls(config, max_seq, layer_weights(hf_layer, config))

    @property
    def config(self) -> ModelConfig:
        return self.kernel.config

    def forward(self, cache: KVCache, layer: int, x, position: int, out=None, mode: str = "split"):
        """One decode step of cache layer `layer` at `position` on torch's current stream of x's device; returns
        out ([hidden] float16, allocated when not given; it may be x itself)."""
        import torch

        if out is None:
            out = torch.empty_like(x)
        self.kernel.forward(cache, layer, x, out, self.scratch["attn"], self.scratch["mlp_act"], position, mode,
                            h1=self.scratch["h1"], stream=torch.cuda.current_stream(x.device).cuda_stream)
        return out
