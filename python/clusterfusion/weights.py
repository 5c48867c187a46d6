"""A transformers model's parameters as the library's weights, by the weight schema (`_C.weight_schema`): the
one place that maps transformers' parameter names to the kernels' keywords. Tensors are shared, not copied.

torch is imported where it is used: the package itself does not need it.
"""

from __future__ import annotations

from ._C import ModelConfig, weight_schema


def _cuda_half(tensor, name):
    import torch

    if tensor.dtype != torch.float16 or tensor.device.type != "cuda":
        raise TypeError(f"{name}: expected a float16 CUDA tensor, got {tensor.dtype} on {tensor.device} (load the "
                        "model with dtype=torch.float16, then .cuda())")
    return tensor.detach()  # torch exports no tensor that requires grad; the view shares the parameter's memory


def _pick(params: dict, names, where: str, convert):
    for name in names:
        if name and name in params:
            return convert(params[name], f"{where}{name}")
    raise ValueError(f"{where}{names[0]}: missing (the model's parameters do not match the weight schema)")


def layer_weights(hf_layer, config: ModelConfig, convert=_cuda_half, where: str = "hf_layer.") -> dict:
    """The layer keywords of a transformers decoder layer (GPTNeoXLayer, LlamaDecoderLayer): its parameters
    through `convert(tensor, name)` (default: a detached float16 CUDA view). ValueError / TypeError name the
    transformers parameter."""
    params = dict(hf_layer.named_parameters())
    return {spec["name"]: _pick(params, [spec["hf_name"]], where, convert)
            for spec in weight_schema(config)["layer"]}


def model_weights(model, config: ModelConfig, convert=_cuda_half) -> dict:
    """DecodeContext's keywords for a transformers causal LM (GPTNeoXForCausalLM, LlamaForCausalLM): the model
    tensors and `layers`, one dict per layer. A tied LM head is the embedding itself."""
    schema = weight_schema(config)
    params = dict(model.named_parameters())  # a tied head is listed once, as the embedding
    weights = {}
    for spec in schema["model"]:
        names = [spec["hf_name"]]
        if spec["name"] == "lm_head":
            names.append(schema["lm_head_alias"])
            if config.tied_embeddings:
                names.append(next(s["hf_name"] for s in schema["model"] if s["name"] == "embed_in"))
        weights[spec["name"]] = _pick(params, names, "", convert)
    weights["layers"] = [
        {spec["name"]: _pick(params, [f"{schema['layer_prefix']}{i}.{spec['hf_name']}"], "", convert)
         for spec in schema["layer"]}
        for i in range(config.layers)
    ]
    return weights
