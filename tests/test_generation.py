"""Batched greedy decoding: the same tokens as one prompt at a time and as a naive loop with no cache
(the whole prompt + generated text through the model at every step), on GPT-2, Llama and a LoRA-wrapped
Llama; and where it stops: end ids, stop strings, max_new_tokens."""
from __future__ import annotations

import pytest
import torch

from forgetlab.config import BackboneConfig
from forgetlab.eval.generation import decode_text, greedy_decode
from forgetlab.models.backbones import build_backbone
from forgetlab.models.bpe import train_bpe
from forgetlab.models.peft import wrap_with_peft

CPU = torch.device("cpu")
LENGTHS = [1, 3, 7, 2, 12, 5, 9, 4, 11, 6, 8, 10]       # 12 prompts, unsorted, so batches are re-ordered
NEW = 10


def spread(module: torch.nn.Module) -> None:
    """Matrices drawn wide (std 0.3), so that a random model's greedy text depends on its prompt
    instead of repeating the last token."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)


def make_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def naive(backbone, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by definition: no cache, no padding; argmax of the last position each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            ids.append(int(backbone.lm_logits(x, torch.ones_like(x))[0, -1].argmax()))
    return ids[len(prompt):]


def gpt2():
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=64))
    spread(backbone.model)
    return backbone.eval()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny untied Llama saved as a Hugging Face folder, its BPE tokenizer's end token id 1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tok = train_bpe(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    spread(model)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def llama(folder):
    return build_backbone(BackboneConfig(name=str(folder))).eval()


def lora_llama(folder):
    import peft

    backbone = llama(folder)
    wrap_with_peft(backbone, ["t0"], lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)       # peft starts B at zero (the identity); make the adapter count
    return backbone.eval()


@pytest.mark.parametrize("make", ["gpt2", "llama", "lora"])
def test_batched_equals_one_at_a_time_equals_no_cache(make, llama_folder):
    backbone = {"gpt2": gpt2, "llama": lambda: llama(llama_folder), "lora": lambda: lora_llama(llama_folder)}[make]()
    prompts = make_prompts(backbone.lm_head.out_features)
    reference = [naive(backbone, p, NEW) for p in prompts]
    assert len({tuple(r) for r in reference}) >= 10          # the outputs depend on the prompt
    for batch_size in (1, 5, 32):
        got = greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=batch_size, eos_ids=())
        assert got == reference, f"batch_size={batch_size}"


def test_lora_weights_change_the_tokens(llama_folder):
    backbone = llama(llama_folder)
    prompts = make_prompts(backbone.lm_head.out_features)
    plain = greedy_decode(backbone, prompts, NEW, device=CPU, eos_ids=())
    adapted = greedy_decode(lora_llama(llama_folder), prompts, NEW, device=CPU, eos_ids=())
    assert plain != adapted


def test_stops_at_the_tokenizers_end_id(llama_folder):
    """Swap the output rows of the end token (id 1) and of the token first generated at step k: the
    argmax of steps before k is untouched, and at step k the end token wins, so k tokens come out."""
    backbone = llama(llama_folder)
    prompts = make_prompts(backbone.lm_head.out_features)
    free = greedy_decode(backbone, prompts, NEW, device=CPU, eos_ids=())
    eos = backbone.tokenizer.eos_token_id
    o = free[0]
    k = next(i for i in range(2, NEW) if o[i] not in o[:i])
    assert eos == 1 and eos not in o[:k]
    with torch.no_grad():
        w = backbone.lm_head.weight
        w[[eos, o[k]]] = w[[o[k], eos]]
    assert greedy_decode(backbone, prompts[:1], k + 1, device=CPU, eos_ids=()) == [o[:k] + [eos]]   # the swap at work
    got = greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=5)           # default: the tokenizer's end id
    assert got[0] == o[:k] and len(got[0]) == k
    assert got == greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=1)   # one row's stop leaves the others be


def test_callers_end_ids_replace_the_default():
    backbone = gpt2()
    prompts = make_prompts(259)
    free = greedy_decode(backbone, prompts, NEW, device=CPU, eos_ids=())
    o = free[0]
    k = next(i for i in range(1, NEW) if o[i] not in o[:i])
    assert greedy_decode(backbone, prompts, NEW, device=CPU, eos_ids={o[k]})[0] == o[:k]
    assert all(len(g) == NEW for g in free)                  # eos_ids=(): nothing ends a sequence early


def test_stop_string_keeps_the_token_that_completes_it():
    backbone = gpt2()
    prompts = make_prompts(259)
    free = greedy_decode(backbone, prompts, NEW, device=CPU, eos_ids=())
    o = free[0]
    decode = backbone.tokenizer.decode
    # the first printable ASCII byte (token id = byte + 3) the text has not shown yet
    k = next(i for i in range(1, NEW) if 33 <= o[i] - 3 < 127 and chr(o[i] - 3) not in decode(o[:i]))
    stop = chr(o[k] - 3)
    got = greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=5, stop_strings=[stop], eos_ids=())
    assert got[0] == o[:k + 1]
    assert decode_text(backbone, got[0], [stop]) == decode(o[:k]).strip()
    for g, f in zip(got, free):                          # each row: the free text up to its first stop
        assert g == f[:len(g)] and (stop in decode(g) or len(g) == NEW) and stop not in decode(g[:-1])
    assert got == greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=1, stop_strings=[stop], eos_ids=())


def test_decode_text_by_hand():
    backbone = gpt2()
    ids = [1] + [b + 3 for b in b"  answer: 42\nQ: next"] + [2]      # bos and eos are skipped
    assert decode_text(backbone, ids) == "answer: 42\nQ: next"
    assert decode_text(backbone, ids, ["\nQ:", "next"]) == "answer: 42"
    assert decode_text(backbone, ids, ["zzz"]) == "answer: 42\nQ: next"


def test_max_new_tokens_is_respected_and_must_be_positive():
    backbone = gpt2().train()
    prompts = make_prompts(259)
    five = greedy_decode(backbone, prompts, 5, device=CPU, eos_ids=())
    ten = greedy_decode(backbone, prompts, 10, device=CPU, eos_ids=())
    assert [len(g) for g in five] == [5] * 12 and all(t[:5] == f for t, f in zip(ten, five))
    assert [len(g) for g in greedy_decode(backbone, prompts, 1, device=CPU, eos_ids=())] == [1] * 12
    assert backbone.training and backbone.model.training           # put back in training mode
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_new_tokens"):
            greedy_decode(backbone, prompts, bad, device=CPU)
    with pytest.raises(ValueError, match="64 positions"):
        greedy_decode(backbone, [[3] * 60], 5, device=CPU)
