"""The experiment config: pydantic models, YAML loading, dotted ``--set`` overrides.

Every validation error becomes one :class:`UserError` line naming the file, the line and the key.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from .errors import UserError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated, defaults filled in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(Section):
    name: str | None = None                      # a hub id or local path (HF AutoModel)
    arch: Literal["gpt2", "bert", "lstm"] | None = None   # or a small model built from a config
    size: str = "tiny"                           # width/depth preset for ``arch``
    init: Literal["pretrained", "random"] = "pretrained"   # random: backbone.name's architecture, fresh weights
    kind: Literal["auto", "encoder", "causal_lm"] = "auto"
    pooling: Literal["cls", "mean", "last"] | None = None   # None: mean for encoders, last for causal LMs
    max_length: int = Field(64, ge=2)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"   # auto: the checkpoint's
    revision: str | None = None
    trust_remote_code: bool = False
    dropout: float | None = Field(None, ge=0, lt=1)   # every dropout of the model set to this (None: the model's own)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name is None) == (self.arch is None):
            raise ValueError("set exactly one of backbone.name (a pretrained model) or backbone.arch (built from a config)")
        if self.init == "random" and self.name is None:
            raise ValueError("backbone.init: random re-initialises backbone.name's architecture; backbone.arch is "
                             "always randomly initialised")
        return self


class DataConfig(Section):
    """The keys every data section has. ``data.scenario`` chooses the task kind (``kinds/``), whose own
    section subclasses this one with its keys; until the kind validates it, other keys are kept as given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str | None = None                      # a built-in data set name
    path: str | None = None                      # or a local folder (JSONL) or CSV file
    sequence: list[str] | None = None            # or several data sets, one task each
    scenario: str = "class_incremental"          # the kind of task (its scenario), see kinds/
    order_seed: int | None = 0                   # seeded permutation of classes (or data sets); None keeps file order
    order: list[str] | None = None               # an explicit class (or data set) order
    max_tasks: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("name", "path", "sequence") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of data.name, data.path or data.sequence")
        return self


class HeadConfig(Section):
    type: Literal["linear", "cosine"] = "linear"
    scale: float = Field(16.0, gt=0)             # cosine head: logits = scale · cos(w, x)
    preallocate: bool = False                    # all classes' outputs from the start (else grow per task)
    bias: bool = True                            # linear head only


