"""The answer scorers on hand-made cases whose scores can be checked by hand."""
import pytest

from forgetlab.eval import scoring as S

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def test_normalize_lowercases_and_drops_punctuation_articles_and_extra_spaces():
    assert S.normalize("The  Cat!") == "cat"
    assert S.normalize("  An apple, a pear and THE plum. ") == "apple pear and plum"
    assert S.normalize("Sci/Tech") == "scitech"  # punctuation is removed, not turned into a space
    assert S.normalize("theme") == "theme"  # articles only as whole words


def test_exact_match_ignores_case_articles_and_punctuation():
    assert S.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert S.exact_match("Paris!", "paris") == 1.0
    assert S.exact_match("Paris, France", "Paris") == 0.0


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens; P = 5/6, R = 5/5.
    # F = 2PR / (P + R) = (10/6) / (11/6) = 10/11.
    assert S.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_swapping_prediction_and_reference_swaps_p_and_r_so_f_is_unchanged():
    assert S.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_tokenizer_lowercases_and_drops_punctuation_without_stemming():
    assert S.rouge_l("The CAT, sat!", "the cat sat") == pytest.approx(1.0)
    # No stemming: "cats" and "cat" differ. LCS("cats sat", "cat sat") = 1; P = R = 1/2, F = 1/2.
    assert S.rouge_l("cats sat", "cat sat") == pytest.approx(0.5)
    assert S.rouge_l("dog", "the cat") == 0.0
    assert S.rouge_l("", "the cat") == 0.0


@pytest.mark.parametrize("text, number", [
    ("#### 1,234", "1234"),
    ("The answer is $18.00.", "18"),
    ("It costs 18.0 dollars", "18"),
    ("no number", None),
    ("-3 apples", "-3"),
    ("5-3 = 2", "2"),  # a minus glued to a digit is subtraction, not a sign
    ("She has 3 cats and 4 dogs, so 7 pets.", "7"),  # the last number
    ("2 + 3 = 5\n#### 5 apples, 12 pears", "5"),  # the first number after the last ####
    ("#### 4\n#### 6", "6"),
    ("#### none", None),
    ("Half: 1/2", "0.5"),  # a fraction is one number, written as its decimal value
    ("2.50", "2.5"),
    ("1,2,3", "3"),  # commas not in thousands groups separate numbers
])
def test_final_number(text, number):
    assert S.final_number(text) == number


def test_number_match_against_bare_answer_and_full_solution():
    solution = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"
    assert S.number_match("She sold 72 clips in total.", solution) == 1.0
    assert S.number_match("The answer is $72.00", "72") == 1.0
    assert S.number_match("The answer is 71", solution) == 0.0
    assert S.number_match("I don't know", "72") == 0.0
    assert S.number_match("1/2", "0.5") == 1.0
    assert S.number_match("no number", "no number") == 0.0  # a reference without a number never matches


def test_match_option_exact_and_case():
    assert S.match_option("Sports", TOPICS) == 1
    assert S.match_option("  the business. ", TOPICS) == 2
    assert S.match_option("sci/tech", TOPICS) == 3


def test_match_option_prefix_longest_wins():
    options = ["Sci", "Sci/Tech", "Sports"]
    assert S.match_option("Sci/Tech news", options) == 1
    assert S.match_option("Sci news", options) == 0
    options = ["New York", "New York City"]
    assert S.match_option("New York City, of course", options) == 1
    assert S.match_option("Sportsmanship", TOPICS) is None  # a prefix must end at a word boundary


def test_match_option_contained_single_or_nested():
    assert S.match_option("I think this is about World events", TOPICS) == 0
    assert S.match_option("It is clearly New York City.", ["New York", "New York City"]) == 1


def test_match_option_ambiguous_and_no_match_are_none():
    assert S.match_option("either Sports or Business", TOPICS) is None
    assert S.match_option("cooking", TOPICS) is None
    assert S.match_option("", TOPICS) is None
    assert S.match_option("a", ["A", "B"]) is None  # "a" normalizes to "", which never matches


def test_option_accuracy():
    assert S.option_accuracy("Sci/Tech news", TOPICS, "Sci/Tech") == 1.0
    assert S.option_accuracy("sports", TOPICS, "Sports") == 1.0
    assert S.option_accuracy("sports", TOPICS, "World") == 0.0
    assert S.option_accuracy("Sports or World", TOPICS, "World") == 0.0
    with pytest.raises(ValueError, match="not one of the options"):
        S.option_accuracy("sports", TOPICS, "Health")


def test_score_dispatches_each_metric():
    assert S.score("exact_match", "The Paris.", "paris") == 1.0
    assert S.score("accuracy", "Sci/Tech news", "Sci/Tech", options=TOPICS) == 1.0
    assert S.score("rouge_l", "the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert S.score("number", "so 18 in all", "#### 18") == 1.0
    assert set(S.METRICS) == {"exact_match", "accuracy", "rouge_l", "number"}


def test_score_rejects_unknown_metric_and_accuracy_without_options():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        S.score("bleu", "a", "b")
    with pytest.raises(ValueError, match="needs the options"):
        S.score("accuracy", "Sports", "Sports")
