"""The matrices of a run and what their metric keys mean.

A run's results.json holds ``matrices``: name -> {values (T x T), baseline (T or None), direction
("higher" or "lower" is better), metrics}. Files written before that section get theirs derived from
the older keys (accuracy_matrix, probe_matrix, perplexity_matrix, nll_matrix and their baseline rows)
and the flat ``metrics``, so every reader loops over matrices and lists no metric by name.

A metric key is ``{stem}_{unit}`` (``bwt_ppl``), or the bare unit for the final average (``ppl``,
``probe_acc``), where the unit names the matrix's measure; the accuracy matrix, the first of them,
keeps its historical bare stems (``bwt``, ``forgetting``) beside ``acc`` and ``learning_acc``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stem:
    about: str                   # {what}: the matrix's measure; {worse}: the sign that means forgetting
    difference: bool = False     # a difference of two values (read on a log scale where there is one)


# Every stem a metric key can have, in the order a run's metrics table lists them ("" is the final average).
STEMS = {
    "": Stem("final average {what} over all tasks"),
    "avg_incremental": Stem("{what} on the tasks seen so far, averaged over the stream"),
    "learning": Stem("{what} on each task just after learning it"),
    "bwt": Stem("backward transfer: final − just learnt {what} ({worse}: forgetting)", difference=True),
    "fwt": Stem("forward transfer: {what} just before learning a task − before any training", difference=True),
    "forgetting": Stem("mean {change} of each task's {what} from its best earlier value", difference=True),
    "intransigence": Stem("gap to the joint model's {what} on each task just after learning it", difference=True),
}
# The stems a table comparing runs shows, in its order.
SUMMARY_STEMS = ("", "bwt", "forgetting", "intransigence", "avg_incremental", "learning")
SHORT = {"avg_incremental": "avg inc."}                    # column titles
# The measure a matrix holds, in words, where its name alone says too little.
WHAT = {"probe": "accuracy of a linear probe on the frozen features", "nll": "log-perplexity (mean NLL, nats)"}
# A matrix whose values are the log of another's: comparisons read that one's differences on this scale.
LOG_SCALE = {"perplexity": "nll"}

# Files without ``matrices``: (name, values key, baseline key, direction, unit of its metric keys).
_OLDER = (
    ("accuracy", "accuracy_matrix", "baseline_accuracy", "higher", "acc"),
    ("probe", "probe_matrix", None, "higher", "probe_acc"),
    ("perplexity", "perplexity_matrix", "baseline_perplexity", "lower", "ppl"),
    ("nll", "nll_matrix", "baseline_nll", "lower", "nll"),
)


def split_key(key: str) -> tuple[str, str]:
    """A metric key's (stem, unit): ``bwt_ppl`` -> ("bwt", "ppl"), ``ppl`` -> ("", "ppl"), ``bwt`` ->
    ("bwt", "acc"), ``probe_acc`` -> ("", "probe_acc")."""
    if key in STEMS:
        return key, "acc"
    for stem in STEMS:
        if stem and key.startswith(stem + "_"):
            return stem, key[len(stem) + 1:]
    return "", key


def matrices_of(results: dict) -> dict[str, dict]:
    """The run's matrices, name -> {values, baseline, direction, metrics}, in results.json's order.
    For older files: derived, each matrix that has values or metric keys (values None where only the
    metrics are known, as in a store's row), then one per other unit of the metric keys, named by it."""
    if results.get("matrices"):
        return {name: {"values": m.get("values"), "baseline": m.get("baseline"),
                       "direction": m.get("direction", "higher"), "metrics": dict(m.get("metrics") or {})}
                for name, m in results["matrices"].items()}
    flat = results.get("metrics") or {}
    directions = results.get("metric_directions") or {}
    out = {}
    for name, values_key, baseline_key, direction, unit in _OLDER:
        metrics = {k: v for k, v in flat.items() if split_key(k)[1] == unit}
        values = results.get(values_key)
        if values is not None or metrics:
            out[name] = {"values": values, "baseline": results.get(baseline_key) if baseline_key else None,
                         "direction": directions.get(unit, direction), "metrics": metrics}
    known = {unit for *_, unit in _OLDER}
    for key, value in flat.items():
        unit = split_key(key)[1]
        if unit not in known:
            out.setdefault(unit, {"values": None, "baseline": None, "direction": directions.get(unit, "higher"),
                                  "metrics": {}})["metrics"][key] = value
    return out


def measure(name: str) -> str:
    """What matrix ``name`` holds, in words."""
    return WHAT.get(name, name)


def describe(key: str, name: str, direction: str) -> str:
    """What a metric key of matrix ``name`` means, in words."""
    stem, _ = split_key(key)
    higher = direction == "higher"
    text = STEMS[stem].about.format(what=measure(name), worse="negative" if higher else "positive",
                                    change="drop" if higher else "rise")
    return text + ("" if higher else " (lower is better)")


def column_title(key: str) -> str:
    """A metric key as a column title: ``avg_incremental_acc`` -> "avg inc. acc", ``bwt_nll`` -> "bwt nll"."""
    stem, unit = split_key(key)
    if not stem:
        return key.replace("_", " ")
    return stem if key == stem else f"{SHORT.get(stem, stem)} {unit.replace('_', ' ')}"


def ordered(keys, stems=tuple(STEMS)) -> list[str]:
    """The keys with one of ``stems``, in the order of ``stems`` (then as given)."""
    keys = list(keys)
    return sorted((k for k in keys if split_key(k)[0] in stems), key=lambda k: stems.index(split_key(k)[0]))
