"""ForgettingCallback inside a TRL SFTTrainer: the matrix and general ability a script gets equal
``forgetlab run``'s for the same model, data, steps and seed; what it writes; what it refuses."""
import json

import numpy as np
import pytest
import torch

import forgetlab
from forgetlab.bench.sft import chat_tokenizer, tiny_llama
from forgetlab.errors import UserError
from forgetlab.integrations import ForgettingCallback
from forgetlab.integrations.trainer import run_batches
from forgetlab.config import TrainConfig

WORDS = {"red": ["rose", "cherry", "ruby", "brick"], "green": ["grass", "leaf", "lime", "frog"],
         "hot": ["fire", "sun", "oven", "lava"], "cold": ["ice", "snow", "frost", "winter"]}


def write_tasks(folder, n=64):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, question, options in (("colours", "red or green?", ["red", "green"]),
                                    ("temps", "hot or cold?", ["hot", "cold"])):
        answers = [options[k] for k in rng.integers(2, size=n)]
        rows = [{"prompt": f"{rng.choice(WORDS[a])} {question}", "response": a, "options": options} for a in answers]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A tiny Llama with a chat template (saved, so both sides load the same weights) and its config."""
    tmp = tmp_path_factory.mktemp("callback")
    tasks = write_tasks(tmp / "tasks")
    texts = [json.loads(line)["prompt"] + " " + json.loads(line)["response"]
             for path in tasks for line in open(path)]
    model = tiny_llama(tmp / "model", chat_tokenizer("bpe", texts), hidden=64, layers=2)
    cfg = {"seed": 0, "backbone": {"name": model, "max_length": 48},
           "data": {"scenario": "instruction", "sequence": tasks, "max_train_per_task": 8, "max_test_per_task": 6,
                    "keep_predictions": 1},
           "train": {"epochs": 3, "batch_size": 4, "lr_backbone": 1e-2, "weight_decay": 0.0, "progress": False},
           "eval": {"retention": {"corpus": None, "qa": "mmlu", "max_items": 4}}}
    return tmp, cfg


def train_with_trl(cfg, out, every=("epoch",), every_steps=2):
    """What a user's script does: SFTTrainer on each task in turn, the callback following."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(cfg["backbone"]["name"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cfg["backbone"]["name"])
    callback = ForgettingCallback(cfg, model, tokenizer, out=out, every=every, every_steps=every_steps)
    for task in callback.tasks:
        args = SFTConfig(output_dir=str(out / "trl"), **callback.matching_arguments(), completion_only_loss=True,
                         max_length=None, activation_checkpointing=False, use_cpu=True, report_to="none",
                         save_strategy="no", logging_steps=1, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=callback.train_dataset(task),
                             processing_class=tokenizer)
        callback.attach(trainer)
        trainer.train()
    return callback


def test_the_callbacks_matrices_equal_forgetlab_runs(setting):
    tmp, cfg = setting
    ours = forgetlab.run(cfg, out=tmp / "run").raw
    callback = train_with_trl(cfg, tmp / "callback")
    theirs = json.loads((tmp / "callback" / "results.json").read_text())
    assert theirs["status"] == "completed" and theirs["tasks"] == ours["tasks"] == ["colours", "temps"]
    for name in ("generated", "likelihood"):
        np.testing.assert_allclose(theirs["matrices"][name]["values"], ours["matrices"][name]["values"], atol=1e-5)
        np.testing.assert_allclose(theirs["matrices"][name]["baseline"], ours["matrices"][name]["baseline"], atol=1e-5)
    assert theirs["metrics"] == pytest.approx(ours["metrics"], abs=1e-5)
    G = theirs["retention"]["probes"]["qa_accuracy"]["values"]
    assert len(G) == 3 and G == pytest.approx(ours["retention"]["probes"]["qa_accuracy"]["values"], abs=1e-6)
    # the steps: 3 epochs of 2 batches per task, as forgetlab's loop takes them
    assert [e["steps"] for e in theirs["task_log"]] == [e["steps"] for e in ours["task_log"]] == [6, 6]
    # the training curve: every 2 steps of each trainer, its last point the task's row (measured once)
    curve = theirs["training_curve"]
    assert [(p["task"], p["step"], p["event"]) for p in curve] == [
        ("colours", 2, "steps"), ("colours", 4, "steps"), ("colours", 6, "train_end"),
        ("temps", 2, "steps"), ("temps", 4, "steps"), ("temps", 6, "train_end")]
    assert [curve[2]["values"]["likelihood"], curve[5]["values"]["likelihood"]] == theirs["matrices"]["likelihood"]["values"]
    assert curve[5]["retention"]["qa_accuracy"] == G[2]
    assert (tmp / "callback" / "report.html").is_file() and (tmp / "callback" / "config.yaml").is_file()
    row = forgetlab.load(tmp / "callback").raw
    assert row["run_id"] == theirs["run_id"]
    from forgetlab.store import Store
    stored = Store(tmp / "forgetlab.db").get(theirs["run_id"])
    assert stored["status"] == "completed" and stored["results"]["matrices"] == theirs["matrices"]
    # the trainer's loggers got the numbers at every measurement (trainer.log: its log history)
    logged = [e for e in callback.trainer.state.log_history if "forgetlab/generated/colours" in e]
    assert len(logged) == 3 and logged[-1]["forgetlab/generated/colours"] == theirs["matrices"]["generated"]["values"][1][0]
    assert "forgetlab/general/qa_accuracy" in logged[-1]


