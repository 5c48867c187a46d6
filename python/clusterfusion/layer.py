"""FusedNeoXLayer: a transformers GPTNeoXLayer run by the fused kernels, with the scratch one step needs.

torch is imported where it is used: the package itself does not need it (NeoXLayer takes any DLPack tensor).
"""

from __future__ import annotations

from ._C import KVCache, ModelConfig, NeoXLayer

# NeoXLayer keyword -> the transformers GPTNeoXLayer parameter that fills it.
HF_PARAMETERS = {
    "ln1_weight": "input_layernorm.weight",
    "ln1_bias": "input_layernorm.bias",
    "ln2_weight": "post_attention_layernorm.weight",
    "ln2_bias": "post_attention_layernorm.bias",
    "w_qkv": "attention.query_key_value.weight",
    "b_qkv": "attention.query_key_value.bias",
    "w_o": "attention.dense.weight",
    "b_o": "attention.dense.bias",
    "w_up": "mlp.dense_h_to_4h.weight",
    "b_up": "mlp.dense_h_to_4h.bias",
    "w_down": "mlp.dense_4h_to_h.weight",
    "b_down": "mlp.dense_4h_to_h.bias",
}


def allocate_scratch(config: ModelConfig, device="cuda"):
    """The float32 buffers a step hands from its first phase to its second: (attn [hidden], mlp_act [ffn])."""
    import torch

    return (torch.empty(config.hidden, dtype=torch.float32, device=device),
            torch.empty(config.ffn, dtype=torch.float32, device=device))


class FusedNeoXLayer:
    """One GPT-NeoX layer on the fused kernels plus its own attn / mlp_act scratch (torch tensors).

    `weights` maps NeoXLayer's 12 keywords to CUDA float16 tensors; the layer reads them in place and keeps them
    alive.
    """

    def __init__(self, config: ModelConfig, max_seq: int, weights: dict):
        self.kernel = NeoXLayer(config, max_seq, **weights)
        self.attn, self.mlp_act = allocate_scratch(config, device=weights["w_qkv"].device)

    @classmethod
    def from_transformers(cls, hf_layer, config: ModelConfig, max_seq: int) -> "FusedNeoXLayer":
        """The layer of a transformers GPTNeoXLayer whose parameters are float16 on the GPU already (no copy
        is made: call model.half().cuda() first). TypeError / ValueError name the transformers parameter."""
        import torch

        params = dict(hf_layer.named_parameters())
        weights = {}
        for keyword, hf_name in HF_PARAMETERS.items():
            tensor = params.get(hf_name)
            if tensor is None:
                raise ValueError(f"hf_layer.{hf_name}: missing (expected a GPTNeoXLayer with biases)")
            if tensor.dtype != torch.float16 or tensor.device.type != "cuda":
                raise TypeError(f"hf_layer.{hf_name}: expected a float16 CUDA tensor, got {tensor.dtype} on "
                                f"{tensor.device} (convert the model first: model.half().cuda())")
            # torch exports no tensor that requires grad; the detached view shares the parameter's memory.
            weights[keyword] = tensor.detach()
        return cls(config, max_seq, weights)

    @property
    def config(self) -> ModelConfig:
        return self.kernel.config

    def forward(self, cache: KVCache, layer: int, x, position: int, out=None, mode: str = "split"):
        """One decode step of cache layer `layer` at `position` on torch's current stream; returns out
        ([hidden] float16, allocated when not given; it may be x itself)."""
        import torch

        if out is None:
            out = torch.empty_like(x)
        self.kernel.forward(cache, layer, x, out, self.attn, self.mlp_act, position, mode,
                            stream=torch.cuda.current_stream().cuda_stream)
        return out
