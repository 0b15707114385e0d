"""Backbones: text in, one feature vector per text out.

Pretrained Hugging Face encoders (pooling CLS or mean) and causal LMs (last non-padding token),
and small models built from a config (GPT-2-style, BERT-style, LSTM) with width/depth presets.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..config import BackboneConfig
from ..errors import UserError
from . import offline
from .tokenizer import ByteTokenizer

# Width/depth presets for models built from a config: (hidden size, layers, attention heads).
PRESETS = {
    "nano": (32, 1, 2),
    "tiny": (64, 2, 2),
    "small": (128, 4, 4),
    "medium": (256, 6, 4),
    "base": (512, 8, 8),
    "large": (768, 12, 12),
}
PRETRAINING_RECORD = "forgetlab_pretraining.json"     # in a `forgetlab pretrain` checkpoint folder


class Backbone(nn.Module):
    """Wraps a model and its tokenizer; ``forward(ids, mask)`` returns pooled features [B, dim].

    ``model`` is the transformer body (what methods wrap and adapt); a causal LM also has its output
    layer ``lm_head`` (hidden states -> vocabulary logits), which shares its weight with the body's
    input embedding where the model ties them (GPT-2). ``n_parameters`` counts the body and an untied
    head (a tied head's weight is the embedding's, counted once)."""

    def __init__(self, model: nn.Module, tokenizer, pooling: str, max_length: int, dim: int, source: str,
                 lm_head: nn.Module | None = None, pretraining: dict | None = None,
                 offline_copy: dict | None = None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.lm_head = lm_head
        self.causal = lm_head is not None
        self.pooling, self.max_length, self.dim, self.source = pooling, max_length, dim, source
        self.pad_id = _pad_id(tokenizer)
        self.pretraining = pretraining      # a forgetlab checkpoint's record: step, tokens, validation perplexity
        self.offline_copy = offline_copy    # a converted offline copy's origin (models/offline.py)
        self.n_parameters = sum(p.numel() for p in self.parameters())    # as loaded, before any method adds some

    def describe(self, init: str) -> dict:
        """results.json's ``backbone``: where it came from, how it was initialised, its size and pretraining
        (and ``offline_copy``, the origin of a converted offline copy, when one stood in for the hub)."""
        record = {"source": self.source, "init": init, "parameters": self.n_parameters,
                  "pretraining": self.pretraining if init == "pretrained" else {"step": 0, "tokens": 0}}
        return record | ({"offline_copy": self.offline_copy} if self.offline_copy else {})

    def tokenize(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids, each text cut to ``max_length`` (default: the backbone's ``max_length``)."""
        if not texts:
            return []
        max_length = max_length or self.max_length
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.encode_batch(texts, max_length)
        return self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def lm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V] of a causal LM from its output layer; virtual tokens prompt
        tuning prepends get none."""
        if self.lm_head is None:
            raise UserError(f"backbone: {self.source} is an encoder; next-token logits need a causal LM")
        return self.lm_head(self.hidden_states(input_ids, attention_mask))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's hidden states [B, L, dim], one per input token (packed rows pass their
        4D mask and positions)."""
        extra = {} if position_ids is None else {"position_ids": position_ids}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return hidden[:, hidden.size(1) - input_ids.size(1):]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]    # drop virtual tokens prompt tuning prepends
        return pool(hidden, attention_mask, self.pooling)

    def layer_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       layers: list[int]) -> list[torch.Tensor]:
        """Pooled features of the given hidden states (0: the embeddings; negative counts from the end)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        return [pool(states[k][:, states[k].size(1) - input_ids.size(1):], attention_mask, self.pooling) for k in layers]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters bottom-up: the embeddings first, then one group per layer."""
        layers = layer_list(self.model)
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        embed = [p for n, p in self.model.named_parameters()
                 if id(p) not in in_layers and any(k in n for k in ("emb", "wte", "wpe"))]
        return [embed] + [list(layer.parameters()) for layer in layers]

    def fingerprint(self) -> str:
        """A hash of the weights and of everything that shapes the features (the cache key)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.source}|{self.pooling}|{self.max_length}".encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """CLS (first token), masked mean, or last non-padding token (inputs are right-padded)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    last = mask.sum(1).long().clamp_min(1) - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class LSTMEncoder(nn.Module):
    """Embedding + multi-layer LSTM; returns ``last_hidden_state`` like a Hugging Face model."""

    def __init__(self, vocab_size: int, dim: int, layers: int):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.layers = nn.ModuleList(nn.LSTM(dim, dim, batch_first=True) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        x = self.embeddings(input_ids)
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        for lstm in self.layers:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            x, _ = lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=input_ids.size(1))
        return _Hidden(x)


class _Hidden:
    def __init__(self, last_hidden_state):
        self.last_hidden_state = last_hidden_state


