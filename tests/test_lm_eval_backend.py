"""eval.general through lm-evaluation-harness: the adapter's three requests against forgetlab's own code,
a run's G with harness columns, the missing extra, and the harness scoring MMLU-style items exactly
as the built-in qa_accuracy does. Offline: the tasks are examples/lm_eval's local YAMLs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_data

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")

import forgetlab  # noqa: E402
from forgetlab.config import BackboneConfig, GeneralConfig  # noqa: E402
from forgetlab.errors import UserError  # noqa: E402
from forgetlab.eval.likelihood import continuation_logprobs  # noqa: E402
from forgetlab.eval.retention import qa_accuracy, qa_items  # noqa: E402
from forgetlab.models.backbones import build_backbone  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "examples" / "lm_eval"
QUIZ = TASKS / "tiny_quiz.jsonl"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=64)).eval()


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_is_forgetlabs_continuation_logprobs(backbone):
    from forgetlab.eval.lm_eval_backend import BackboneLM

    lm = BackboneLM(backbone, CPU, window=64, batch_size=4)
    args = [("Question: 2+2?\nAnswer:", " 4"), ("Question: 2+2?\nAnswer:", " five"), ("The cat", " sat on the mat")]
    got = lm.loglikelihood(requests("loglikelihood", args))
    prefix = len(backbone.tokenize([""])[0])                  # the BOS the byte tokenizer puts first

    def tok(texts):
        return backbone.tokenize(texts)

    def cont(text):
        return tok([text])[0][prefix:]

    want = continuation_logprobs(backbone, [tok(["Question: 2+2?\nAnswer:"])[0], tok(["The cat"])[0]],
                                 [[cont(" 4"), cont(" five")], [cont(" sat on the mat")]], CPU)
    assert [g[0] for g in got] == pytest.approx([want[0][0], want[0][1], want[1][0]], abs=1e-5)
    # greedy: the continuation of one token that is the argmax after its context
    logits = backbone.lm_logits(torch.tensor([tok(["The cat"])[0]]), torch.ones(1, len(tok(["The cat"])[0]), dtype=torch.long))
    best = int(logits[0, -1].argmax())
    text = backbone.tokenizer.decode([best])
    if cont(text) == [best]:                    # the argmax token round-trips through text
        assert lm.loglikelihood(requests("loglikelihood", [("The cat", text)]))[0][1] is True


def test_rolling_loglikelihood_is_the_token_nll_of_the_text(backbone):
    from forgetlab.eval.lm_eval_backend import BackboneLM
    from forgetlab.models.causal_lm import lm_labels, token_nll

    text = "the quick brown fox jumps over the lazy dog"
    lm = BackboneLM(backbone, CPU, window=64, batch_size=4)
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))[0]
    ids = [lm.first_id] + backbone.tokenize([text], max_length=1000)[0][lm.prefix:]
    assert len(ids) <= 64                             # one window: BOS, then every token predicted once
    x = torch.tensor([ids])
    nll, _ = token_nll(backbone.lm_logits(x, torch.ones_like(x)), lm_labels(x, torch.ones_like(x)))
    assert got == pytest.approx(-nll.sum().item(), abs=1e-3)


def test_generate_until_stops_at_the_until_string(backbone):
    from forgetlab.eval.generation import greedy_decode
    from forgetlab.eval.lm_eval_backend import BackboneLM

    lm = BackboneLM(backbone, CPU, window=64, batch_size=4)
    prompt = "Once upon a time"
    free = backbone.tokenizer.decode(greedy_decode(backbone, [backbone.tokenize([prompt])[0]], 12, device=CPU)[0],
                                     skip_special_tokens=True)
    stop = free[len(free) // 2: len(free) // 2 + 2]    # two characters from the middle of the free text
    assert stop
    out = lm.generate_until(requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 12}),
                                                        (prompt, {"until": [], "max_gen_toks": 12})]))
    assert out[0] == free[: free.find(stop)] and stop not in out[0]
    assert out[1] == free


def test_the_harness_scores_as_the_built_in_mmlu_scorer(backbone):
    """Same items, same prompt ("Question: ...\\nAnswer:", " " + choice): the same accuracy and, item by
    item, the same likeliest choice."""
    from lm_eval.evaluator import evaluate

    from forgetlab.eval.lm_eval_backend import BackboneLM, HarnessTasks

    items = qa_items(str(QUIZ), "val", 10)
    harness = HarnessTasks(GeneralConfig(tasks=["tiny_quiz"], include_path=str(TASKS), max_length=64))
    out = evaluate(lm=BackboneLM(backbone, CPU, 64, 4), task_dict=harness.loaded, bootstrap_iters=0, log_samples=True)
    samples = sorted(out["samples"]["tiny_quiz"], key=lambda s: s["doc_id"])
    chosen = [max(range(4), key=lambda k: s["filtered_resps"][k][0]) for s in samples]
    prompts = [f"Question: {it['question']}\nAnswer:" for it in items]
    ours = continuation_logprobs(backbone, [backbone.tokenize([p])[0] for p in prompts],
                                 [[t[1:] for t in backbone.tokenize([" " + c for c in it["choices"]])] for it in items],
                                 CPU)                 # the byte tokenizer's BOS (its one leading special token) cut
    assert chosen == [max(range(4), key=s.__getitem__) for s in ours]
    assert out["results"]["tiny_quiz"]["acc,none"] == qa_accuracy(backbone, items, 64, CPU)


def general_config(tmp_path, **eval_sections) -> dict:
    from test_instruction import write_tasks

    return {"seed": 0, "backbone": {"arch": "gpt2", "size": "nano", "max_length": 64},
            "data": {"scenario": "instruction", "sequence": write_tasks(tmp_path / "tasks", n=8), "template": "{prompt}=",
                     "max_test_per_task": 2},
            "method": {"name": "seq"}, "train": {"epochs": 1, "batch_size": 8, "progress": False},
            "eval": {"general": {"tasks": ["tiny_quiz"], "include_path": str(TASKS), "max_length": 64}, **eval_sections}}


def test_a_run_puts_the_harness_columns_in_g_before_and_after_each_task(tmp_path):
    raw = forgetlab.run(general_config(tmp_path), out=tmp_path / "run").raw
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    probes = saved["retention"]["probes"]
    assert set(probes) == {"lm_eval/tiny_quiz/acc"}
    acc = probes["lm_eval/tiny_quiz/acc"]
    assert len(acc["values"]) == 3 and all(v in (0, 0.25, 0.5, 0.75, 1) for v in acc["values"])   # 4 items
    assert acc["direction"] == "higher" and acc["chance"] == 0.25 and acc["items"] == 4
    assert acc["change"] == pytest.approx([v - acc["values"][0] for v in acc["values"]])
    assert raw["retention"]["probes"] == probes


@needs_data("qa_probes")            # mmlu_local reads the real MMLU's val and dev splits
def test_with_the_built_in_probes_the_harness_mmlu_equals_qa_accuracy(tmp_path):
    """eval.retention's MMLU and the harness's mmlu_local on the same 8 items: one number."""
    cfg = general_config(tmp_path, retention={"corpus": None, "qa": "mmlu", "max_items": 8, "max_length": 64})
    cfg["eval"]["general"] |= {"tasks": ["mmlu_local", "tiny_quiz"], "limit": 8}
    probes = forgetlab.run(cfg, out=tmp_path / "run").raw["retention"]["probes"]
    assert set(probes) == {"qa_accuracy", "lm_eval/mmlu_local/acc", "lm_eval/tiny_quiz/acc"}
    assert probes["lm_eval/mmlu_local/acc"]["values"] == probes["qa_accuracy"]["values"]
    assert probes["lm_eval/mmlu_local/acc"]["chance"] == probes["qa_accuracy"]["chance"] == 0.25


def test_without_the_harness_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "forgetlab.eval.lm_eval_backend", raising=False)
    from forgetlab.eval.retention import Retention

    with pytest.raises(UserError) as err:
        Retention(None, GeneralConfig(tasks=["mmlu"]))
    assert str(err.value) == ("eval.general: the lm_eval backend needs lm-evaluation-harness: "
                              "pip install 'forgetlab[lm_eval]'")


def test_an_unknown_task_names_the_key():
    from forgetlab.eval.lm_eval_backend import HarnessTasks

    with pytest.raises(UserError, match="eval.general.tasks: unknown task 'no_such_task'"):
        HarnessTasks(GeneralConfig(tasks=["no_such_task"], include_path=str(TASKS)))
