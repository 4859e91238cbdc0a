"""Utility metrics on hand-written answers, including the ambiguous ones."""

import pytest

from asft.evaluation.metrics import (agnews_correct, extract_final_number, gsm8k_correct, is_degenerate, parse_rating,
                          percent, sst2_correct)

WORLD, SPORTS, BUSINESS, SCITECH = range(4)


@pytest.mark.parametrize("answer,label,strict,ref", [
    ("Sports", SPORTS, True, True),
    ("sports.", SPORTS, True, True),
    ("The article belongs to the Business category.", BUSINESS, True, True),
    ("Sci/Tech", SCITECH, True, True),
    ("This is about technology.", SCITECH, True, True),
    ("World", SPORTS, False, False),
    # two label names: the reference counts it right for either; we count it wrong
    ("World or Business", BUSINESS, False, True),
    ("Business news about sports teams", SPORTS, False, True),
    ("", WORLD, False, False),
    ("worldwide", WORLD, False, False),  # whole words only
])
def test_agnews(answer, label, strict, ref):
    assert agnews_correct(answer, label) == (strict, ref)


@pytest.mark.parametrize("answer,label,strict,ref", [
    ("positive", 1, True, True),
    ("Positive", 1, True, True),
    ("Positive.", 1, True, False),  # the reference wants the bare word
    ("The sentiment is negative", 0, True, False),
    ("negative", 1, False, False),
    ("positive or negative", 1, False, False),
    ("POSITIVE", 1, True, False),
    ("I am not sure", 0, False, False),
])
def test_sst2(answer, label, strict, ref):
    assert sst2_correct(answer, label) == (strict, ref)


@pytest.mark.parametrize("text,number", [
    ("so 3 + 4 = 7\nThe final answer is:  7", 7.0),
    ("The final answer is: 1,000", 1000.0),
    ("The final answer is: $1,234,567.50 in total", 1234567.5),
    ("The final answer is: 18 dollars", 18.0),
    ("The final answer is: -3", -3.0),
    ("The final answer is: 25%", 25.0),
    ("He has 5 apples and buys 3 more, so 8", 8.0),  # no marker: last number
    ("I cannot solve this.", None),
    ("The final answer is: 5. Wait, The final answer is: 6", 6.0),  # the last marker wins
    ("The final answer is: unclear, maybe 12", 12.0),
    ("The final answer is: none", None),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_gsm8k_compares_numbers_not_strings():
    gold = "2 x 500 = <<2*500=1000>>1000\nThe final answer is:  1000"
    assert gsm8k_correct("The final answer is: 1,000", gold) == (True, True)
    assert gsm8k_correct("The final answer is: 1000.00", gold) == (True, True)
    assert gsm8k_correct("The final answer is: $1,000", gold) == (True, True)
    assert gsm8k_correct("The final answer is: 999", gold) == (False, False)
    assert gsm8k_correct("no idea", gold) == (False, False)
    # the reference takes the first marker, we take the last
    assert gsm8k_correct("The final answer is: 7. Correction: The final answer is: 1000", gold) == (True, False)


def test_parse_rating():
    assert parse_rating("Good answer. Rating: [[8]]") == 8.0
    assert parse_rating("Rating: [[7.5]]") == 7.5
    assert parse_rating("Rating: [6]") == 6.0
    assert parse_rating("[[3]] at first, but on reflection [[9]]") == 9.0
    assert parse_rating("no rating here") is None
    assert parse_rating("Rating: [[11]]") is None


def test_degenerate():
    assert is_degenerate("no no no no")
    assert is_degenerate("I will, will, will, will help")
    assert is_degenerate("The the THE the end")
    assert not is_degenerate("no no no")  # three in a row is allowed
    assert not is_degenerate("that is the thesis, the theory, the theme")
    assert not is_degenerate("")


def test_percent():
    assert percent(1, 3) == 33.33
    assert percent(0, 0) == 0.0


def test_decided_answers_keep_their_score_whatever_follows():
    """The early stops of AG News and SST-2 generation: once ``*_decided`` says so for a partial
    answer, no continuation changes either judgement (checked on every prefix of generated texts)."""
    import random

    from asft.evaluation.metrics import agnews_correct, agnews_decided, sst2_correct, sst2_decided

    rng = random.Random(0)
    words = ["positive", "negative", "Positive", "posit", "ive", "ly", "world", "sports", "sci", "ence",
             "tech", "Business", "/", " ", " ", ".", ",", "the", "or", "\n"]
    conts = ["", "ly", " negative", " positive", "ness", " world", "s", " tech.", "/tech", " and sports"]
    decided = {"sst2": 0, "agnews": 0}
    for _ in range(1500):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        for cut in range(len(text) + 1):
            prefix = text[:cut]
            if sst2_decided(prefix):
                decided["sst2"] += 1
                for label in (0, 1):
                    assert all(sst2_correct(prefix + c, label) == sst2_correct(prefix, label) for c in conts)
            for label in range(4):
                if agnews_decided(prefix, label):
                    decided["agnews"] += 1
                    assert all(agnews_correct(prefix + c, label) == agnews_correct(prefix, label) for c in conts)
    assert decided["sst2"] > 10 and decided["agnews"] > 40  # the property was exercised
    assert not sst2_decided("positive and negat") and sst2_decided("positive, negative.")
    assert not sst2_decided("positive and negative")  # "negative" may still become "negatively"
    assert agnews_decided("World or Sports.", 0) and not agnews_decided("World.", 0)