def build_backbone(cfg: BackboneConfig) -> Backbone:
    backbone = _pretrained(cfg) if cfg.name else _from_config(cfg)
    if cfg.dropout is not None:
        set_dropout(backbone, cfg.dropout)
    return backbone if cfg.name or cfg.dtype == "auto" else backbone.to(getattr(torch, cfg.dtype))


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout of ``module`` set to ``p``: its ``nn.Dropout`` layers, and the float attributes
    transformers' attention reads its dropout from (``attention_dropout``, ``dropout``)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, p)


def _from_config(cfg: BackboneConfig) -> Backbone:
    if cfg.size not in PRESETS:
        raise UserError(f"backbone.size: unknown preset '{cfg.size}' (presets: {', '.join(PRESETS)})")
    dim, layers, heads = PRESETS[cfg.size]
    tok = ByteTokenizer()
    source = f"{cfg.arch}-{cfg.size}"
    if cfg.arch == "lstm":
        return Backbone(LSTMEncoder(tok.vocab_size, dim, layers), tok, cfg.pooling or "mean", cfg.max_length, dim, source)
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    if cfg.arch == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=tok.vocab_size, n_positions=cfg.max_length, n_embd=dim,
                                     n_layer=layers, n_head=heads, bos_token_id=1, eos_token_id=2))
        return Backbone(model, tok, cfg.pooling or "last", cfg.max_length, dim, source, lm_head=tied_lm_head(model))
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=dim, num_hidden_layers=layers,
                                 num_attention_heads=heads, intermediate_size=4 * dim,
                                 max_position_embeddings=cfg.max_length, pad_token_id=0), add_pooling_layer=False)
    return Backbone(model, tok, cfg.pooling or "mean", cfg.max_length, dim, source)


def resolve_model_path(name: str) -> str:
    """``name``, or the local folder of its offline copy (``offline.py``) when one stands in for the hub."""
    return offline.offline_path(name) or name


def _pretrained(cfg: BackboneConfig) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from . import lstm_lm  # noqa: F401  (registers forgetlab's LSTM LM with the Auto classes)
    from .causal_lm import load_causal_lm

    hf_logging.disable_progress_bar()

    path = resolve_model_path(cfg.name)
    kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        hf_cfg = AutoConfig.from_pretrained(path, **kw)
        causal = cfg.kind == "causal_lm" or (cfg.kind == "auto" and is_causal_config(hf_cfg))
        if not causal:
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
            if cfg.init == "random":        # the architecture only, initialised from torch's (seeded) generator
                model = AutoModel.from_config(hf_cfg, trust_remote_code=cfg.trust_remote_code,
                                              **({} if cfg.dtype == "auto" else {"dtype": cfg.dtype}))
            else:
                model = AutoModel.from_pretrained(path, config=hf_cfg, dtype=cfg.dtype, **kw)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"backbone.name: cannot load '{cfg.name}': {first}") from None
    lm_head = None
    if causal:
        lm, tokenizer = load_causal_lm(cfg.name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                       random_init=cfg.init == "random", dtype=cfg.dtype)
        model, lm_head = lm.base_model, lm.get_output_embeddings()
    elif tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pooling = cfg.pooling or ("last" if causal else "mean")
    record = Path(path) / PRETRAINING_RECORD
    pretraining = json.loads(record.read_text()) if record.is_file() else None
    return Backbone(model, tokenizer, pooling, cfg.max_length, hf_cfg.hidden_size, cfg.name, lm_head=lm_head,
                    pretraining=pretraining, offline_copy=offline.record(path))


def wrap_causal_lm(lm: nn.Module, tokenizer, cfg: BackboneConfig, source: str) -> Backbone:
    """A Backbone over a causal LM built elsewhere (a Trainer's model, PEFT-wrapped or not): its body and
    output layer themselves, not copies, so it sees every update the trainer makes."""
    inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    if not is_causal_config(inner.config) and not hasattr(inner, "lm_head"):
        raise UserError(f"model: {type(inner).__name__} is not a causal LM (no output layer); "
                        "forgetlab follows causal LMs inside a Trainer")
    return Backbone(inner.base_model, tokenizer, cfg.pooling or "last", cfg.max_length, inner.config.hidden_size, source,
                    lm_head=inner.get_output_embeddings())


def tied_lm_head(model: nn.Module) -> nn.Linear:
    """An output layer whose weight is the model's input embedding (as GPT-2 ties them). Made on the
    meta device, so it draws nothing from the random generator before it takes the embedding."""
    embedding = model.get_input_embeddings()
    head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
    head.weight = embedding.weight
    return head


def is_causal_config(hf_cfg) -> bool:
    archs = getattr(hf_cfg, "architectures", None) or []
    return bool(getattr(hf_cfg, "is_decoder", False)) or any("CausalLM" in a or "LMHead" in a for a in archs)


def _pad_id(tokenizer) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    return 0 if pid is None else int(pid)


def layer_list(model: nn.Module) -> list[nn.Module]:
    """The model's stack of layers: the longest ModuleList of identical blocks."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best
