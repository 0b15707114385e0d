"""Block expansion (LLaMA Pro) on a tiny GPT-2, Llama and Qwen2: the expanded model computes what the model
did, cached decoding still works, only the new blocks train, the parameters added are counted by hand,
and a run through an instruction stream resumes exactly."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import killed_and_resumed, tiny_config
from test_generation import make_prompts, naive, spread
from test_instruction import instruction_config

import forgetlab
from forgetlab.config import BackboneConfig
from forgetlab.engine import Engine
from forgetlab.errors import UserError
from forgetlab.eval.generation import greedy_decode
from forgetlab.experiment import load_config
from forgetlab.kinds.instruction import InstructionTuning
from forgetlab.methods.expand import Expand, ExpandConfig, layout
from forgetlab.models.backbones import build_backbone
from forgetlab.models.bpe import train_bpe
from forgetlab.models.learner import Learner
from forgetlab.store import Store

CPU = torch.device("cpu")
# one block by hand. GPT-2 "tiny" (d 64, MLP 256): ln_1 128 + c_attn 64*192+192 + c_proj 64*64+64 + ln_2 128
# + c_fc 64*256+256 + c_proj 256*64+64 = 49,984. Llama/Qwen2 below (d 16, MLP 32, 2 heads): q, k, v, o 4*16*16
# + gate, up, down 3*16*32 + two RMSNorms 2*16 = 2,592 (Qwen2: + q, k, v biases 3*16 = 2,640).
GPT2_BLOCK, LLAMA_BLOCK, QWEN2_BLOCK = 49_984, 2_592, 2_640


def test_the_groups_end_where_llama_pro_puts_its_copies():
    assert [i for i, _, k in layout(32, 8, 1) if k == 0] == [3, 7, 11, 15, 19, 23, 27, 31]   # 32 + 8 blocks
    assert layout(3, 2, 2) == [(0, -1, -1), (1, -1, -1), (1, 0, 0), (1, 0, 1), (2, -1, -1), (2, 1, 0), (2, 1, 1)]
    assert layout(1, 2, 1) == [(0, -1, -1), (0, 0, 0), (0, 1, 0)]                            # more blocks than layers


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny untied Llama (3 layers) and Qwen2 (3 layers, ``layer_types`` in its config) as Hugging Face folders."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = train_bpe(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=300)
    shape = {"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
             "num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": False}
    folders = {}
    for name, config, model in (("llama", LlamaConfig, LlamaForCausalLM), ("qwen2", Qwen2Config, Qwen2ForCausalLM)):
        folders[name] = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        lm = model(config(**shape))
        spread(lm)
        lm.save_pretrained(str(folders[name]))
        tok.save_pretrained(str(folders[name]))
    return folders


def backbone_of(make: str, folders):
    torch.manual_seed(0)
    if make == "gpt2":
        backbone = build_backbone(BackboneConfig(arch="gpt2", size="tiny", max_length=64))
        spread(backbone.model)
    else:
        backbone = build_backbone(BackboneConfig(name=str(folders[make])))
    return backbone.eval()


class Index:
    def __init__(self, index: int):
        self.index = index


@pytest.mark.parametrize("make,block", [("gpt2", GPT2_BLOCK), ("llama", LLAMA_BLOCK), ("qwen2", QWEN2_BLOCK)])
def test_expansion_keeps_the_logits_and_the_cached_greedy_tokens_and_adds_blocks_times_a_block(make, block, hf_folders):
    backbone = backbone_of(make, hf_folders)
    layers = backbone.model.config.num_hidden_layers
    ids = torch.randint(3, backbone.lm_head.out_features, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0                                                          # a left-padded row too
    prompts = make_prompts(backbone.lm_head.out_features)
    with torch.no_grad():
        before = backbone.lm_logits(ids, mask)
    tokens = greedy_decode(backbone, prompts, 10, device=CPU, eos_ids=())
    method = Expand(ExpandConfig(name="expand"), Learner(backbone), None)        # grows the first task's blocks
    for t in (0, 1):
        method.before_task(Index(t))
        assert method.task_summary(Index(t)) == {"added_parameters": 2 * block, "blocks": layers + 2 * (t + 1)}
        with torch.no_grad():
            assert (backbone.lm_logits(ids, mask) - before).abs().max().item() <= 1e-6
        assert greedy_decode(backbone, prompts, 10, device=CPU, eos_ids=()) == tokens     # through the KV cache
    config = backbone.model.config
    assert config.num_hidden_layers == layers + 4
    assert getattr(config, "layer_types", None) in (None, ["full_attention"] * (layers + 4))
    # once the new blocks do something, cached decoding still equals decoding with no cache
    spread(backbone.model)
    assert greedy_decode(backbone, prompts[:6], 10, device=CPU, eos_ids=()) == [naive(backbone, p, 10) for p in prompts[:6]]


def expand_config(tmp_path, **method):
    """Two tasks on a tiny GPT-2 (2 layers), one thread: a run takes about a second."""
    return instruction_config(tmp_path, method={"name": "expand", **method}, backbone={"size": "tiny"},
                              data={"max_test_per_task": 4}, train={"epochs": 3, "num_threads": 1})


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    """One thread and no report figures (on a shared 2-core machine both cost seconds); the process's
    thread count comes back after each test."""
    monkeypatch.setattr("forgetlab.engine.write_report", lambda results, path: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def new_blocks(method, expansion: int) -> dict[str, torch.Tensor]:
    return {f"{entry}.{n}": p.detach().clone() for entry, block in method.block_at.items() if entry[2] == expansion
            for n, p in block.named_parameters()}


def test_only_the_new_blocks_get_gradients(tmp_path):
    engine = Engine(load_config(expand_config(tmp_path)))
    method, learner = engine.method, engine.learner
    task = engine.stream.tasks[0]
    method.before_task(task)
    batch = method.ctx.batch(method.ctx.inputs(task, "train").subset(torch.arange(8)))
    method.loss(batch, learner(batch)).backward()
    new = {id(p) for b in method.block_at.values() if b not in method.original for p in b.parameters()}
    named = dict(learner.named_parameters())
    assert len(new) == 2 * 12 and all(p.grad is None for p in named.values() if id(p) not in new)
    grads = {n: p.grad for n, p in named.items() if id(p) in new}
    assert all(g is not None for g in grads.values())
    # the zeroed output projections pass no gradient back into their blocks on the first step (as in the
    # paper): they, and only they, have nonzero gradients
    outputs = {n for n in grads if n.endswith(("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight",
                                               "mlp.c_proj.bias"))}
    assert len(outputs) == 2 * 4 and all(grads[n].abs().sum() > 0 for n in outputs)
    assert all(grads[n].abs().sum() == 0 for n in grads if n not in outputs)
    groups = method.param_groups(engine.cfg.train)
    assert {id(p) for g in groups for p in g["params"]} == new and groups[0]["lr"] == engine.cfg.train.lr_backbone


def test_every_task_trains_its_own_blocks_and_leaves_the_rest_bit_identical(tmp_path):
    engine = Engine(load_config(expand_config(tmp_path)))
    method, backbone = engine.method, engine.learner.backbone
    blocks = [{n: p.detach().clone() for n, p in block.named_parameters()} for block in method.original]
    rest = {n: p.detach().clone() for n, p in backbone.named_parameters() if ".h." not in n}
    raw, after = run_recording_new_blocks(engine, tmp_path)
    first = new_blocks(method, 0)
    assert all(torch.equal(first[n], after[0][n]) for n in first)                    # task 2 left task 1's blocks
    assert not torch.equal(first["(0, 0, 0).mlp.c_proj.weight"], torch.zeros_like(first["(0, 0, 0).mlp.c_proj.weight"]))
    now = dict(backbone.named_parameters())
    assert rest and all(torch.equal(now[n], p) for n, p in rest.items())              # embeddings, final norm
    for before, block in zip(blocks, method.original):                                # the original blocks
        assert all(torch.equal(before[n], p) for n, p in block.named_parameters())
    assert [log["method"] for log in raw["task_log"]] == [{"added_parameters": 2 * GPT2_BLOCK, "blocks": 4},
                                                           {"added_parameters": 2 * GPT2_BLOCK, "blocks": 6}]
    assert [log["trainable_parameters"] for log in raw["task_log"]] == [2 * GPT2_BLOCK] * 2


def run_recording_new_blocks(engine, tmp_path) -> tuple[dict, dict]:
    """Run the engine; its results and, after each task, the first expansion's blocks."""
    method, after, real = engine.method, {}, engine.method.after_task

    def record(task):
        real(task)
        after[task.index] = new_blocks(engine.method, 0)
    method.after_task = record
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    return json.loads((tmp_path / "run" / "results.json").read_text()), after


