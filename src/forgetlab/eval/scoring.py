"""Answer scorers for generated responses, as pure functions; every score lies in 0..1.

- ``exact_match``: short answers (a name, a date), equal after SQuAD-style normalization.
- ``accuracy``: closed answer sets (labels such as "World" or "Sci/Tech"); the generated text is
  mapped to one option by ``match_option`` and scores 1 when that option is the reference.
- ``rouge_l``: free text, the ROUGE-L F-measure of the ``rouge_score`` package (Google's
  maintained reimplementation of ROUGE-1.5.5), not hand-written. Its tokenizer lower-cases and
  keeps only runs of a-z and 0-9, so text with no such characters scores 0. No stemming
  (``use_stemmer=False``, the package's default): tokens are compared as written.
- ``number``: arithmetic answers (GSM8K), the final number of prediction and reference equal.
"""
from __future__ import annotations

import functools
import re
import string
from decimal import Decimal
from fractions import Fraction

METRICS = ("exact_match", "accuracy", "rouge_l", "number")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# A number: an optional minus sign not glued to a word ("5-3" is 5 and 3), an optional "$",
# digits with optional comma thousands groups, then an optional decimal part or "/denominator" (not 0).
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+|/0*[1-9]\d*)?")


def normalize(text: str) -> str:
    """SQuAD-style: lower case, punctuation removed, articles (a, an, the) removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if prediction and reference are equal after ``normalize``, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: from the longest common token subsequence, P = LCS / |prediction|,
    R = LCS / |reference|, F = 2PR / (P + R)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def final_number(text: str) -> str | None:
    """The final answer of a GSM8K-style text, in canonical form; None if it holds no number.

    The first number after the last "####" if there is one, else the last number in the text.
    Commas and "$" are dropped and the value is written plainly: "18.00" -> "18", "-3" -> "-3",
    "2.50" -> "2.5". A fraction "a/b" is one number, written as its decimal value: "1/2" -> "0.5"
    (so "1/2" and "0.5" match); a non-terminating one is cut at 28 significant digits.
    """
    _, marker, tail = text.rpartition("####")
    numbers = _NUMBER.findall(tail if marker else text)
    if not numbers:
        return None
    number = numbers[0] if marker else numbers[-1]
    value = Fraction(number.replace(",", "").replace("$", ""))
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    return format(decimal, "f").rstrip("0")


def number_match(prediction: str, reference: str) -> float:
    """1.0 if both texts have a final number and it is the same; the reference may be a bare
    answer ("18") or a full GSM8K solution ending in "#### 18"."""
    answer = final_number(reference)
    return float(answer is not None and final_number(prediction) == answer)


def match_option(prediction: str, options: list[str]) -> int | None:
    """The index of the option a generated answer names, or None (counts as wrong).

    All texts are compared after ``normalize``, word by word; options that normalize to ""
    never match. In order:
    1. the option equal to the prediction (the first, if several are);
    2. the longest option the prediction starts with ("Sci/Tech news" -> "Sci/Tech", not "Sci");
    3. the option found inside the prediction, if it is the only one found or the longest found
       and every other found option lies inside it ("it is New York City" -> "New York City" over
       "New York"); two unrelated options found ("positive or negative") is ambiguous: None.
    """
    pred = normalize(prediction)
    normed = [(i, normalize(option)) for i, option in enumerate(options)]
    normed = [(i, option) for i, option in normed if option]
    for i, option in normed:
        if option == pred:
            return i
    starts = [(i, option) for i, option in normed if pred.startswith(option + " ")]
    if starts:
        return max(starts, key=lambda item: len(item[1]))[0]
    found = [(i, option) for i, option in normed if _contains(pred, option)]
    if not found:
        return None
    i, longest = max(found, key=lambda item: len(item[1]))
    return i if all(_contains(longest, option) for _, option in found) else None


def _contains(text: str, words: str) -> bool:
    """Whether ``words`` occurs in ``text`` as a whole word sequence (both normalized)."""
    return f" {words} " in f" {text} "


def option_accuracy(prediction: str, options: list[str], reference: str) -> float:
    """1.0 if ``match_option`` maps the prediction to the reference's option, else 0.0.
    The reference must be one of the options (after ``normalize``); ValueError otherwise."""
    ref = normalize(reference)
    if ref not in [normalize(option) for option in options]:
        raise ValueError(f"reference {reference!r} is not one of the options {options}")
    i = match_option(prediction, options)
    return float(i is not None and normalize(options[i]) == ref)


def score(metric: str, prediction: str, reference: str, options: list[str] | None = None) -> float:
    """Score one prediction with the named metric (one of ``METRICS``); ``accuracy`` needs ``options``."""
    if metric == "exact_match":
        return exact_match(prediction, reference)
    if metric == "accuracy":
        if options is None:
            raise ValueError("metric 'accuracy' needs the options of the closed answer set")
        return option_accuracy(prediction, options, reference)
    if metric == "rouge_l":
        return rouge_l(prediction, reference)
    if metric == "number":
        return number_match(prediction, reference)
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
