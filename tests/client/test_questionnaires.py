"""PHQ-9 and GAD-7: wording, scoring bands, the crisis flag and crisis lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.client import questionnaires
from rxfed.client.questionnaires import (
    ANSWERS,
    ATTRIBUTION,
    CRISIS_LINES,
    GAD7,
    INSTRUMENTS,
    PHQ9,
    Instrument,
    Score,
    crisis_resources,
    parse_answers,
    score,
)
from rxfed.errors import BadRequest


def test_attribution_is_kept_and_shown():
    assert "Spitzer" in ATTRIBUTION and "No permission required" in ATTRIBUTION
    assert " ".join(ATTRIBUTION.split()) in " ".join(questionnaires.__doc__.split())


def test_instruments_as_published():
    assert INSTRUMENTS == {"phq9": PHQ9, "gad7": GAD7}
    assert len(PHQ9.items) == 9 and len(GAD7.items) == 7
    assert PHQ9.stem == "Over the last 2 weeks, how often have you been bothered by any of the following problems?"
    assert PHQ9.items[0] == "Little interest or pleasure in doing things"
    assert PHQ9.items[8] == "Thoughts that you would be better off dead, or of hurting yourself in some way"
    assert GAD7.items[0] == "Feeling nervous, anxious, or on edge"
    assert (PHQ9.loinc_panel, PHQ9.loinc_total) == ("44249-1", "44261-6")
    assert (GAD7.loinc_panel, GAD7.loinc_total) == ("69737-5", "70274-6")
    assert ANSWERS == ((0, "Not at all"), (1, "Several days"), (2, "More than half the days"), (3, "Nearly every day"))


def _loinc_check_digit_ok(code: str) -> bool:
    # LOINC codes end in a mod-10 (Luhn) check digit; a slip in the tables would break it.
    number, check = code.split("-")
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return (10 - total % 10) % 10 == int(check)


@pytest.mark.parametrize("instrument", [PHQ9, GAD7], ids=["phq9", "gad7"])
def test_loinc_codes_have_valid_check_digits(instrument):
    for code in (instrument.loinc_panel, instrument.loinc_total, *instrument.item_codes):
        assert _loinc_check_digit_ok(code), code


def test_instrument_tables_are_checked():
    with pytest.raises(ValueError, match="highest total"):
        Instrument("x", "X", ("a", "b"), ((4, "low"),), "1-1", "2-2", "stem", ("3-3", "4-4"))


@pytest.mark.parametrize(("name", "total", "severity"), [
    ("phq9", 0, "minimal"), ("phq9", 4, "minimal"), ("phq9", 5, "mild"), ("phq9", 9, "mild"),
    ("phq9", 10, "moderate"), ("phq9", 14, "moderate"), ("phq9", 15, "moderately severe"),
    ("phq9", 19, "moderately severe"), ("phq9", 20, "severe"), ("phq9", 27, "severe"),
    ("gad7", 0, "minimal"), ("gad7", 4, "minimal"), ("gad7", 5, "mild"), ("gad7", 9, "mild"),
    ("gad7", 10, "moderate"), ("gad7", 14, "moderate"), ("gad7", 15, "severe"), ("gad7", 21, "severe"),
])
def test_severity_bands(name, total, severity):
    size = len(INSTRUMENTS[name].items)
    # Spread the total over the items so the boundary is reached through real answers.
    answers = [min(3, max(0, total - 3 * i)) for i in range(size)]
    result = score(name, answers)
    assert (result.total, result.severity) == (total, severity)


@given(st.sampled_from(["phq9", "gad7"]), st.data())
def test_score_totals_and_round_trips(name, data):
    size = len(INSTRUMENTS[name].items)
    answers = data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    result = score(name, answers)
    assert result.total == sum(answers)
    assert result.answers == tuple(answers)
    assert result.crisis == (name == "phq9" and answers[8] > 0)
    assert Score.from_dict(result.to_dict()) == result


def test_item_nine_raises_the_crisis_flag():
    assert score("phq9", [0] * 8 + [1]).crisis
    assert not score("phq9", [3] * 8 + [0]).crisis
    assert not score("gad7", [3] * 7).crisis


def test_to_dict_is_the_stored_shape():
    assert score("gad7", [1, 2, 3, 0, 1, 2, 3]).to_dict() == {
        "instrument": "gad7", "answers": [1, 2, 3, 0, 1, 2, 3], "total": 12, "severity": "moderate",
    }


@pytest.mark.parametrize(("name", "answers", "message"), [
    ("phq2", [0, 0], "unknown questionnaire"),
    (None, [0] * 9, "unknown questionnaire"),
    ("phq9", [0] * 8, "exactly 9 answers"),
    ("gad7", [0] * 9, "exactly 7 answers"),
    ("phq9", "000000000", "exactly 9 answers"),
    ("phq9", [0] * 8 + [4], "answer 9 must be a whole number from 0 to 3"),
    ("phq9", [-1] + [0] * 8, "answer 1 must be"),
    ("gad7", [0, 1.0, 0, 0, 0, 0, 0], "answer 2 must be"),
    ("gad7", [0, 0, "1", 0, 0, 0, 0], "answer 3 must be"),
    ("gad7", [True, 0, 0, 0, 0, 0, 0], "answer 1 must be"),
])
def test_bad_answers_are_refused(name, answers, message):
    with pytest.raises(BadRequest, match=message):
        score(name, answers)


@pytest.mark.parametrize("stored", [
    {"instrument": "phq9", "answers": [1] * 9, "total": 10, "severity": "mild"},
    {"instrument": "phq9", "answers": [1] * 9, "total": 9, "severity": "minimal"},
    {"instrument": "phq9", "answers": [1] * 9},
    {"instrument": "phq9", "answers": [1] * 8, "total": 8, "severity": "mild"},
    ["phq9"],
])
def test_stored_scores_that_disagree_are_refused(stored):
    with pytest.raises(BadRequest):
        Score.from_dict(stored)


@pytest.mark.parametrize(("text", "answers"), [
    ("0,1,2,3", [0, 1, 2, 3]),
    ("0 1 2 3", [0, 1, 2, 3]),
    (" 0, 1 ,2  3\n", [0, 1, 2, 3]),
    ("3", [3]),
])
def test_parse_answers(text, answers):
    assert parse_answers(text) == answers


@pytest.mark.parametrize("text", ["", "   ", "0,,1", "0,1,", "a,b", "1.5", "-1", "0;1", "1e3", "0x1", None])
def test_parse_answers_refuses_junk(text):
    with pytest.raises(BadRequest, match="commas or spaces"):
        parse_answers(text)


@pytest.mark.parametrize(("country", "number"), [
    ("US", "988"), ("us", "988"), ("GB", "116 123"), ("UK", "116 123"), ("IE", "116 123"), ("CA", "9-8-8"),
    ("AU", "13 11 14"), ("NZ", "1737"), ("DE", "0800 111 0 111"), ("FR", "3114"), ("NL", "0800-0113"),
])
def test_crisis_resources_name_the_local_line(country, number):
    message = crisis_resources(country)
    assert number in message
    assert message.startswith("You deserve support right now")
    assert "findahelpline.com" not in message


@pytest.mark.parametrize("country", [None, "", "ZZ", "XX ", 7])
def test_crisis_resources_fall_back_to_emergency_numbers(country):
    message = crisis_resources(country)
    assert "112" in message and "911" in message and "findahelpline.com" in message


def test_every_crisis_line_is_reachable():
    for country, line in CRISIS_LINES.items():
        assert line in crisis_resources(country)
