"""Causal language models: the one loader and the one masked next-token loss.

``load_causal_lm`` loads a causal LM with its real output layer (``AutoModelForCausalLM``, so an
untied LM head is the checkpoint's own). ``token_nll`` is the next-token negative log-likelihood
every training loss, perplexity and log-probability in forgetlab is computed from.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .backbones import resolve_model_path

IGNORE_INDEX = -100      # a label that takes no loss


def load_causal_lm(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                   random_init: bool = False, dtype: str = "float32", key: str = "backbone.name"):
    """``(model, tokenizer)``: a Hugging Face hub name or folder as ``AutoModelForCausalLM``, its
    weights pretrained, or with ``random_init`` the architecture only, initialised from torch's
    (seeded) generator; in ``dtype`` (``auto``: the checkpoint's). The tokenizer pads with its end (or unknown) token when it has no pad token.
    A model that cannot be loaded is a UserError naming ``key``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from . import lstm_lm  # noqa: F401  (registers forgetlab's LSTM LM with the Auto classes)

    hf_logging.disable_progress_bar()
    path = resolve_model_path(name_or_path)
    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        if random_init:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code,
                                                     **({} if dtype == "auto" else {"dtype": dtype}))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **kw)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}: cannot load '{name_or_path}': {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood, in float32: position t's logits [B, L, V] predict
    ``labels[:, t + 1]`` ([B, L], IGNORE_INDEX where no loss is taken). Returns ``(nll, mask)``, both
    [B, L - 1], nll 0 where ignored. Labels one longer than the logits (windows whose last token is
    only a target) score every position's logits."""
    targets = labels[:, 1:]
    logits = logits[:, : targets.size(1)].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none")
    return nll.view_as(targets), targets != IGNORE_INDEX


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The labels of a padded batch: its token ids, IGNORE_INDEX on padding."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