def test_run_batches_are_the_loops_batches():
    """Two epochs of 10 examples in batches of 4: each epoch reshuffled by one generator, the last batch short."""
    from forgetlab.train.batching import epoch_batches

    train = TrainConfig(epochs=2, batch_size=4)
    g = torch.Generator().manual_seed(7)
    expected = [b.tolist() for _ in range(2) for b in epoch_batches(10, 4, g)]
    assert run_batches(10, train, 7, None) == expected and [len(b) for b in expected] == [4, 4, 2, 4, 4, 2]
    assert len(run_batches(10, TrainConfig(max_steps=4, batch_size=4, grad_accum=2), 7, None)) == 8


def test_the_callback_refuses_what_it_cannot_follow(setting):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, cfg = setting
    model = AutoModelForCausalLM.from_pretrained(cfg["backbone"]["name"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["backbone"]["name"])
    with pytest.raises(UserError, match="every: step is not an event"):
        ForgettingCallback(cfg, model, tokenizer, every=("step",))
    with pytest.raises(UserError, match="method.name: the trainer trains"):
        ForgettingCallback({**cfg, "method": {"name": "ewc"}}, model, tokenizer)
    with pytest.raises(UserError, match="data.scenario: class_incremental needs a head"):
        ForgettingCallback({**cfg, "data": {"name": "clinc150", "max_tasks": 2}}, model, tokenizer)
    callback = ForgettingCallback({**cfg, "train": {**cfg["train"], "weight_decay": 0.01}}, model, tokenizer,
                                  out=tmp / "refused")
    with pytest.raises(UserError, match="train.weight_decay"):
        callback.matching_arguments()
    with pytest.raises(UserError, match="not a multiple of train.batch_size 3"):
        ForgettingCallback({**cfg, "train": {**cfg["train"], "batch_size": 3}}, model, tokenizer).train_dataset(0)


def test_the_callback_leaves_the_training_as_it_was(setting):
    """With dropout on (the training draws random numbers), weights after training with the callback
    measuring at every step equal those after training without it, bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tmp, cfg = setting
    cfg = {**cfg, "data": {**cfg["data"], "sequence": cfg["data"]["sequence"][:1]}}
    tokenizer = AutoTokenizer.from_pretrained(cfg["backbone"]["name"])
    finals = []
    for follow in (False, True):
        model = AutoModelForCausalLM.from_pretrained(cfg["backbone"]["name"], dtype=torch.float32)
        for module in model.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.3
        callback = ForgettingCallback(cfg, model, tokenizer, out=tmp / "dropout", every_steps=1)
        args = SFTConfig(output_dir=str(tmp / "trl"), **callback.matching_arguments(), completion_only_loss=True,
                         max_length=None, activation_checkpointing=False, use_cpu=True, report_to="none",
                         save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=callback.train_dataset(0), processing_class=tokenizer,
                             callbacks=[callback] if follow else None)
        trainer.train()
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
        if follow:
            assert len(json.loads((tmp / "dropout" / "results.json").read_text())["training_curve"]) == 6
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert not torch.equal(finals[1]["model.layers.0.self_attn.q_proj.weight"],
                           AutoModelForCausalLM.from_pretrained(cfg["backbone"]["name"]).state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_tasks_given_as_data_sets_become_a_stream(setting, tmp_path):
    """A dict of data sets (rows, or train/test splits as a DatasetDict) is written as task files."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, cfg = setting
    model = AutoModelForCausalLM.from_pretrained(cfg["backbone"]["name"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["backbone"]["name"])
    rows = [{"prompt": f"{w} hot or cold?", "response": a} for a in ("hot", "cold") for w in WORDS[a]] * 3   # 24 rows
    split = DatasetDict({"train": Dataset.from_list(rows[:6]), "test": Dataset.from_list(rows[6:9])})
    callback = ForgettingCallback.for_tasks({"temps": rows, "temps_split": split}, model, tokenizer,
                                            general={"corpus": None, "qa": "mmlu", "max_items": 2}, out=tmp_path / "cb")
    assert callback.tasks == ["temps", "temps_split"]
    first, second = callback.engine.stream.tasks
    assert (len(first.train_examples), len(first.test_examples)) == (22, 2)         # one file: 90/10 in file order
    assert (len(second.train_examples), len(second.test_examples)) == (6, 3)
    assert second.test_examples[0].prompt == rows[6]["prompt"] and callback.cfg.eval.retention.max_items == 2
    with pytest.raises(UserError, match="data set 'broken' has a train split but no test split"):
        ForgettingCallback.for_tasks({"broken": {"train": rows}}, model, tokenizer, out=tmp_path / "x")


def test_a_language_modelling_stream_followed_equals_forgetlab_run(setting, tmp_path):
    """Raw text: two corpora as tasks, every token a target; perplexity matrices equal to 1e-4 (relative)."""
    _, cfg = setting
    lm = {"seed": 0, "backbone": {"name": cfg["backbone"]["name"], "max_length": 32},
          "data": {"scenario": "language_modeling", "sequence": ["tinyshakespeare", "wikitext2"], "order_seed": None,
                   "max_train_tokens": 512, "max_eval_tokens": 256},
          "train": {"max_steps": 4, "batch_size": 4, "lr_backbone": 3e-3, "weight_decay": 0.0, "progress": False}}
    ours = forgetlab.run(lm, out=tmp_path / "run").raw
    train_with_trl(lm, tmp_path / "callback", every_steps=None)
    theirs = json.loads((tmp_path / "callback" / "results.json").read_text())
    assert theirs["kind"] == "language_modeling" and theirs["status"] == "completed"
    for name in ("perplexity", "nll", "accuracy"):
        np.testing.assert_allclose(theirs["matrices"][name]["values"], ours["matrices"][name]["values"], rtol=1e-4)
    P = np.array(ours["matrices"]["perplexity"]["values"])
    assert P[0, 0] < ours["matrices"]["perplexity"]["baseline"][0]          # it learnt the first corpus
