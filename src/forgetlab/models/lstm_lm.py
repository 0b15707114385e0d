"""An LSTM language model written as Hugging Face classes, so ``forgetlab pretrain`` saves it as it
saves GPT-2 (safetensors and a ``config.json``) and ``AutoModel`` / ``AutoModelForCausalLM`` load
it, and ``forgetlab run`` takes it as a backbone, with no remote code: importing this module
registers the classes under the model type ``forgetlab_lstm``.

Embedding, a stack of single-layer LSTMs (one ``hidden_states`` entry each, so layer-wise methods
see layers) and an output layer tied to the embedding. Parameters: ``lstm_params``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from .causal_lm import token_nll

MODEL_TYPE = "forgetlab_lstm"


class LSTMLMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 4096, hidden_size: int = 128, num_hidden_layers: int = 2,
                 initializer_range: float = 0.02, tie_word_embeddings: bool = True, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class LSTMPreTrainedModel(PreTrainedModel):
    config_class = LSTMLMConfig
    base_model_prefix = "model"


class LSTMModel(LSTMPreTrainedModel):
    """Token ids -> hidden states; causal, so right padding leaves the real positions unchanged."""

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(nn.LSTM(config.hidden_size, config.hidden_size, batch_first=True)
                                    for _ in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> BaseModelOutput:
        x = self.embed_tokens(input_ids)
        states = [x]
        for lstm in self.layers:
            x, _ = lstm(x)
            states.append(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)


class LSTMForCausalLM(LSTMPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.model = LSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> CausalLMOutput:
        out = self.model(input_ids, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            nll, mask = token_nll(logits, labels)
            loss = nll.sum() / mask.sum()
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def lstm_params(vocab_size: int, dim: int, layers: int) -> int:
    """Parameters of the tied LSTM LM: the embedding, and per layer 8·d² + 8·d (four gates' input and
    recurrent weights, and PyTorch's two bias vectors)."""
    return vocab_size * dim + layers * (8 * dim * dim + 8 * dim)


AutoConfig.register(MODEL_TYPE, LSTMLMConfig, exist_ok=True)
AutoModel.register(LSTMLMConfig, LSTMModel, exist_ok=True)
AutoModelForCausalLM.register(LSTMLMConfig, LSTMForCausalLM, exist_ok=True)