def test_first_task_grows_once_and_trains_the_same_blocks_on_every_task(tmp_path):
    engine = Engine(load_config(expand_config(tmp_path, when="first_task", blocks=1, lr=3e-3)))
    method = engine.method
    assert method.param_groups(engine.cfg.train)[0]["lr"] == 3e-3
    raw, after = run_recording_new_blocks(engine, tmp_path)
    assert any(not torch.equal(after[0][n], after[1][n]) for n in after[0])          # task 2 trained them again
    assert [log["method"] for log in raw["task_log"]] == [{"added_parameters": GPT2_BLOCK, "blocks": 3},
                                                           {"added_parameters": 0, "blocks": 3}]
    assert [log["trainable_parameters"] for log in raw["task_log"]] == [GPT2_BLOCK] * 2


@pytest.mark.parametrize("when", ["every_task", "first_task"])
def test_a_killed_run_resumes_as_the_straight_run_went(tmp_path, monkeypatch, when):
    cfg = expand_config(tmp_path, when=when)
    straight = forgetlab.run(cfg, out=tmp_path / "a").raw
    resumed = killed_and_resumed(cfg, tmp_path / "b", InstructionTuning, monkeypatch, evaluations=2)   # after task 1
    for name in ("generated", "likelihood"):
        assert resumed["matrices"][name]["values"] == straight["matrices"][name]["values"]
    assert [log["method"] for log in resumed["task_log"]] == [log["method"] for log in straight["task_log"]]
    assert [log["loss"] for log in resumed["task_log"]] == [log["loss"] for log in straight["task_log"]]


def test_an_encoder_is_refused_in_one_line():
    for arch in ("bert", "lstm"):
        with pytest.raises(UserError) as e:
            Engine(load_config(tiny_config(backbone={"arch": arch}, method={"name": "expand"})))
        assert str(e.value) == f"method.name: expand grows a causal LM's decoder; {arch}-nano is an encoder"
