"""Prompt tuning on instruction streams: greedy decoding and likelihood scoring with the virtual tokens in
the KV cache equal a full forward with them at every step; only the prompt trains; a run (and its
resume) goes through, general-ability probes included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import killed_and_resumed
from test_generation import NEW, gpt2, llama, llama_folder, make_prompts, naive  # noqa: F401  (a fixture)
from test_instruction import instruction_config

import forgetlab
from forgetlab.data.instructions import Instruction
from forgetlab.engine import Engine
from forgetlab.errors import UserError
from forgetlab.eval.generation import greedy_decode
from forgetlab.eval.likelihood import continuation_logprobs
from forgetlab.experiment import load_config
from forgetlab.kinds.instruction import InstructionTuning
from forgetlab.models.peft import max_positions, wrap_with_peft
from forgetlab.store import Store

CPU = torch.device("cpu")
VIRTUAL = 4


def prompt_tuned(backbone):
    """The backbone under peft prompt tuning, its virtual tokens drawn wide (std 0.3), so they count."""
    import peft

    wrap_with_peft(backbone, ["t0"], lambda: peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                     num_virtual_tokens=VIRTUAL))
    torch.manual_seed(1)
    with torch.no_grad():
        backbone.model.prompt_encoder["t0"].embedding.weight.normal_(0.0, 0.3)
    return backbone.eval()


def make(name, folder):
    return prompt_tuned(gpt2() if name == "gpt2" else llama(folder))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cached_decoding_equals_the_full_sequence_with_the_virtual_tokens_every_step(name, llama_folder):
    backbone = make(name, llama_folder)
    prompts = make_prompts(backbone.lm_head.out_features)
    reference = [naive(backbone, p, NEW) for p in prompts]      # peft's forward: virtual tokens + all ids, no cache
    plain = gpt2() if name == "gpt2" else llama(llama_folder)
    assert reference != [naive(plain, p, NEW) for p in prompts]  # the virtual tokens change the text
    for batch_size in (1, 5, 32):
        got = greedy_decode(backbone, prompts, NEW, device=CPU, batch_size=batch_size, eos_ids=())
        assert got == reference, f"batch_size={batch_size}"


def test_the_virtual_tokens_take_positions_from_the_prompt():
    backbone = make("gpt2", None)
    assert max_positions(backbone.model) == 64 - VIRTUAL
    assert len(greedy_decode(backbone, [[3] * 54], 6, device=CPU, eos_ids=())[0]) == 6       # 4 + 54 + 6 = 64
    with pytest.raises(ValueError, match="60 positions left by 4 virtual tokens"):
        greedy_decode(backbone, [[3] * 55], 6, device=CPU)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_likelihood_equals_a_log_softmax_sum_from_a_full_forward(name, llama_folder):
    backbone = make(name, llama_folder)
    vocab = backbone.lm_head.out_features
    prompts = make_prompts(vocab)[:5]
    g = torch.Generator().manual_seed(2)
    conts = [[torch.randint(3, vocab, (n,), generator=g).tolist() for n in (1, 4, 2)] for _ in prompts]
    got = continuation_logprobs(backbone, prompts, conts, CPU)
    for prompt, options, scores in zip(prompts, conts, got):
        for cont, score in zip(options, scores):
            x = torch.tensor([prompt + cont])
            with torch.no_grad():
                logp = F.log_softmax(backbone.lm_logits(x, torch.ones_like(x))[0].float(), dim=-1)
            expected = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(cont))
            assert score == pytest.approx(expected, abs=1e-4)


def pt_config(tmp_path, train=None, **sections):
    return instruction_config(tmp_path, method={"name": "prompt_tuning", "num_virtual_tokens": VIRTUAL},
                              train={"epochs": 2, **(train or {})}, **sections)


def test_only_the_prompt_embeddings_train(tmp_path):
    engine = Engine(load_config(pt_config(tmp_path)))
    params = dict(engine.learner.backbone.named_parameters())
    prompt = {n for n in params if "prompt_encoder.fl_shared." in n}
    assert len(prompt) == 1 and all(p.requires_grad == (n in prompt) for n, p in params.items())
    before = {n: p.detach().clone() for n, p in params.items()}
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    after = dict(engine.learner.backbone.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in params if n not in prompt)
    assert not torch.equal(before[next(iter(prompt))], after[next(iter(prompt))])


def test_examples_are_cut_to_leave_the_virtual_tokens_their_positions(tmp_path):
    """backbone.max_length 64 is the nano GPT-2's positions: with 20 virtual tokens, 44 are left."""
    cfg = instruction_config(tmp_path, method={"name": "prompt_tuning"})
    engine = Engine(load_config(cfg))
    assert engine.learner.backbone.max_length == engine.kind.formatter.max_length == 44
    assert len(engine.kind.formatter.example(Instruction("red " * 40 + "colour or animal?", "colour")).input_ids) == 44
    engine.kind.start(engine.method, tmp_path)
    task = engine.stream.tasks[0]
    assert max(len(p) for p in engine.kind.prompts(task)) + task.max_new_tokens <= 44


def test_packing_is_refused(tmp_path):
    with pytest.raises(UserError, match="train.packing: prompt tuning"):
        Engine(load_config(pt_config(tmp_path, train={"packing": True})))


def test_an_instruction_run_with_retention_probes_and_its_resume(tmp_path, monkeypatch):
    held_out = instruction_config(tmp_path)["data"]["sequence"][0]
    retention = {"max_tokens": 200, "max_items": 4, "boolq_items": 4, "held_out": held_out, "held_out_items": 4,
                 "max_length": 64}
    cfg = pt_config(tmp_path, eval={"retention": retention})
    straight = forgetlab.run(cfg, out=tmp_path / "a").raw
    for name in ("generated", "likelihood"):
        values = np.array(straight["matrices"][name]["values"])
        assert values.shape == (2, 2) and ((0 <= values) & (values <= 1)).all()
    probes = straight["retention"]["probes"]
    assert set(probes) == {"perplexity", "qa_accuracy", "boolq_accuracy", "held_out_nll", "held_out_score"}
    assert all(len(p["values"]) == 3 and all(np.isfinite(p["values"])) for p in probes.values())
    resumed = killed_and_resumed(cfg, tmp_path / "b", InstructionTuning, monkeypatch, evaluations=2)    # after task 1
    for name in ("generated", "likelihood"):
        assert resumed["matrices"][name]["values"] == straight["matrices"][name]["values"]
    assert resumed["predictions"] == straight["predictions"]
    assert resumed["retention"]["probes"] == probes
