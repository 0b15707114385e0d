"""Instruction data: tasks of prompt -> response examples, from files or built from labelled data sets.

A task comes from

- a local JSONL file (or a folder with ``train.jsonl`` and ``test.jsonl``), one object a line:
  ``prompt`` and ``response`` (optional ``system``, ``options`` for a closed answer set, ``metric``);
  TRACE's ``{"prompt", "answer"}`` is read too, as JSONL or as a JSON list (TRACE's folders hold
  ``train.json`` and ``test.json``);
- a built-in name: a labelled data set turned into questions whose answer is the label, with the label
  set as the options (``dbpedia``, ``amazon``, ``yahoo``, ``agnews``, ``yelp``, ``clinc150``, ``banking77``),
  or a question set (``boolq``, yes/no; ``gsm8k``, arithmetic scored on the final number);
- a built-in benchmark: ``standard`` (dbpedia, amazon, yahoo, agnews; O-LoRA's orders 1-3, Wang et al.
  2023) and ``five`` (the 5-data-set stream; MbPA++'s orders 1-4, de Masson d'Autume et al. 2019).

The passage comes first and the question last, so a prompt cut from the left to fit keeps its question.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .sources import load_dataset
from .stream import Stream, Task
from .text_files import json_object, read_lines, read_text

METRICS = ("exact_match", "accuracy", "rouge_l", "number")

BENCHMARKS = {
    "standard": {1: ["dbpedia", "amazon", "yahoo", "agnews"],
                 2: ["dbpedia", "amazon", "agnews", "yahoo"],
                 3: ["yahoo", "amazon", "agnews", "dbpedia"]},
    "five": {1: ["yelp", "agnews", "dbpedia", "amazon", "yahoo"],
             2: ["dbpedia", "yahoo", "agnews", "amazon", "yelp"],
             3: ["yelp", "yahoo", "amazon", "dbpedia", "agnews"],
             4: ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]},
}

# Built-in classification sets as questions: the question asked after the passage.
QUESTIONS = {
    "dbpedia": "What kind of entity is this Wikipedia article about?",
    "amazon": "What is the sentiment of this product review?",
    "yelp": "What is the sentiment of this business review?",
    "yahoo": "What is the topic of this question and answer?",
    "agnews": "What is the topic of this news article?",
    "clinc150": "What is the intent of this request?",
    "banking77": "What is the intent of this banking customer's message?",
}
QUESTION_SETS = ("boolq", "gsm8k")
MAX_LISTED_OPTIONS = 20        # larger label sets are not listed in the prompt (CLINC150 has 150 intents)
GSM8K_SUFFIX = "\nSolve it step by step, then give the final number after ####."


@dataclass
class Instruction:
    prompt: str
    response: str
    system: str | None = None
    options: list[str] | None = None       # a closed answer set (response is one of them)
    metric: str | None = None              # None: the task's


@dataclass
class InstructionTask(Task):
    """A task of prompt -> response examples; ``train_texts``/``test_texts`` hold the prompts."""

    train_examples: list[Instruction] = field(default_factory=list)
    test_examples: list[Instruction] = field(default_factory=list)
    metric: str = "exact_match"            # how generated answers are scored
    max_new_tokens: int = 16


@dataclass
class TaskData:
    name: str
    train: list[Instruction]
    test: list[Instruction]
    metric: str
    max_new_tokens: int


def builtin_names() -> list[str]:
    return sorted([*QUESTIONS, *QUESTION_SETS])


def build_instruction_stream(cfg, seed: int = 0) -> Stream:
    """The tasks ``cfg`` (an ``InstructionData`` section) names, in order, each capped to
    ``max_train_per_task``/``max_test_per_task`` examples (a sample drawn with ``seed``, kept in file order)."""
    names = task_sources(cfg)
    rng = random.Random(seed)
    tasks = []
    for index, source in enumerate(names):
        data = load_task(source, cfg.metric)
        train = _cap(data.train, cfg.max_train_per_task, rng)
        test = _cap(data.test, cfg.max_test_per_task, rng)
        if not train or not test:
            raise UserError(f"data: task '{data.name}' has no {'training' if not train else 'test'} examples")
        tasks.append(InstructionTask(index, data.name, [], [e.prompt for e in train], [0] * len(train),
                                     [e.prompt for e in test], [0] * len(test), train_examples=train,
                                     test_examples=test, metric=data.metric,
                                     max_new_tokens=cfg.max_new_tokens or data.max_new_tokens))
    return Stream("instruction", tasks, [])


def task_sources(cfg) -> list[str]:
    """The stream's task sources in training order: a benchmark's order, ``data.sequence``, or one task;
    then ``data.order`` (task names) or ``data.order_seed`` (a seeded permutation), then ``data.max_tasks``."""
    if cfg.name in BENCHMARKS:
        orders = BENCHMARKS[cfg.name]
        if cfg.benchmark_order not in orders:
            raise UserError(f"data.benchmark_order: {cfg.name} has orders {', '.join(map(str, orders))} "
                            f"(got {cfg.benchmark_order})")
        names = list(orders[cfg.benchmark_order])
    else:
        names = list(cfg.sequence) if cfg.sequence else [cfg.name or cfg.path]
    if cfg.order:
        by_name = {task_name(n): n for n in names}
        unknown = [n for n in cfg.order if n not in by_name]
        if unknown or len(set(cfg.order)) != len(cfg.order):
            raise UserError(f"data.order: must name the stream's tasks once each ({', '.join(by_name)}); "
                            f"got {', '.join(cfg.order)}")
        names = [by_name[n] for n in cfg.order]
    elif cfg.order_seed is not None:
        random.Random(cfg.order_seed).shuffle(names)
    return names[: cfg.max_tasks] if cfg.max_tasks else names


def task_name(source: str) -> str:
    """A task's name: a built-in name as it is, a file or folder by its stem."""
    return source if source in QUESTIONS or source in QUESTION_SETS else Path(source).stem


