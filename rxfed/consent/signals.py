"""Signal kinds and signals.

A *signal* is a small typed fact a patient's client derives from decrypted records and
sends under a consent grant. Its kind declares a schema of fields; every field is a closed
vocabulary (a choice, a code pattern, a bounded integer) so a signal can never carry free
text, names or identifiers, whoever derived it. Both ends validate: the client before a
signal leaves the device, the receiving node before any plugin sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from rxfed.errors import BadRequest

KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}(\.[a-z][a-z0-9_]{0,30}){1,3}")
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
#: The most signals one delivery may carry.
MAX_SIGNALS = 256


class SignalError(BadRequest):
    code = "bad_signal"


@attrs.frozen
class Field:
    """One field of a signal kind.

    ``type`` is one of ``"choice"`` (one of ``choices``), ``"code"`` (a string matching
    ``pattern``, at most ``max_length`` characters), ``"int"`` (``lo`` to ``hi``), or a list
    of one of those (``many=True``, at most ``max_items``). Optional fields may be absent or
    null.
    """

    type: str = attrs.field(validator=attrs.validators.in_(("choice", "code", "int")))
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    max_length: int = 64
    lo: int = 0
    hi: int = 0
    many: bool = False
    max_items: int = 10
    required: bool = True
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice field needs choices")
        if self.type == "code" and not self.pattern:
            raise ValueError("a code field needs a pattern")

    def check_one(self, value: Any, where: str) -> None:
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
                raise SignalError(f"{where} must be a whole number from {self.lo} to {self.hi}")
        elif self.type == "choice":
            if value not in self.choices:
                raise SignalError(f"{where} must be one of {', '.join(self.choices)}")
        else:
            if (not isinstance(value, str) or len(value) > self.max_length
                    or re.fullmatch(self.pattern, value) is None):
                raise SignalError(f"{where} must match {self.pattern} (at most {self.max_length} characters)")

    def check(self, value: Any, where: str) -> None:
        if value is None:
            if self.required:
                raise SignalError(f"{where} is required")
            return
        if self.many:
            if not isinstance(value, list) or len(value) > self.max_items:
                raise SignalError(f"{where} must be a list of at most {self.max_items} items")
            for i, item in enumerate(value):
                self.check_one(item, f"{where}[{i}]")
        else:
            self.check_one(value, where)

    def to_json(self) -> dict:
        doc: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.many:
            doc["many"] = True
            doc["max_items"] = self.max_items
        if self.type == "choice":
            doc["choices"] = list(self.choices)
        elif self.type == "code":
            doc["pattern"] = self.pattern
            doc["max_length"] = self.max_length
        else:
            doc["lo"], doc["hi"] = self.lo, self.hi
        if self.description:
            doc["description"] = self.description
        return doc


def _kind_name(instance, attribute, value) -> None:
    if not isinstance(value, str) or KIND_NAME.fullmatch(value) is None:
        raise ValueError(f"signal kind name {value!r} must look like 'area.fact' (lower case, dots)")


@attrs.frozen
class SignalKind:
    """A kind of signal: its name (``diagnosis.category``), schema and a description."""

    name: str = attrs.field(validator=_kind_name)
    fields: Mapping[str, Field] = attrs.field(converter=lambda f: dict(f))
    description: str = ""

    def __attrs_post_init__(self) -> None:
        for name in self.fields:
            if FIELD_NAME.fullmatch(name) is None:
                raise ValueError(f"field name {name!r} of {self.name} must be lower case letters, digits, _")

    def validate(self, body: Any) -> dict:
        """The signal body if it fits this kind exactly, else :class:`SignalError`."""
        if not isinstance(body, dict):
            raise SignalError(f"a {self.name} signal must be an object")
        unknown = sorted(set(body) - set(self.fields))
        if unknown:
            raise SignalError(f"a {self.name} signal has no field {unknown[0]!r}")
        for name, spec in self.fields.items():
            spec.check(body.get(name), f"{self.name}.{name}")
        return {name: body[name] for name in self.fields if body.get(name) is not None}

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description,
                "fields": {name: spec.to_json() for name, spec in self.fields.items()}}


@attrs.frozen
class Signal:
    """A signal as a node plugin receives it.

    ``subject`` is the patient's pairwise pseudonym for this node and purpose (and plugin,
    when the grant names one): it never repeats across nodes, purposes or named plugins;
    ``grant`` is the id of the grant token it came under; ``origin`` is the patient's home
    node.
    """

    kind: str
    body: Mapping[str, Any]
    subject: str
    purpose: str
    grant: str
    origin: str
    received: int


def kinds_by_name(kinds: Iterable[SignalKind]) -> dict[str, SignalKind]:
    found: dict[str, SignalKind] = {}
    for kind in kinds:
        if kind.name in found and found[kind.name] != kind:
            raise ValueError(f"two plugins define signal kind {kind.name!r} differently")
        found[kind.name] = kind
    return found
