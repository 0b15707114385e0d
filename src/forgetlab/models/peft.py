"""Wrapping a backbone's model with peft modules (LoRA, prompt tuning): one named adapter per module."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UserError
from .backbones import Backbone, LSTMEncoder


def wrap_with_peft(backbone: Backbone, names: list[str], make_config: Callable[[], object]) -> None:
    """Replace ``backbone.model`` by a peft model holding one adapter per name (base weights frozen)."""
    from peft import get_peft_model

    if isinstance(backbone.model, LSTMEncoder):
        raise UserError("method.name: peft methods need a transformer backbone, not an LSTM")
    try:
        model = get_peft_model(backbone.model, make_config(), adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, make_config())
    except ValueError as exc:
        raise UserError(f"method: peft cannot adapt {backbone.source}: {str(exc).splitlines()[0]}") from None
    backbone.model = model


def max_positions(model: nn.Module) -> int | None:
    """The positions a model has for the tokens it is given: its config's limit, less the virtual tokens
    prompt tuning prepends to every input."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return None if limit is None else limit - virtual_tokens(model)


def virtual_tokens(model: nn.Module) -> int:
    """How many virtual tokens prompt tuning prepends to every input of ``model`` (0 without it)."""
    config = getattr(model, "active_peft_config", None)
    return config.num_virtual_tokens if config is not None and config.is_prompt_learning else 0
