"""Crisis lines by country, and the message that shows one: shared by the PHQ-9 item 9 answer
(rxfed.client.questionnaires) and the pre-send check of crisis language (the moderation
plugin), so both show the same line for a country.

The lines are data (``data/crisis_lines.json``, with the notice of where each comes from);
adding a country is adding one entry there.
"""

from __future__ import annotations

import functools
import importlib.resources
import json


@functools.cache
def _table() -> dict:
    return json.loads((importlib.resources.files("rxfed.vocabulary") / "data" / "crisis_lines.json").read_text("utf-8"))


def crisis_lines() -> dict[str, str]:
    """Who to call, by ISO 3166 country code."""
    return dict(_table()["lines"])


def crisis_notice() -> str:
    """Where the lines come from (shown with them)."""
    return _table()["notice"]


def crisis_line(country: str | None) -> str | None:
    """The line for ``country`` (ISO code, any case; "UK" is read as GB), or None."""
    code = country.strip().upper() if isinstance(country, str) else ""
    table = _table()
    return table["lines"].get(table["aliases"].get(code, code))


def crisis_resources(country: str | None) -> str:
    """A short, kind message with the crisis line for ``country`` (or the emergency numbers)."""
    line = crisis_line(country)
    message = ("You deserve support right now, and you do not have to carry this alone. "
               f"Please reach out now: {line or _table()['fallback']}.")
    if line:
        message += " If you are in immediate danger, call your local emergency number."
    return message
