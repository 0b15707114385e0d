"""Training memory per GPU from a parameter count: the model states (weights, gradients, AdamW's two
moments, an fp32 master copy where one is kept) under each way of spreading a run over GPUs.

The formula is the ZeRO paper's (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", SC 2020, section 3.1 and figure 1): mixed-precision Adam holds
2Ψ + 2Ψ + 12Ψ bytes for Ψ parameters (16-bit weights, 16-bit gradients, fp32 master weights, momentum
and variance); stage 1 divides the 12Ψ by the number of GPUs, stage 2 the gradients too, stage 3 the
weights too (FSDP's full shard is stage 3). Each term here takes the dtype the run really stores
(``PRECISIONS``), and only trainable parameters have gradients and optimizer state (LoRA).

It is hand-written because no maintained library computes it offline for these strategies:
``accelerate estimate-memory`` fetches the model from the hub, covers one GPU, and reports the largest
single term rather than the sum (docs/scaling.md compares the two for a 7B model).

Activations are not in it: they grow with batch × length and depend on the attention kernel.
``checkpointed_activations`` gives the part gradient checkpointing keeps; ``scripts/device_check.py``
measures the rest on a GPU.
"""
from __future__ import annotations

GiB = 2 ** 30

# bytes per parameter: (weights, gradients, AdamW moments, master copy), for trainable parameters
# (frozen ones store weights only)
PRECISIONS = {
    "fp32": (4, 4, 8, 0),          # train.precision: fp32
    "bf16": (4, 4, 8, 0),          # train.precision: bf16 = autocast over fp32 weights: the same states
    "bf16-master": (2, 2, 8, 4),   # bf16 weights and gradients, fp32 master and moments (DeepSpeed's bf16, the ZeRO paper's 2+2+12)
    "bf16-pure": (2, 2, 4, 0),     # backbone.dtype: bfloat16: torch's AdamW keeps its moments in the weights' dtype
}

# the terms each strategy divides by the number of GPUs
SHARDED = {
    "single": (),
    "ddp": (),
    "fsdp": ("weights", "gradients", "optimizer", "master"),
    "zero1": ("optimizer", "master"),
    "zero2": ("gradients", "optimizer", "master"),
    "zero3": ("weights", "gradients", "optimizer", "master"),
}
DEEPSPEED = ("zero1", "zero2", "zero3")


def training_memory(parameters: float, *, strategy: str = "single", world_size: int = 1, precision: str = "fp32",
                    trainable: float | None = None, bucket_view: bool = False) -> dict[str, float]:
    """GiB per GPU of each model state, and their ``total``, for ``parameters`` weights of which
    ``trainable`` (default: all) are trained with AdamW.

    - One process (``world_size`` 1) runs no strategy, as forgetlab ignores ``train.distributed`` there.
    - ``ddp`` replicates everything and, unless ``bucket_view`` (DDP's ``gradient_as_bucket_view``),
      keeps its all-reduce buckets beside the gradients: one more copy of them (``buffers``).
    - DeepSpeed (``zero1``-``zero3``) always keeps its own fp32 partition of the trainable weights for
      the optimizer, even when the model's weights are fp32 (``master``).
    - Not counted: activations, FSDP's and ZeRO-3's gathered (unsharded) layers in flight, DeepSpeed's
      communication buckets, the CUDA context and the allocator's fragmentation.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if strategy not in SHARDED:
        raise ValueError(f"strategy: expected one of {', '.join(SHARDED)}, got {strategy!r}")
    if world_size < 1:
        raise ValueError(f"world_size: expected at least 1, got {world_size}")
    trainable = parameters if trainable is None else trainable
    if not 0 <= trainable <= parameters:
        raise ValueError(f"trainable: expected between 0 and {parameters:g}, got {trainable:g}")
    if world_size == 1:
        strategy = "single"
    weight, grad, moments, master = PRECISIONS[precision]
    if strategy in DEEPSPEED:
        if precision == "bf16-pure":
            raise ValueError("precision: DeepSpeed keeps an fp32 master copy; bf16-master is its bf16 mode")
        master = 4
    states = {"weights": parameters * weight, "gradients": trainable * grad,
              "optimizer": trainable * moments, "master": trainable * master}
    for key in SHARDED[strategy]:
        states[key] /= world_size
    states["buffers"] = trainable * grad if strategy == "ddp" and not bucket_view else 0.0
    states["total"] = sum(states.values())
    return {k: v / GiB for k, v in states.items()}


def checkpointed_activations(tokens: int, *, hidden: int, layers: int, bytes_per_value: int = 4) -> float:
    """GiB that gradient checkpointing keeps from the forward to the backward: every decoder layer's
    input, ``hidden`` values a token. The residual stream stays fp32 under forgetlab's bf16 autocast (the
    embedding output is fp32 and each residual sum promotes to it), hence 4 bytes. A lower bound of the
    peak: the layer being recomputed and the logits (vocabulary × tokens) come on top."""
    return tokens * hidden * layers * bytes_per_value / GiB


def count_parameters(config, causal: bool = True) -> int:
    """Parameters of the model a transformers config describes (with its LM head when ``causal``),
    built on the meta device: no memory used, nothing downloaded; tied weights counted once."""
    return sum(p.numel() for p in meta_model(config, causal).parameters())


def meta_model(config, causal: bool = True):
    """The model ``config`` describes, its tensors on the meta device (shapes without storage)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        return (AutoModelForCausalLM if causal else AutoModel).from_config(config)


def lora_parameters(model, r: int, targets: list[str] | None = None) -> int:
    """Parameters LoRA of rank ``r`` adds to ``model``: r × (inputs + outputs) per adapted linear layer
    (A is r × inputs, B outputs × r), for the layers whose name ends with a target (peft's rule); no
    targets: peft's default for the model's family (q_proj and v_proj for Llama)."""
    from torch import nn

    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        targets = DEFAULTS[model.config.model_type]
    total = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] not in targets:
            continue
        if isinstance(module, nn.Linear):
            total += r * (module.in_features + module.out_features)
        elif type(module).__name__ == "Conv1D":          # GPT-2's fused projections: weight is inputs × outputs
            total += r * sum(module.weight.shape)
        else:
            raise ValueError(f"{name}: LoRA counts linear layers only, not {type(module).__name__}")
    return total
