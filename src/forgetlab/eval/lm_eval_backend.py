"""General ability through lm-evaluation-harness (``eval.general: {backend: lm_eval}``): the harness's
tasks on the in-memory model, before the stream and after each task, as columns
``lm_eval/<task>/<metric>`` of G beside ``eval.retention``'s probes.

``BackboneLM`` is an adapter, not the harness's ``HFLM(pretrained=model)``: a forgetlab ``Backbone``
is a body (``backbone.model``, which methods wrap: LoRA, adapters, prompt tuning's virtual tokens)
and a separate output layer (``backbone.lm_head``), sometimes over forgetlab's own byte tokenizer or
an LSTM, so there is no ``PreTrainedModel`` whose forward and ``generate`` HFLM could call for every
backbone. The adapter scores with the code the built-in probes use: ``loglikelihood`` through
``eval/likelihood.continuation_logprobs`` (context and continuation tokenized apart, as ``qa_accuracy``;
HFLM tokenizes them together and splits), ``loglikelihood_rolling`` as the NLL of disjoint windows
(the harness's own windowing) and ``generate_until`` through ``eval/generation.greedy_decode``
(always greedy). The harness is an optional extra: ``pip install 'forgetlab[lm_eval]'``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import GeneralConfig
from ..errors import UserError
from ..models.backbones import Backbone
from ..models.peft import max_positions
from .generation import greedy_decode
from .likelihood import continuation_logprobs
from .retention import continuation_inputs

MISSING = "eval.general: the lm_eval backend needs lm-evaluation-harness: pip install 'forgetlab[lm_eval]'"

try:
    from lm_eval import evaluator, utils
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager
except ImportError:
    raise UserError(MISSING) from None


class BackboneLM(LM):
    """lm-evaluation-harness's three requests on a forgetlab Backbone (this module's docstring)."""

    def __init__(self, backbone: Backbone, device: torch.device, window: int, batch_size: int):
        super().__init__()
        self.backbone, self._device, self.batch_size = backbone, device, batch_size
        self.window = min(window, max_positions(backbone.model) or window)
        self.prefix = len(backbone.tokenize([""])[0])        # special tokens the tokenizer puts first
        tok = backbone.tokenizer
        first = getattr(tok, "bos_token_id", None)
        self.first_id = first if first is not None else getattr(tok, "eos_token_id", None)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log-probability, greedy)`` of each (context, continuation); requests with the same
        context are one prompt whose continuations share its KV cache."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.args[0], []).append(i)
        contexts = list(groups)
        prompts, conts = continuation_inputs(self.backbone, contexts,
                                             [[requests[i].args[1] for i in groups[c]] for c in contexts], self.window)
        prompts = [p or [self.first_id] for p in prompts]     # an empty context: BOS (else EOS) before it
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        scored = [(g, [c for c in cs if c]) for g, cs in zip(prompts, conts)]
        keep = [k for k, (_, cs) in enumerate(scored) if cs]
        if keep:
            results = continuation_logprobs(self.backbone, [scored[k][0] for k in keep],
                                            [scored[k][1] for k in keep], self._device, greedy=True)
            for k, values in zip(keep, results):
                rows = [i for i, c in zip(groups[contexts[k]], conts[k]) if c]    # an empty continuation: 0.0
                for i, (logp, greedy) in zip(rows, values):
                    out[i] = (logp, bool(greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's summed log-probability, BOS (else EOS) first, in disjoint windows of the
        backbone's context (the harness's ``get_rolling_token_windows``), each window scored as a
        continuation of the tokens before it."""
        texts = [req.args[0] for req in requests]
        windows, owner = [], []
        for n, ids in enumerate(self.backbone.tokenize(texts, max_length=1 << 30)):
            for pair in utils.get_rolling_token_windows(ids[self.prefix:], self.first_id, self.window, 1):
                windows.append(utils.make_disjoint_window(pair))
                owner.append(n)
        out = [0.0] * len(texts)
        if windows:
            scores = continuation_logprobs(self.backbone, [w[0] for w in windows], [[w[1]] for w in windows],
                                           self._device)
            for n, (score,) in zip(owner, scores):
                out[n] += score
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy text after each context, cut before the first of its ``until`` strings (sampling
        settings are ignored); contexts cut from the left to leave ``max_gen_toks`` in the window."""
        out = [""] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            kwargs = req.args[1] or {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            groups.setdefault((int(kwargs.get("max_gen_toks", 256)), tuple(until)), []).append(i)
        for (max_new, until), rows in groups.items():
            budget = self.window - max_new
            if budget < 1:
                raise UserError(f"eval.general: a task asks for {max_new} new tokens, more than the "
                                f"{self.window}-token window (eval.general.max_length) leaves for its prompt")
            prompts = [self._prompt(requests[i].args[0], budget) for i in rows]
            ids = greedy_decode(self.backbone, prompts, max_new, device=self._device, batch_size=self.batch_size,
                                stop_strings=until)
            for i, generated in zip(rows, ids):
                text = self.backbone.tokenizer.decode(generated, skip_special_tokens=True)
                cuts = [text.find(s) for s in until if s and s in text]
                out[i] = text[: min(cuts)] if cuts else text
        return out

    def _prompt(self, context: str, budget: int) -> list[int]:
        """The context's ids cut from the left to ``budget``, the leading special tokens kept."""
        ids = self.backbone.tokenize([context], max_length=1 << 30)[0]
        kept = ids[: self.prefix] + ids[self.prefix:][-(budget - self.prefix):] if budget > self.prefix else ids[-budget:]
        return kept or [self.first_id]

    @property
    def device(self):
        return self._device


