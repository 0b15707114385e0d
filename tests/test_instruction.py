"""The instruction kind: prompt -> response data, templates and response-only masks, likelihood
scoring against direct sums, a tiny GPT through a two-task stream, resume, and bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import forgetlab
from conftest import killed_and_resumed
from forgetlab.config import BackboneConfig
from forgetlab.models.formatting import PLAIN, Formatter
from forgetlab.data.instructions import BENCHMARKS, Instruction, build_instruction_stream, load_task, read_instructions
from forgetlab.errors import UserError
from forgetlab.eval.likelihood import continuation_logprobs
from forgetlab.eval.retention import chance_levels, informative
from forgetlab.experiment import load_config
from forgetlab.kinds.instruction import InstructionTuning
from forgetlab.models.backbones import build_backbone
from forgetlab.models.bpe import train_bpe
from forgetlab.models.causal_lm import IGNORE_INDEX, token_nll
from forgetlab.models.tokenizer import ByteTokenizer
from forgetlab.train.batching import pad

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = {"colour": ["red", "blue", "green"], "animal": ["cat", "dog", "cow"],
         "hot": ["sun", "fire", "oven"], "cold": ["ice", "snow", "frost"]}


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


# -- formatting ----------------------------------------------------------------------------------
def test_plain_template_masks_the_prompt_and_trains_the_response_and_its_end():
    fmt = Formatter(ByteTokenizer(), "plain", max_length=200)
    enc = fmt.example(Instruction("hi", "ok"))
    prompt = [1] + byte_ids(PLAIN.format(prompt="hi"))          # BOS, then the rendered prompt
    assert enc.input_ids == prompt + byte_ids("ok") + [2]       # the response, then end of text (id 2)
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + byte_ids("ok") + [2]
    assert enc.prompt_length == len(prompt) and fmt.eos_ids == {2}


def test_a_long_prompt_loses_its_first_tokens_and_the_response_survives():
    fmt = Formatter(ByteTokenizer(), "{prompt}=", max_length=12)
    enc = fmt.example(Instruction("abcdefghijklmnop", "xyz"))
    assert enc.input_ids == [1] + byte_ids("klmnop=") + byte_ids("xyz") + [2]    # 1 + 7 + 4 = 12 tokens
    assert enc.labels == [IGNORE_INDEX] * 8 + byte_ids("xyz") + [2]


def test_a_system_prompt_and_a_custom_template():
    fmt = Formatter(ByteTokenizer(), "Q: {prompt}\nA:", max_length=100, system="Be brief.")
    assert fmt.prompt_text("2+2?") == "Be brief.\n\nQ: 2+2?\nA:"
    assert Formatter(ByteTokenizer(), "[{system}] {prompt} ->", 100, system="S").prompt_text("x") == "[S] x ->"
    assert Formatter(ByteTokenizer(), '{"q": "{prompt}"}', 100).prompt_text("{a}") == '{"q": "{a}"}'   # braces kept


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = train_bpe(["the cat sat on the mat and the dog sat on the log"] * 4, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.eos_token = "<|im_end|>"
    return tok


def _ids(out) -> list[int]:
    return list(out["input_ids"] if not isinstance(out, list) else out)


def test_the_chat_template_is_applied_as_the_tokenizer_applies_it(chat_tokenizer):
    tok = chat_tokenizer
    fmt = Formatter(tok, "auto", max_length=256, system="be kind")
    assert fmt.chat
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the cat"}]
    enc = fmt.example(Instruction("the cat", "sat on the mat"))
    prompt = _ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    full = _ids(tok.apply_chat_template(messages + [{"role": "assistant", "content": "sat on the mat"}], tokenize=True))
    assert enc.input_ids == full and enc.input_ids[: len(prompt)] == prompt
    assert enc.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert enc.labels[len(prompt):] == full[len(prompt):] and end in enc.labels     # response, <|im_end|>, "\n"
    assert fmt.eos_ids == {end}


def test_template_errors(chat_tokenizer):
    with pytest.raises(UserError, match="data.template: unknown template 'alpacca'"):
        Formatter(ByteTokenizer(), "alpacca", 64)
    with pytest.raises(UserError, match="no chat template"):
        Formatter(ByteTokenizer(), "chat", 64)
    assert not Formatter(ByteTokenizer(), "auto", 64).chat


# -- data ----------------------------------------------------------------------------------------
def test_the_standard_benchmark_orders_and_a_built_in_conversion():
    assert BENCHMARKS["standard"][1] == ["dbpedia", "amazon", "yahoo", "agnews"]
    cfg = load_config({"backbone": {"arch": "gpt2"}, "method": {"name": "seq"},
                       "data": {"scenario": "instruction", "name": "standard", "benchmark_order": 3,
                                "max_train_per_task": 5, "max_test_per_task": 3}}).data
    stream = build_instruction_stream(cfg)
    assert [t.name for t in stream.tasks] == ["yahoo", "amazon", "agnews", "dbpedia"]
    news = stream.tasks[2]
    assert len(news.train_examples) == 5 and len(news.test_examples) == 3 and news.metric == "accuracy"
    labels = json.loads((news_folder() / "labels.json").read_text())
    for ex in news.train_examples:
        assert ex.options == labels and ex.response in labels
        assert ex.prompt.endswith(f"What is the topic of this news article? Choose one of: {', '.join(labels)}.")


def news_folder():
    import os
    from pathlib import Path

    return Path(os.environ["FORGETLAB_DATA_DIR"]) / "cl5_textcls" / "agnews"


def test_boolq_and_gsm8k_as_tasks():
    boolq = load_task("boolq")
    assert boolq.metric == "accuracy" and {e.response for e in boolq.test} <= {"yes", "no"}
    assert all(e.options == ["yes", "no"] and e.prompt.endswith("? Answer yes or no.") for e in boolq.test)
    gsm = load_task("gsm8k")
    assert gsm.metric == "number" and gsm.max_new_tokens == 256 and "####" in gsm.train[0].response


def test_jsonl_and_trace_json(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "p", "response": "r", "system": "s"}\n\n'
                                      '{"prompt": "q", "answer": "a", "options": ["a", "b"]}\n')
    rows = read_instructions(tmp_path / "t.jsonl")
    assert [(r.prompt, r.response, r.system, r.options) for r in rows] == [("p", "r", "s", None), ("q", "a", None, ["a", "b"])]
    (tmp_path / "trace.json").write_text(json.dumps([{"prompt": "x", "answer": "y"}]))
    assert read_instructions(tmp_path / "trace.json")[0].response == "y"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p"}', "t.jsonl:2: no 'response'"),
    ('{"prompt": "  ", "response": "r"}', "t.jsonl:2: empty 'prompt'"),
    ('{"prompt": "p", "response": "c", "options": ["a", "b"]}', "t.jsonl:2: the response 'c' is not one of its 'options'"),
    ('{"prompt": "p", "response": "r", "metric": "bleu"}', "t.jsonl:2: unknown metric 'bleu'"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    (tmp_path / "t.jsonl").write_text('{"prompt": "ok", "response": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        read_instructions(tmp_path / "t.jsonl")


# -- likelihood ----------------------------------------------------------------------------------
def tiny_llama_backbone(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_bpe(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=300)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    return build_backbone(BackboneConfig(name=str(tmp_path), max_length=64))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_likelihood_scorer_equals_direct_sums(tmp_path, arch):
    torch.manual_seed(0)
    backbone = (build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=64)) if arch == "gpt2"
                else tiny_llama_backbone(tmp_path)).eval()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    options = [[[20], [21, 22, 23]], [[24, 25]], [[26, 27], [28], [29, 30, 31, 32]]]
    scored = continuation_logprobs(backbone, prompts, options, torch.device("cpu"))
    for prompt, conts, got in zip(prompts, options, scored):
        seqs = [prompt + c for c in conts]
        ids, mask = pad(seqs, backbone.pad_id)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, : len(prompt)] = IGNORE_INDEX                       # the prompt is given, not scored
        nll, _ = token_nll(backbone.lm_logits(ids, mask), labels)
        assert got == pytest.approx((-nll.sum(1)).tolist(), abs=1e-4)


def test_chance_levels_and_the_informative_flag_by_hand():
    qa = [{"choices": ["a", "b", "c", "d"]}] * 3 + [{"choices": ["a", "b"]}]
    boolq = [{"answer": 1}] * 3 + [{"answer": 0}]
    chance = chance_levels(qa, boolq, [Instruction("p", "x", options=["x", "y", "z", "w", "v"]), Instruction("p", "free")])
    assert chance["qa_accuracy"] == pytest.approx((3 * 0.25 + 0.5) / 4)
    assert chance["boolq_accuracy"] == 0.75 and chance["gsm8k_accuracy"] == 0.0
    assert chance["held_out_score"] == pytest.approx((0.2 + 0.0) / 2)
    # 200 items at chance 0.25: two standard errors are 2 * sqrt(0.25 * 0.75 / 200) = 0.0612
    assert informative(0.31, 0.25, 200) is False and informative(0.32, 0.25, 200) is True
    assert informative(0.0, 0.0, 50) is False and informative(0.02, 0.0, 50) is True
    assert informative(12.0, None, 1) is None


# -- end to end ----------------------------------------------------------------------------------
def write_tasks(folder, n=32, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, question, options in (("kinds", "colour or animal?", ["colour", "animal"]),
                                    ("temps", "hot or cold?", ["hot", "cold"])):
        path = folder / f"{name}.jsonl"
        rows = []
        for _ in range(n):
            answer = options[rng.integers(2)]
            rows.append({"prompt": f"{rng.choice(WORDS[answer])} {question}", "response": answer, "options": options})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def instruction_config(tmp_path, **sections) -> dict:
    cfg = {"seed": 0, "backbone": {"arch": "gpt2", "size": "nano", "max_length": 64},
           "data": {"scenario": "instruction", "sequence": write_tasks(tmp_path / "tasks"), "template": "{prompt}=",
                    "max_test_per_task": 8, "keep_predictions": 2},
           "method": {"name": "seq"},
           "train": {"epochs": 10, "batch_size": 8, "lr_backbone": 1e-2, "progress": False}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def test_a_tiny_gpt_through_a_two_task_instruction_stream(tmp_path):
    raw = forgetlab.run(instruction_config(tmp_path), out=tmp_path / "run").raw
    assert raw["kind"] == "instruction" and raw["tasks"] == ["kinds", "temps"]
    assert raw["environment"]["seed"] == 0 and raw["config"]["data"]["template"] == "{prompt}="
    G, L = np.array(raw["matrices"]["generated"]["values"]), np.array(raw["matrices"]["likelihood"]["values"])
    assert G.shape == L.shape == (2, 2) and ((0 <= G) & (G <= 1)).all() and ((0 <= L) & (L <= 1)).all()
    before = raw["matrices"]["generated"]["baseline"]
    assert G[0, 0] > before[0] and G[1, 1] > before[1]                    # it learns each task...
    assert G[1, 0] < G[0, 0]                                               # ...and forgets the first
    assert raw["metrics"]["score"] == pytest.approx(G[-1].mean())
    assert raw["metrics"]["bwt"] == pytest.approx(G[1, 0] - G[0, 0])
    # predictions: the baseline and one evaluation per task, the first 2 answers of every task
    assert len(raw["predictions"]) == 3 and all(len(p[t]) == 2 for p in raw["predictions"] for t in raw["tasks"])
    first = raw["predictions"][1]["kinds"][0]
    assert first["score"] == float(first["prediction"].strip() == first["reference"])
    assert raw["instruction"]["metrics"] == {"kinds": "accuracy", "temps": "accuracy"}


def test_resume_continues_exactly(tmp_path, monkeypatch):
    cfg = instruction_config(tmp_path, train={"epochs": 1})
    straight = forgetlab.run(cfg, out=tmp_path / "a").raw
    resumed = killed_and_resumed(cfg, tmp_path / "b", InstructionTuning, monkeypatch, evaluations=2)    # after task 1
    for name in ("generated", "likelihood"):
        assert resumed["matrices"][name]["values"] == straight["matrices"][name]["values"]
    assert resumed["predictions"] == straight["predictions"]


@pytest.mark.parametrize("change, message", [
    ({"data": {"template": "alpacca"}}, "data.template: unknown template 'alpacca'"),
    ({"data": {"max_new_tokens": 0}}, "data.max_new_tokens"),
    ({"method": {"name": "der++"}}, "method.name: der++ does not support instruction streams"),
    ({"eval": {"probe": True}}, "eval.probe: not available on an instruction stream"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, change, message):
    cfg = instruction_config(tmp_path, **change)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "run", str(path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("line, message", [('{"prompt": "red colour or animal?"}', "no 'response' (or TRACE's 'answer')"),
                                           ('{"prompt": "", "response": "colour"}', "empty 'prompt'")])
def test_a_bad_line_is_one_line_and_exit_2(tmp_path, line, message):
    cfg = instruction_config(tmp_path)
    bad = tmp_path / "tasks" / "kinds.jsonl"
    rows = bad.read_text().splitlines()
    rows[4] = line
    bad.write_text("\n".join(rows) + "\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "run", str(path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {bad}:5: {message}"
    assert not (tmp_path / "r" / "results.json").exists()


def test_general_ability_probes_before_and_after_every_task(tmp_path):
    cfg = instruction_config(tmp_path, train={"epochs": 1},
                             eval={"retention": {"corpus": "wikitext2", "max_tokens": 256, "qa": "mmlu", "max_items": 4,
                                                 "boolq_items": 4, "gsm8k_items": 2, "max_new_tokens": 4,
                                                 "held_out": "boolq", "held_out_items": 3, "template": "{prompt}=",
                                                 "max_length": 64}})
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    probes = raw["retention"]["probes"]
    assert set(probes) == {"perplexity", "qa_accuracy", "boolq_accuracy", "gsm8k_accuracy", "held_out_nll", "held_out_score"}
    for name, p in probes.items():
        assert len(p["values"]) == 3 and p["change"] == pytest.approx([v - p["values"][0] for v in p["values"]])
    assert probes["held_out_score"]["chance"] == 0.5 and probes["gsm8k_accuracy"]["chance"] == 0.0
    assert probes["perplexity"]["informative"] is None and probes["perplexity"]["direction"] == "lower"
    assert math.isfinite(probes["held_out_nll"]["values"][-1])


def test_the_report_shows_answers_escaped_and_the_g_matrix(tmp_path):
    task = tmp_path / "html.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"<script>alert({i})</script> yes or no?", "response": "<b>yes</b>"})
                            + "\n" for i in range(12)))
    cfg = instruction_config(tmp_path, data={"sequence": [str(task)], "max_test_per_task": 2},
                             train={"epochs": 1},
                             eval={"retention": {"corpus": "wikitext2", "max_tokens": 128, "qa": "mmlu", "max_items": 4,
                                                 "max_length": 64}})
    run = forgetlab.run(cfg, out=tmp_path / "run")
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(11)&lt;/script&gt;" in page          # the one test example (the last line)
    assert "&lt;b&gt;yes&lt;/b&gt;" in page and "<b>yes</b>" not in page
    qa = run.raw["retention"]["probes"]["qa_accuracy"]
    assert "The matrix G" in page and f"{qa['values'][1]:.4f} ({qa['change'][1]:+.4f})" in page


# -- packing -------------------------------------------------------------------------------------
def test_pack_by_hand():
    from forgetlab.train.batching import pack

    out = pack([[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[-100, 6, 7], [8, 9], [-100, -100, 12, 13]], length=5, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert out["targets"].tolist() == [[-100, 6, 7, -100, 9], [-100, -100, 12, 13, -100]]
    mask = out["attention_mask"][0, 0].int().tolist()
    assert mask[3] == [0, 0, 0, 1, 0] and mask[4] == [0, 0, 0, 1, 1] and mask[2] == [1, 1, 1, 0, 0]
    assert out["attention_mask"][1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]         # padding sees itself only


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_packed_batch_has_the_loss_of_the_padded_one(tmp_path, arch):
    from forgetlab.kinds.instruction import ResponseModel
    from forgetlab.train.batching import Inputs, make_batch

    torch.manual_seed(0)
    backbone = (build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=64)) if arch == "gpt2"
                else tiny_llama_backbone(tmp_path)).eval()
    fmt = Formatter(backbone.tokenizer, "{prompt}=", 64)
    encoded = [fmt.example(Instruction(p, r)) for p, r in (("red cat", "animal"), ("ice", "cold"), ("a b c d", "e"))]
    inputs = Inputs(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.arange(3),
                    tokens=[e.input_ids for e in encoded], targets=[e.labels for e in encoded])
    model = ResponseModel(backbone)
    padded = model(make_batch(inputs, torch.arange(3), backbone.pad_id, torch.device("cpu")))
    packed_batch = make_batch(inputs, torch.arange(3), backbone.pad_id, torch.device("cpu"), pack_length=64)
    packed = model(packed_batch)
    assert packed_batch["input_ids"].size(0) == 1                     # all three in one row
    assert packed.targets.tolist() == padded.targets.tolist()
    torch.testing.assert_close(packed.logits, padded.logits, atol=1e-4, rtol=1e-4)


def test_accumulation_bf16_checkpointing_and_packing_together(tmp_path):
    cfg = instruction_config(tmp_path, train={"epochs": 1, "batch_size": 4, "grad_accum": 2, "precision": "bf16",
                                              "gradient_checkpointing": True, "packing": True})
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    # 29 training examples a task (a file's last tenth is its test set) at batch 4: 8 batches, 2 a step
    assert [log["steps"] for log in raw["task_log"]] == [4, 4] and [log["examples"] for log in raw["task_log"]] == [29, 29]
    assert np.isfinite([log["loss"] for log in raw["task_log"]]).all()


def test_packing_is_refused_where_a_kind_cannot_pack(tmp_path):
    from conftest import tiny_config

    with pytest.raises(UserError, match="train.packing: packs prompt -> response examples; not available on classification"):
        forgetlab.run(tiny_config(train={"packing": True}), out=tmp_path / "run")


# -- methods -------------------------------------------------------------------------------------
INSTRUCTION_METHODS = [{"name": "seq"}, {"name": "freeze", "layers": 0}, {"name": "lora", "r": 4, "lr": 1e-2},
                       {"name": "lora", "per_task": True, "lr": 1e-2}, {"name": "replay", "replay": {"size": 8}},
                       {"name": "replay", "replay": {"size": 8}, "general": "wikitext2", "general_tokens": 512},
                       {"name": "ewc", "fisher_examples": 8}, {"name": "mas"}, {"name": "lwf"}, {"name": "joint"},
                       {"name": "generative_replay", "ratio": 0.25}]


@pytest.mark.parametrize("method", INSTRUCTION_METHODS, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_every_method_that_claims_the_kind_trains_on_it(tmp_path, method):
    raw = forgetlab.run(instruction_config(tmp_path, method=method, train={"epochs": 1}), out=tmp_path / "run").raw
    steps = [4, 8] if method["name"] == "joint" else [4, 4]          # 29 examples at batch 8; joint: 58 on task 2
    if method["name"] == "generative_replay":                        # up to 7 pseudo-examples join task 2
        assert raw["task_log"][1]["examples"] in range(29, 37)
        steps = [4, raw["task_log"][1]["steps"]]
    assert raw["status"] == "completed" and [log["steps"] for log in raw["task_log"]] == steps
    assert np.isfinite([log["loss"] for log in raw["task_log"]]).all()


def test_lwf_distils_the_previous_models_next_token_distribution():
    from forgetlab.methods.components.distill import distillation_loss

    student, teacher = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    # KL(uniform || softmax(2, 0, 0)) at T = 1: sum_k 1/3 (log 1/3 - log p_k)
    p = torch.softmax(student, -1)[0]
    expected = sum((1 / 3) * (math.log(1 / 3) - math.log(float(q))) for q in p)
    assert float(distillation_loss(student, teacher, 1.0)) == pytest.approx(expected, rel=1e-5)


def test_the_shared_instruction_of_a_tasks_prompts():
    from forgetlab.methods.components.pseudo_instructions import shared_instruction

    prompts = ["red cat.\n\nWhat is it? Choose one of: a, b.", "a dog.\n\nWhat is it? Choose one of: a, b."]
    assert shared_instruction(prompts) == ("\n\nWhat is it? Choose one of: a, b.", "suffix")
    assert shared_instruction(["Translate to French: cat", "Translate to French: the dog"]) == ("Translate to French: ", "prefix")
    assert shared_instruction(["abc", "xyz"]) == ("", "none")


def test_generative_replay_writes_pseudo_examples_of_old_tasks_from_their_instruction(tmp_path):
    from forgetlab.engine import Engine

    sequence = []
    for name, question, answers in (("kinds", "colour or animal?", ["colour", "animal"]), ("temps", "hot or cold?", ["hot", "cold"])):
        path = tmp_path / f"{name}.jsonl"        # free answers: every non-empty answer is kept
        path.write_text("".join(json.dumps({"prompt": f"{w} {question}", "response": a}) + "\n"
                                for a in answers for w in WORDS[a] * 4))
        sequence.append(str(path))
    cfg = load_config(instruction_config(tmp_path, data={"sequence": sequence}, method={"name": "generative_replay"}))
    engine = Engine(cfg)
    engine.kind.start(engine.method, tmp_path)
    first, second = engine.stream.tasks
    writer = engine.method.writer
    assert writer.instructions == [(" colour or animal?", "suffix"), (" hot or cold?", "suffix")]
    pseudo = writer.examples(first, 6)
    assert 1 <= len(pseudo) <= 6 and all(ex.options is None and ex.response for ex in pseudo)
    assert all(ex.prompt.endswith(" colour or animal?") and len(ex.prompt) > len(" colour or animal?") for ex in pseudo)
    # before the second task: round(0.2 * 22) = 4 pseudo-examples of the first join its training set
    data = engine.method.training_inputs(second, engine.stream.tasks)
    assert len(data) == len(second.train_examples) + len(engine.method.pseudo) and len(engine.method.pseudo) <= 4
    assert set(engine.method.pseudo.task_ids.tolist()) == {0} and set(engine.method.pseudo.example_ids.tolist()) == {-1}


def test_stop_strings_end_and_cut_answers(tmp_path):
    """Trained to answer "colour"/"animal", with stop "o" every answer that has an "o" is cut before it."""
    plain = forgetlab.run(instruction_config(tmp_path), out=tmp_path / "plain").raw
    stopped = forgetlab.run(instruction_config(tmp_path, data={"stop": ["o"]}), out=tmp_path / "stop").raw
    for full, cut in zip(plain["predictions"][-1]["kinds"], stopped["predictions"][-1]["kinds"]):
        assert cut["prediction"] == full["prediction"].split("o")[0].strip()
