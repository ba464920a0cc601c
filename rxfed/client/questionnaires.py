"""PHQ-9 (depression) and GAD-7 (anxiety) questionnaires, scored on the patient's device.

PHQ-9 and GAD-7: developed by Drs. Robert L. Spitzer, Janet B.W. Williams, Kurt Kroenke and
colleagues, with an educational grant from Pfizer Inc. No permission required to reproduce,
translate, display or distribute.

Answers and scores stay in the encrypted journal. Because PHQ-9 item 9 asks about thoughts
of death or self-harm, any answer above "Not at all" sets :attr:`Score.crisis`, and callers
show :func:`crisis_resources` right away, before anything else.
"""

from __future__ import annotations

import re

import attrs

from rxfed.errors import BadRequest
from rxfed.vocabulary.crisis import crisis_lines, crisis_resources  # noqa: F401 (re-exported)

ATTRIBUTION = (
    "PHQ-9 and GAD-7: developed by Drs. Robert L. Spitzer, Janet B.W. Williams, Kurt Kroenke and "
    "colleagues, with an educational grant from Pfizer Inc. No permission required to reproduce, "
    "translate, display or distribute."
)

#: The answer scale both instruments share: the value scored, and the wording shown.
ANSWERS = ((0, "Not at all"), (1, "Several days"), (2, "More than half the days"), (3, "Nearly every day"))
MAX_ANSWER = ANSWERS[-1][0]


@attrs.frozen
class Instrument:
    """A questionnaire: its items in order, its severity bands and its LOINC codes.

    ``bands`` are ``(upper bound inclusive, label)`` in ascending order; the last bound is
    the highest possible total. ``item_codes`` are the LOINC codes of the items, in order,
    which FHIR exports use to name them.
    """

    name: str
    title: str
    items: tuple[str, ...]
    bands: tuple[tuple[int, str], ...]
    loinc_panel: str
    loinc_total: str
    stem: str
    item_codes: tuple[str, ...]

    def __attrs_post_init__(self):
        # The tables below are typed by hand; a slip there would mis-score every answer.
        if len(self.item_codes) != len(self.items):
            raise ValueError(f"{self.name}: one LOINC code per item")
        if self.bands[-1][0] != len(self.items) * MAX_ANSWER:
            raise ValueError(f"{self.name}: the last band must end at the highest total")
        if [upper for upper, _ in self.bands] != sorted({upper for upper, _ in self.bands}):
            raise ValueError(f"{self.name}: band bounds must ascend")

    def severity(self, total: int) -> str:
        return next(label for upper, label in self.bands if total <= upper)


PHQ9 = Instrument(
    name="phq9",
    title="Patient Health Questionnaire (PHQ-9)",
    stem="Over the last 2 weeks, how often have you been bothered by any of the following problems?",
    items=(
        "Little interest or pleasure in doing things",
        "Feeling down, depressed, or hopeless",
        "Trouble falling or staying asleep, or sleeping too much",
        "Feeling tired or having little energy",
        "Poor appetite or overeating",
        "Feeling bad about yourself \u2014 or that you are a failure or have let yourself or your family down",
        "Trouble concentrating on things, such as reading the newspaper or watching television",
        "Moving or speaking so slowly that other people could have noticed? Or the opposite \u2014 being so "
        "fidgety or restless that you have been moving around a lot more than usual",
        "Thoughts that you would be better off dead, or of hurting yourself in some way",
    ),
    bands=((4, "minimal"), (9, "mild"), (14, "moderate"), (19, "moderately severe"), (27, "severe")),
    loinc_panel="44249-1",
    loinc_total="44261-6",
    item_codes=("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"),
)

GAD7 = Instrument(
    name="gad7",
    title="Generalized Anxiety Disorder (GAD-7)",
    stem="Over the last 2 weeks, how often have you been bothered by the following problems?",
    items=(
        "Feeling nervous, anxious, or on edge",
        "Not being able to stop or control worrying",
        "Worrying too much about different things",
        "Trouble relaxing",
        "Being so restless that it is hard to sit still",
        "Becoming easily annoyed or irritable",
        "Feeling afraid, as if something awful might happen",
    ),
    bands=((4, "minimal"), (9, "mild"), (14, "moderate"), (21, "severe")),
    loinc_panel="69737-5",
    loinc_total="70274-6",
    item_codes=("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"),
)

INSTRUMENTS = {"phq9": PHQ9, "gad7": GAD7}

#: Index of the PHQ-9 item about thoughts of death or self-harm.
PHQ9_SELF_HARM_ITEM = 8


@attrs.frozen
class Score:
    instrument: str
    answers: tuple[int, ...]
    total: int
    severity: str
    crisis: bool

    def to_dict(self) -> dict:
        """The form kept inside an encrypted journal record."""
        return {"instrument": self.instrument, "answers": list(self.answers), "total": self.total,
                "severity": self.severity}

    @classmethod
    def from_dict(cls, doc: dict) -> Score:
        """Re-score stored answers; a stored total or severity that disagrees is refused."""
        if not isinstance(doc, dict):
            raise BadRequest("a stored questionnaire must be an object", code="bad_questionnaire")
        scored = score(doc.get("instrument"), doc.get("answers"))
        if doc.get("total") != scored.total or doc.get("severity") != scored.severity:
            raise BadRequest(f"stored {scored.instrument} total or severity does not match its answers",
                             code="bad_questionnaire")
        return scored


def instrument(name: str) -> Instrument:
    try:
        return INSTRUMENTS[name]
    except (KeyError, TypeError):
        raise BadRequest(f"unknown questionnaire {name!r}: use one of {', '.join(INSTRUMENTS)}",
                         code="bad_questionnaire") from None


def score(name: str, answers: list[int]) -> Score:
    """Total and severity band of one completed questionnaire; every item must be answered."""
    inst = instrument(name)
    if not isinstance(answers, (list, tuple)) or len(answers) != len(inst.items):
        raise BadRequest(f"{inst.name} needs exactly {len(inst.items)} answers", code="bad_questionnaire")
    for number, answer in enumerate(answers, start=1):
        # bool is an int in Python, but True is not an answer anyone gave.
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= MAX_ANSWER:
            raise BadRequest(f"{inst.name} answer {number} must be a whole number from 0 to {MAX_ANSWER}",
                             code="bad_questionnaire")
    total = sum(answers)
    crisis = inst is PHQ9 and answers[PHQ9_SELF_HARM_ITEM] > 0
    return Score(inst.name, tuple(answers), total, inst.severity(total), crisis)


def parse_answers(text: str) -> list[int]:
    """``"0,1,2 3"`` -> ``[0, 1, 2, 3]``: answers separated by commas or spaces."""
    fields = re.split(r"\s*,\s*|\s+", text.strip()) if isinstance(text, str) else [""]
    if any(not re.fullmatch(r"[0-9]{1,3}", field) for field in fields):
        raise BadRequest("answers must be numbers separated by commas or spaces, like 0,1,2,3",
                         code="bad_questionnaire")
    return [int(field) for field in fields]


#: Who to call, by ISO 3166 country code (rxfed/vocabulary/data/crisis_lines.json).
CRISIS_LINES = crisis_lines()