class TrainConfig(Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)    # per task; overrides epochs when set
    batch_size: int = Field(16, ge=1)
    group_by_length: bool = True                 # training batches drawn from length-sorted groups of 8 (less padding)
    eval_batch_size: int = Field(128, ge=1)
    lr_backbone: float = Field(2e-5, ge=0)
    lr_head: float = Field(1e-3, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    feature_cache: bool = True                   # reuse frozen-backbone features across tasks and runs
    progress: bool = True
    grad_accum: int = Field(1, ge=1)             # micro-batches of batch_size per optimizer step
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the training forward where the device has it
    gradient_checkpointing: bool = False         # recompute activations in backward (less memory, ~1/3 slower)
    packing: bool = False                        # instruction streams: a batch's examples packed into as few rows
                                                 # of backbone.max_length as fit, none attending to another
    distributed: Literal["ddp", "fsdp", "deepspeed"] | None = None   # under accelerate launch / torchrun with
                                                 # several processes: how they share the work (docs/scaling.md)
    zero_stage: Literal[1, 2, 3] = 2             # deepspeed's ZeRO stage


class RetentionConfig(Section):
    """General ability of a causal LM, before the stream and after each task: a suite of probes, each
    on its own number of items (None: the probe is off)."""
    corpus: str | None = "wikitext2"             # perplexity: wikitext2 (valid) or a text file; None: skip
    max_tokens: int = Field(4096, ge=2)          # of the corpus
    qa: str | None = "mmlu"                      # zero-shot multiple choice: mmlu or a JSONL file; None: skip
    qa_split: str = "val"
    max_items: int = Field(200, ge=1)            # of the qa probe
    boolq_items: int | None = Field(None, ge=1)  # BoolQ yes/no by log-likelihood (qa_probes/boolq test split)
    gsm8k_items: int | None = Field(None, ge=1)  # GSM8K by greedy generation, the final number (qa_probes/gsm8k)
    held_out: str | None = None                  # instruction data never trained on (a built-in task or a file):
    held_out_items: int = Field(100, ge=1)       #   its responses' NLL and its answers, scored as tasks are
    template: str = "auto"                       # how gsm8k and held_out prompts are rendered (data.template's values)
    max_new_tokens: int = Field(256, ge=1)       # gsm8k answers (held_out: its task's own)
    max_length: int = Field(256, ge=2)           # tokens per window (at most the model's positions)


class GeneralConfig(Section):
    """General ability through another evaluation backend, before the stream and after each task, beside
    eval.retention's probes in G (docs/integrations.md). ``lm_eval``: lm-evaluation-harness on the
    in-memory model (eval/lm_eval_backend.py), its tasks by name or from YAML files in ``include_path``."""
    backend: Literal["lm_eval"] = "lm_eval"
    tasks: list[str] = Field(min_length=1)       # harness task or group names (mmlu, hellaswag, ...)
    include_path: str | None = None              # a folder of task YAMLs (e.g. examples/lm_eval), searched first
    limit: int | None = Field(None, ge=1)        # items per task (None: all)
    num_fewshot: int | None = Field(None, ge=0)  # None: each task's own (0 where it names none)
    batch_size: int = Field(32, ge=1)            # prompts decoded at once by generate_until
    max_length: int = Field(1024, ge=2)          # tokens per context (at most the model's positions)


class EvalConfig(Section):
    probe: bool = False                          # the probe matrix P: a probe on frozen features after each task
    probe_type: Literal["linear", "cosine", "prototype"] = "linear"
    probe_epochs: int = Field(20, ge=1)
    probe_lr: float = Field(1e-3, gt=0)
    probe_batch_size: int = Field(64, ge=1)
    probe_layers: list[int] | None = None        # also probe these hidden states (0: embeddings, -1: last layer)
    cka: bool = False                            # linear CKA to the initial backbone, class overlap
    cka_examples: int = Field(512, ge=2)         # the fixed probe set: this many test examples, spread over tasks
    retention: RetentionConfig | None = None     # causal LMs: perplexity and zero-shot QA after each task
    general: GeneralConfig | None = None         # causal LMs: an evaluation backend's tasks after each task


class LogConfig(Section):
    """Optional trackers (they never change a run's numbers, so they are not part of its hash)."""
    tensorboard: bool = False                    # event files in <run dir>/tensorboard, or tensorboard_dir
    tensorboard_dir: str | None = None
    mlflow: bool = False
    mlflow_tracking_uri: str | None = None       # None: MLFLOW_TRACKING_URI or MLflow's default
    mlflow_experiment: str = "forgetlab"
    wandb: bool = False                          # Weights & Biases: one W&B run per forgetlab run
    wandb_project: str = "forgetlab"
    wandb_entity: str | None = None              # None: W&B's default entity
    wandb_mode: Literal["online", "offline", "disabled"] | None = None   # None: WANDB_MODE or W&B's default
    wandb_dir: str | None = None                 # None: the run directory


class OnlineConfig(Section):
    """An online, task-free stream: one pass over the tasks' training examples in blurry segments,
    evaluated every ``eval_every`` optimizer steps (docs/design.md, "Online streams")."""
    blurry: float = Field(0.1, ge=0, lt=1)       # share of each task's examples moved into its neighbours' segments
    eval_every: int = Field(8, ge=1)             # optimizer steps between anytime evaluations
    boundary_every: int | None = Field(None, ge=1)   # steps between pseudo-boundaries (methods that need them)


# Sections added after runs were stored: left out of the hash when absent, so those runs keep theirs.
LATER_SECTIONS = ("online",)
LATER_BACKBONE_KEYS = ("dropout",)                  # and backbone keys, when None
LATER_EVAL_KEYS = ("general",)                      # and eval keys, when None
EXECUTION_KEYS = ("distributed", "zero_stage")      # train keys left out of the hash (Config.hash)


class Config(Section):
    seed: int = 0
    name: str | None = None
    backbone: BackboneConfig
    data: SerializeAsAny[DataConfig]             # resolved to the kind's own section (kinds/)
    head: HeadConfig = HeadConfig()
    method: dict[str, Any] = {"name": "seq"}
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    online: OnlineConfig | None = None           # present: an online, task-free stream

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """A stable hash of the resolved config (less ``log``, a later section left out, and how the
        run is spread over processes, ``EXECUTION_KEYS``: it gives the same numbers at any world size,
        and resumes at any): the identity of a run."""
        kept = {k: v for k, v in self.to_dict().items() if k != "log" and not (k in LATER_SECTIONS and v is None)}
        kept["train"] = {k: v for k, v in kept["train"].items() if k not in EXECUTION_KEYS}
        kept["backbone"] = {k: v for k, v in kept["backbone"].items() if not (k in LATER_BACKBONE_KEYS and v is None)}
        kept["eval"] = {k: v for k, v in kept["eval"].items() if not (k in LATER_EVAL_KEYS and v is None)}
        blob = json.dumps(kept, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class CorpusConfig(Section):
    """The text a language model is pretrained on."""
    name: str | None = None                      # built-in corpus: gutenberg_nltk, tinyshakespeare or wikitext2
    path: str | None = None                      # or a folder (train.txt, valid.txt), a .txt file or a .jsonl of texts
    valid_path: str | None = None                # validation text (default: the folder's valid.txt, else a held-out tail)
    valid_fraction: float = Field(0.05, gt=0, lt=1)   # share of documents (or of a single text) held out
    text_field: str = "text"                     # the field of a .jsonl line that holds its text
    max_train_chars: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name is None) == (self.path is None):
            raise ValueError("set exactly one of corpus.name (a built-in corpus) or corpus.path")
        return self


class TokenizerConfig(Section):
    vocab_size: int = Field(4096, ge=300)        # byte-level BPE: 256 bytes, 2 special tokens, the merges
    min_frequency: int = Field(2, ge=1)


class LMConfig(Section):
    arch: Literal["gpt2", "lstm", "moe"] = "gpt2"   # GPT-2-style Transformer, LSTM, or Mixtral-style mixture of experts
    size: str = "small"                          # width/depth preset (see models/lm_families.py)
    dim: int | None = Field(None, ge=8)          # these three, when set, replace the preset's
    layers: int | None = Field(None, ge=1)
    heads: int | None = Field(None, ge=1)
    seq_len: int = Field(256, ge=8)
    experts: int = Field(4, ge=2)                # moe: experts per layer
    experts_per_token: int = Field(2, ge=1)      # moe: experts each token is routed to


class PretrainTrainConfig(Section):
    steps: int | None = Field(None, ge=1)        # optimizer steps; or epochs over the training tokens
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)   # cosine decay to lr × this
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    save_steps: list[int] = []                   # checkpoints at these steps; the last step is always saved
    eval_tokens: int = Field(65536, ge=16)       # validation tokens for each checkpoint's perplexity
    num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of matrix products (weights stay fp32)
    compile: bool = False                        # torch.compile the model

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.steps or train.epochs")
        return self


