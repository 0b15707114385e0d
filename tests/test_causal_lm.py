"""The causal-LM loader and the masked next-token NLL: hand values, an untied LM head that is the
checkpoint's own, and a tied one that stays tied through a safetensors round trip."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_model, save_model

from forgetlab.config import BackboneConfig
from forgetlab.errors import UserError
from forgetlab.models.backbones import build_backbone
from forgetlab.models.bpe import train_bpe
from forgetlab.models.causal_lm import IGNORE_INDEX, lm_labels, load_causal_lm, token_nll

# Position 0 gives tokens 0 and 1 probability 1/2 each; position 1 gives token 0 probability 3/4.
LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])


def test_token_nll_by_hand():
    nll, mask = token_nll(LOGITS, torch.tensor([[1, 1, 0]]))     # position t predicts label t + 1
    torch.testing.assert_close(nll, torch.tensor([[math.log(2.0), math.log(4 / 3)]]))
    assert mask.tolist() == [[True, True]]
    assert nll.dtype == torch.float32 and token_nll(LOGITS.bfloat16(), torch.tensor([[1, 1, 0]]))[0].dtype == torch.float32


def test_ignored_labels_contribute_zero():
    nll, mask = token_nll(LOGITS, torch.tensor([[1, IGNORE_INDEX, 0]]))
    torch.testing.assert_close(nll, torch.tensor([[0.0, math.log(4 / 3)]]))
    assert mask.tolist() == [[False, True]]
    labels = lm_labels(torch.tensor([[4, 5, 6]]), torch.tensor([[1, 1, 0]]))
    assert labels.tolist() == [[4, 5, IGNORE_INDEX]]


def test_labels_one_longer_score_every_position():
    nll, _ = token_nll(LOGITS[:, :2], torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(nll, torch.tensor([[math.log(2.0), math.log(4 / 3)]]))


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory):
    """A tiny Llama with its own output layer (tie_word_embeddings=False), saved as a Hugging Face folder
    with a tokenizer that has no pad token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tok = train_bpe(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=300)
    tok.pad_token = None
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder, model.eval()


def test_untied_head_is_the_checkpoints_own(untied_llama):
    folder, saved = untied_llama
    model, tok = load_causal_lm(str(folder))
    assert tok.pad_token == tok.eos_token                     # set where the tokenizer has none
    torch.testing.assert_close(model.lm_head.weight, saved.lm_head.weight)
    ids = torch.tensor([[5, 9, 2, 7]])
    mask = torch.ones_like(ids)
    backbone = build_backbone(BackboneConfig(name=str(folder))).eval()
    assert backbone.causal and type(backbone.model).__name__ == "LlamaModel"     # the body; the head apart
    with torch.no_grad():
        logits = backbone.lm_logits(ids, mask)
        hidden = backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(logits, saved(input_ids=ids, attention_mask=mask).logits)
        assert not torch.allclose(logits, hidden @ backbone.model.get_input_embeddings().weight.T)
    body = sum(p.numel() for p in backbone.model.parameters())
    assert backbone.n_parameters == body + saved.lm_head.weight.numel()


def test_random_init_keeps_the_architecture_and_draws_fresh_weights(untied_llama):
    folder, saved = untied_llama
    torch.manual_seed(1)
    fresh = build_backbone(BackboneConfig(name=str(folder), init="random"))
    assert fresh.lm_head.weight.shape == saved.lm_head.weight.shape
    assert not torch.allclose(fresh.lm_head.weight, saved.lm_head.weight)


def test_unloadable_model_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="^backbone.name: cannot load '.*nothing'") as info:
        load_causal_lm(str(tmp_path / "nothing"))
    assert "\n" not in str(info.value)


def test_gpt2_head_is_tied_through_a_safetensors_round_trip(tmp_path):
    cfg = BackboneConfig(arch="gpt2", size="nano", max_length=16)
    torch.manual_seed(0)
    trained = build_backbone(cfg).eval()
    assert trained.lm_head.weight is trained.model.wte.weight
    assert trained.n_parameters == sum(p.numel() for p in trained.model.parameters())    # counted once
    save_model(trained, str(tmp_path / "b.safetensors"))
    torch.manual_seed(1)
    other = build_backbone(cfg).eval()
    load_model(other, str(tmp_path / "b.safetensors"))
    assert other.lm_head.weight is other.model.wte.weight
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(other.lm_logits(ids, torch.ones_like(ids)), trained.lm_logits(ids, torch.ones_like(ids)))