def load_task(source: str, metric: str | None = None) -> TaskData:
    """A built-in task by name, or a local file or folder (``metric``: how its answers are scored)."""
    if source in QUESTIONS:
        return _classification_task(source)
    if source == "boolq":
        return _boolq()
    if source == "gsm8k":
        return _gsm8k()
    return _local_task(Path(source), metric)


# -- built-in conversions ------------------------------------------------------------------------
def _classification_task(name: str) -> TaskData:
    ds = load_dataset(name)
    labels = sorted({ex.label for ex in ds.train})
    options = [_label_text(label) for label in labels]
    listed = f" Choose one of: {', '.join(options)}." if len(options) <= MAX_LISTED_OPTIONS else " Answer with its name."
    question = QUESTIONS[name] + listed

    def convert(rows):
        return [Instruction(f"{ex.text.strip()}\n\n{question}", _label_text(ex.label), options=options) for ex in rows]

    return TaskData(name, convert(ds.train), convert(ds.test), "accuracy", 8)


def _label_text(label: str) -> str:
    return label.replace("_", " ")


def _boolq() -> TaskData:
    def convert(path: Path):
        out = []
        for n, line in enumerate(read_lines(path), 1):
            row = json_object(line, path, n)
            answer = "yes" if str(row.get("label")).lower() in ("true", "yes", "1") else "no"
            question = row["question"].strip().rstrip("?")
            out.append(Instruction(f"{row['passage'].strip()}\n\nQuestion: {question}? Answer yes or no.", answer,
                                   options=["yes", "no"]))
        return out

    folder = _probe_folder("boolq")
    return TaskData("boolq", convert(folder / "train.jsonl"), convert(folder / "test.jsonl"), "accuracy", 4)


def _gsm8k() -> TaskData:
    def convert(path: Path):
        rows = [json_object(line, path, n) for n, line in enumerate(read_lines(path), 1)]
        return [Instruction(row["question"].strip() + GSM8K_SUFFIX, row["answer"].strip()) for row in rows]

    folder = _probe_folder("gsm8k")
    return TaskData("gsm8k", convert(folder / "train.jsonl"), convert(folder / "test.jsonl"), "number", 256)


def _probe_folder(name: str) -> Path:
    folder = Path(os.environ.get("FORGETLAB_DATA_DIR", "")) / "qa_probes" / name
    if not (folder / "test.jsonl").is_file():
        raise UserError(f"data: the built-in task '{name}' needs qa_probes/{name} in FORGETLAB_DATA_DIR "
                        f"(looked in {folder})")
    return folder


# -- local files ----------------------------------------------------------------------------------
def _local_task(path: Path, metric: str | None) -> TaskData:
    """A folder (train and test files) or one file split 90/10 in file order."""
    if path.is_dir():
        train, test = _split_file(path, "train"), _split_file(path, "test")
        if train is None or test is None:
            raise UserError(f"{path}: an instruction task folder needs train.jsonl (or train.json) and test.jsonl "
                            "(or test.json, eval.json)")
        train_rows, test_rows = read_instructions(train), read_instructions(test)
    elif path.is_file():
        rows = read_instructions(path)
        cut = max(1, len(rows) - max(1, len(rows) // 10))
        train_rows, test_rows = rows[:cut], rows[cut:]
    else:
        raise UserError(f"data: '{path}' is neither a built-in instruction task ({', '.join(builtin_names())}) "
                        "nor a file or folder")
    task_metric = metric or _common_metric(train_rows + test_rows)
    return TaskData(path.stem, train_rows, test_rows, task_metric, 16 if task_metric != "rouge_l" else 64)


def _split_file(folder: Path, split: str) -> Path | None:
    names = [f"{split}.jsonl", f"{split}.json"] + (["eval.jsonl", "eval.json"] if split == "test" else [])
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _common_metric(rows: list[Instruction]) -> str:
    """Accuracy where every example has options, else exact match."""
    return "accuracy" if rows and all(r.options for r in rows) else "exact_match"


def read_instructions(path: Path) -> list[Instruction]:
    """Examples of a JSONL file, or of a JSON list (TRACE); errors name the file and line (or item)."""
    if path.suffix == ".json":
        try:
            rows = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of {{prompt, answer}} objects")
        return [_instruction(row, f"{path}: item {n}") for n, row in enumerate(rows, 1)]
    return [_instruction(json_object(line, path, n), f"{path}:{n}")
            for n, line in enumerate(read_lines(path), 1) if line.strip()]


def _instruction(row, where: str) -> Instruction:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    if "prompt" not in row:
        raise UserError(f"{where}: no 'prompt'")
    response = row.get("response", row.get("answer"))
    if response is None:
        raise UserError(f"{where}: no 'response' (or TRACE's 'answer')")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: empty 'prompt'")
    if not isinstance(response, str) or not response.strip():
        raise UserError(f"{where}: empty 'response'")
    options = row.get("options")
    if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
        raise UserError(f"{where}: 'options' must be a list of strings")
    if options is not None and response.strip() not in [o.strip() for o in options]:
        raise UserError(f"{where}: the response {response!r} is not one of its 'options'")
    metric = row.get("metric")
    if metric is not None and metric not in METRICS:
        raise UserError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return Instruction(prompt, response, row.get("system"), options, metric)


def _cap(rows: list[Instruction], k: int | None, rng: random.Random) -> list[Instruction]:
    if k is None or len(rows) <= k:
        return rows
    keep = sorted(rng.sample(range(len(rows)), k))
    return [rows[i] for i in keep]