class PretrainConfig(Section):
    seed: int = 0
    corpus: CorpusConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: LMConfig = LMConfig()
    train: PretrainTrainConfig
    out: str | None = None                       # default runs/pretrain/<arch>-<size>-seed<seed>

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# The keys a run repeats over: sweep labels leave them out, reports average over them and pair on them.
REPLICATE_PATHS = ("seed", "data.order_seed", "data.order", "data.transform.seed")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested settings as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.epochs=2"`` -> ``("train.epochs", 2)``; the value is read as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys in a nested dict (a copy), creating sections as needed."""
    raw = json.loads(json.dumps(raw))
    for key, value in overrides.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(source: str | Path | dict, overrides: dict[str, Any] | None = None) -> tuple[dict, str, dict]:
    """A YAML file (or a dict) with ``--set`` overrides applied: ``(raw, where, lines)``, where ``lines``
    maps each key path to its line in the file, or to ``"--set"`` for an overridden key."""
    lines: dict[tuple, int | str] = {}
    where = "config"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: the config must be a mapping of sections")
    if overrides:
        raw = apply_overrides(raw, overrides)
        for key in overrides:
            path = tuple(key.split("."))
            lines = {k: v for k, v in lines.items() if k[: len(path)] != path}
            lines[path] = "--set"
    return raw, where, lines


def validate(model: type[BaseModel], raw: dict, where: str, lines: dict) -> Any:
    """``model.model_validate(raw)``, its first error as one :class:`UserError` line."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc, model, where, lines)) from None


def load_pretrain_config(source: str | Path | dict, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """A ``forgetlab pretrain`` config, validated; errors name the file, line and key."""
    return validate(PretrainConfig, *read_yaml(source, overrides))


def _at(where: str, lines: dict[tuple, int | str], loc: tuple) -> str:
    """Where the value at ``loc`` came from: ``file:line`` (of the key, else of its section), or its ``--set``."""
    for n in range(len(loc), 0, -1):
        found = lines.get(loc[:n])
        if isinstance(found, str):
            return found
        if found is not None:
            return f"{where}:{found}"
    return where


def _describe(exc: ValidationError, model: type[BaseModel], where: str, lines, prefix: tuple = ()) -> str:
    """The first validation error as one line: file:line: key: what is wrong."""
    err = exc.errors()[0]
    loc = prefix + tuple(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    key = ".".join(loc) or "(top level)"
    head = f"{_at(where, lines, loc)}: {key}"
    if err["type"] == "extra_forbidden":
        known = _fields_at(model, loc[len(prefix):-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.4)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"
        return f"{head}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{head}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{head}: {msg} (got {err.get('input')!r})" if err["type"] != "value_error" else f"{head}: {msg}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        ann = next((a for a in get_args(ann) if a is not type(None)), ann)      # X | None -> X
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path of a YAML mapping to its 1-based line number."""
    out: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (str(key.value),)
                out[p] = key.start_mark.line + 1
                walk(value, p)

    walk(yaml.compose(text), ())
    return out


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