class HarnessTasks:
    """The configured tasks, loaded once; ``measure`` gives one row of ``lm_eval/<task>/<metric>`` figures.
    ``probes`` (each column's direction and what it is), ``chance`` (1/choices for multiple-choice
    accuracies of a task, else None) and ``counts`` (items scored) describe the columns."""

    def __init__(self, cfg: GeneralConfig):
        self.cfg = cfg
        manager = _task_manager(cfg)
        try:
            self.loaded = manager.load(list(cfg.tasks))
        except (KeyError, ValueError) as exc:
            raise UserError(f"eval.general.tasks: {exc}") from None
        for task in self.loaded["tasks"].values():         # as simple_evaluate sets them
            if cfg.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=cfg.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=1234)
        self.probes: dict[str, tuple[str, str]] = {}
        self.chance: dict[str, float | None] = {}
        self.counts: dict[str, int | None] = {}
        self._task_chance = {name: _chance(task, cfg.limit) for name, task in self.loaded["tasks"].items()}

    def measure(self, backbone: Backbone, device: torch.device) -> dict[str, float]:
        lm = BackboneLM(backbone, device, self.cfg.max_length, self.cfg.batch_size)
        was_training = backbone.training
        backbone.eval()
        try:
            results = evaluator.evaluate(lm=lm, task_dict=self.loaded, limit=self.cfg.limit,
                                                 bootstrap_iters=0, log_samples=False)
        finally:
            backbone.train(was_training)
        return self._row(results)

    def _row(self, results: dict) -> dict[str, float]:
        row = {}
        for name in self.cfg.tasks:
            better = results.get("higher_is_better", {}).get(name, {})
            for key, value in results["results"].get(name, {}).items():
                metric, _, filt = key.partition(",")
                if metric not in better or not isinstance(value, (int, float)):     # stderr, sample_len, alias
                    continue
                column = f"lm_eval/{name}/{metric}" + ("" if filt in ("", "none") else f",{filt}")
                row[column] = float(value)
                direction = "higher" if better[metric] else "lower"
                self.probes[column] = (direction, f"lm-evaluation-harness {name}: {metric}")
                self.chance[column] = (self._task_chance.get(name) if metric in ("acc", "acc_norm") else None)
                self.counts[column] = self._count(results, name)
        return row

    def _count(self, results: dict, name: str) -> int | None:
        """Items scored: a task's own, or the sum over a group's tasks."""
        samples = results.get("n-samples", {})
        if name in samples:
            return samples[name].get("effective")
        leaves = _leaves(self.loaded.get("group_map", {}), name)
        return sum(samples[t]["effective"] for t in leaves if t in samples) or None


def _leaves(group_map: dict, name: str) -> list[str]:
    children = group_map.get(name)
    if children is None:
        return [name]
    return [leaf for child in children for leaf in _leaves(group_map, getattr(child, "group_name", child))]


def _chance(task, limit: int | None) -> float | None:
    """Mean 1/choices over a multiple-choice task's scored items (the first ``limit``), else None."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return None
    docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
    return sum(1 / len(task.doc_to_choice(doc)) for doc in docs) / len(docs) if docs else None


def _task_manager(cfg: GeneralConfig):
    """The harness's task index: only ``include_path`` when it names every task (indexing the harness's
    own ~15,000 task files takes ~10 s), else it and the harness's tasks."""
    if cfg.include_path and not Path(cfg.include_path).is_dir():
        raise UserError(f"eval.general.include_path: {cfg.include_path} is not a folder")
    if cfg.include_path:
        local = TaskManager(include_path=cfg.include_path, include_defaults=False)
        if all(name in local.all_tasks for name in cfg.tasks):
            return local
    manager = TaskManager(include_path=cfg.include_path)
    unknown = [name for name in cfg.tasks if name not in manager.all_tasks]
    if unknown:
        raise UserError(f"eval.general.tasks: unknown task {unknown[0]!r} (not a harness task"
                        + (f" nor in {cfg.include_path})" if cfg.include_path else "; give include_path for your own)"))
    return manager
