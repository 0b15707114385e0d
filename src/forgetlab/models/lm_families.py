"""Causal language models built from a config for ``forgetlab pretrain``: Hugging Face classes, so a
checkpoint loads with ``AutoModelForCausalLM`` and as a ``forgetlab run`` backbone.

Families: a GPT-2-style Transformer, an LSTM (``lstm_lm.py``, parameters ``lstm_params``) and a
Mixtral-style mixture of experts. Sizes share the width/depth presets of the from-config backbones
(an LSTM ignores ``heads``). A GPT-2-style preset's parameter
count is exact: ``gpt2_params`` below; the embedding tables are tied to the LM head.
"""
from __future__ import annotations

from torch import nn

from ..config import LMConfig
from ..errors import UserError
from .backbones import PRESETS


def build_lm(cfg: LMConfig, vocab_size: int, pad_id: int, eos_id: int) -> nn.Module:
    """A freshly initialised causal LM of ``cfg.arch`` at preset ``cfg.size``."""
    if cfg.size not in PRESETS:
        raise UserError(f"model.size: unknown preset '{cfg.size}' (presets: {', '.join(PRESETS)})")
    dim, layers, heads = (given or preset for given, preset in zip((cfg.dim, cfg.layers, cfg.heads), PRESETS[cfg.size]))
    if cfg.arch != "lstm" and dim % heads:
        raise UserError(f"model.dim: {dim} is not divisible by {heads} heads")
    special = {"pad_token_id": pad_id, "bos_token_id": eos_id, "eos_token_id": eos_id}
    if cfg.arch == "lstm":
        from .lstm_lm import LSTMForCausalLM, LSTMLMConfig

        return LSTMForCausalLM(LSTMLMConfig(vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=layers,
                                            **special))
    if cfg.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=cfg.seq_len, n_embd=dim, n_layer=layers,
                                          n_head=heads, tie_word_embeddings=True, **special))
    from transformers import MixtralConfig, MixtralForCausalLM

    if cfg.experts_per_token > cfg.experts:
        raise UserError("model.experts_per_token: more than model.experts")
    # SwiGLU experts (3·d·I parameters each) of I = 8·d / (3·k), rounded to a multiple of 8 (the grouped
    # expert kernels need rows of 16-byte multiples): the MLP parameters active per token equal the
    # dense 8·d² of the GPT-2 preset of the same size, to within that rounding.
    intermediate = 8 * max(1, round(8 * dim / (3 * cfg.experts_per_token) / 8))
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=vocab_size, hidden_size=dim, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        num_local_experts=cfg.experts, num_experts_per_tok=cfg.experts_per_token,
        max_position_embeddings=cfg.seq_len, tie_word_embeddings=True, **special))


def gpt2_params(vocab_size: int, positions: int, dim: int, layers: int) -> int:
    """Parameters of a tied GPT-2: token and position embeddings, per layer 12·d² + 13·d (attention
    4·d² + 4·d, MLP 8·d² + 5·d, two layer norms 4·d), and the final layer norm 2·d."""
    return vocab_size * dim + positions * dim + layers * (12 * dim * dim + 13 * dim) + 2 * dim


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside the token and position embeddings (Kaplan et al.'s N)."""
    embeds = {id(model.get_input_embeddings().weight)}
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    if positions is not None:
        embeds.add(id(positions.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in embeds)
