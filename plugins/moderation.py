"""Built-in plugin: pre-send moderation of community posts, on the patient's device.

The checks run on the plaintext before it is sealed (the node never reads it) and warn about
advice to stop or change someone else's medication, dosing instructions to others, miracle
cures and "instead of" claims against proven treatment, and selling or sourcing prescription
drugs; the author may edit the message or send it anyway. Crisis or self-harm language shows
the crisis line for the patient's country at once and never asks anything. Personal
testimony ("what worked for me", "I stopped taking it and felt better") is not flagged.
Nothing is uploaded: the check reads the text and returns warnings to the client.

The patterns are data: a rules file signed by its publisher (a signed statement of type
``moderation.rules``: Ed25519 over the canonical JSON of the body, spec/moderation.md). The
shipped file is ``data/moderation_rules.json``; ``RXFED_MODERATION_RULES=FILE`` names a newer
one from a publisher this module trusts. An unsigned or tampered file, one signed by another
key, or one older than the shipped rules is refused: the check then returns one ``unchecked``
warning saying why, and flags nothing. No model, no network.
"""

from __future__ import annotations

import _sre
import functools
import hashlib
import importlib.resources
import marshal
import os
import re
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from rxfed import hookimpl
from rxfed.crypto import b64d
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol.canonical import loads
from rxfed.protocol.statements import open_statement
from rxfed.vocabulary.crisis import crisis_notice, crisis_resources

#: Publishers whose rules this plugin accepts: the name a rules file gives in ``publisher``
#: and the Ed25519 public key (base64url) its signature must verify under.
PUBLISHERS = {"rxfed": "RuwbzMkjpK87l-5MIqw6EMSXqiHdNTiqoKF7ngHHYOQ"}
STATEMENT = "moderation.rules"
#: Categories the engine knows how to apply (a rules file naming another is refused).
SCOPES = ("advice", "any")
MAX_RULES_BYTES = 1 << 20


class RulesRefused(BadRequest):
    code = "moderation_rules_refused"


@attrs.frozen
class Pattern:
    regex: re.Pattern
    negation: str  # "allows": a negated match is not flagged; "ignore": the pattern holds its own
    requires: re.Pattern | None  # another cue the clause must hold
    direct: bool  # advice by its very form ("the right dose is 300 mg"): no addressee needed
    whole: bool  # read across the whole message ("I stopped my meds. You should too.")
    also: tuple[re.Pattern, ...]  # cues that must all occur in the clause too (anywhere in it)
    clause_level: bool  # addressed if the clause as a whole is (not the match alone)
    unless: re.Pattern | None  # a cue that, found in the clause, means the match is not meant


@attrs.frozen
class Category:
    code: str
    message: str
    confirm: bool
    scope: str  # "advice": only when addressed to others; "any": wherever it occurs
    patterns: tuple[Pattern, ...]
    exceptions: tuple[re.Pattern, ...]
    imperatives: re.Pattern | None
    reported: bool  # whether reported speech counts ("my doctor told me to stop" does not)


@attrs.frozen
class Finding:
    code: str
    message: str
    confirm: bool


@attrs.frozen
class ModerationRules:
    """A verified, compiled rules file. :meth:`check` applies it to one message."""

    publisher: str
    version: int
    issued: str
    categories: tuple[Category, ...]
    addressee: re.Pattern
    framing: re.Pattern
    asking: re.Pattern
    rhetorical: re.Pattern
    lead: re.Pattern
    imperative: re.Pattern
    subordinate: re.Pattern
    speaker: re.Pattern
    subject: re.Pattern
    negator: re.Pattern
    reporting: re.Pattern
    substitutions: tuple[tuple[re.Pattern, str], ...]

    @classmethod
    def from_bytes(cls, data: bytes, trusted: dict[str, str], *, where: str = "moderation rules") -> ModerationRules:
        """Verify ``data`` (a signed ``moderation.rules`` statement) against the ``trusted``
        publishers and compile it; :class:`RulesRefused` says why not."""
        if len(data) > MAX_RULES_BYTES:
            raise RulesRefused(f"{where}: larger than {MAX_RULES_BYTES} bytes")
        try:
            doc = loads(data)
        except BadRequest as exc:
            raise RulesRefused(f"{where}: not a rules file ({exc.message})") from None
        if not isinstance(doc, dict) or "sig" not in doc:
            raise RulesRefused(f"{where}: not signed (a rules file is a signed statement)")
        body = doc.get("body")
        publisher = body.get("publisher") if isinstance(body, dict) else None
        if publisher not in trusted:
            raise RulesRefused(f"{where}: publisher {publisher!r} is not one this plugin trusts")
        try:
            body = open_statement(doc, where, STATEMENT, b64d(trusted[publisher], length=32))
        except Forbidden:
            raise RulesRefused(f"{where}: the signature does not verify under publisher {publisher!r}'s key "
                               "(the file was changed after it was signed)") from None
        except BadRequest as exc:
            raise RulesRefused(exc.message) from None
        try:
            with CompiledPatterns.load() as patterns:
                return cls._compile(body, patterns.compile)
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise RulesRefused(f"{where}: signed, but not rules this plugin can apply ({exc})") from None

    @classmethod
    def _compile(cls, body: dict, compile_pattern=re.compile) -> ModerationRules:
        lexicon = {name: "(?:" + "|".join(words) + ")" for name, words in body["lexicon"].items()}

        def rx(text: str | list[str]) -> re.Pattern:
            if isinstance(text, list):
                text = "|".join(f"(?:{t})" for t in text)
            if not isinstance(text, str):
                raise TypeError("a pattern must be a string or a list of strings")
            return compile_pattern(re.sub(r"\{(\w+)\}", lambda m: lexicon[m.group(1)], text))

        categories = []
        for c in body["categories"]:
            if c["scope"] not in SCOPES:
                raise ValueError(f"unknown scope {c['scope']!r}")
            patterns = tuple(Pattern(rx(p["re"]), p.get("negation", "allows"),
                                     rx(p["requires"]) if "requires" in p else None, bool(p.get("direct", False)),
                                     bool(p.get("whole", False)), tuple(rx(a) for a in p.get("also", [])),
                                     bool(p.get("clause", False)), rx(p["unless"]) if "unless" in p else None)
                             for p in c["patterns"])
            if any(p.negation not in ("allows", "ignore") for p in patterns):
                raise ValueError("a pattern's negation is 'allows' or 'ignore'")
            categories.append(Category(c["code"], c["message"], bool(c["confirm"]), c["scope"], patterns,
                                       tuple(rx(e) for e in c.get("except", [])),
                                       rx(c["imperatives"]) if "imperatives" in c else None,
                                       bool(c.get("reported", False))))
        a = body["advice"]
        return cls(body["publisher"], int(body["version"]), str(body["issued"]), tuple(categories),
                   rx(a["addressee"]), rx(a["framing"]), rx(a["asking"]), rx(a["rhetorical"]), rx(a["lead"]),
                   rx(a["imperative"]), rx(a["subordinate"]), rx(a["speaker"]), rx(a["subject"]),
                   rx(body["negator"]), rx(a["reporting"]),
                   tuple((rx(s[0]), s[1]) for s in body["substitutions"]))

    # -- applying ----------------------------------------------------------------------------

    def normalise(self, text: str) -> str:
        """Lower case, compatibility forms, no accents or invisible characters, one kind of
        apostrophe and quote, and the spellings people type ("u", "dont") made regular."""
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
        text = text.lower().translate(_QUOTES)
        text = re.sub(r"(\w)\1{2,}", r"\1\1", text)  # "soooo" -> "soo"
        for pattern, replacement in self.substitutions:
            text = pattern.sub(replacement, text)
        return re.sub(r"[ \t]+", " ", text)

    def check(self, text: str) -> list[Finding]:
        """The categories ``text`` falls in (at most one finding per category)."""
        norm = self.normalise(text)
        clauses = [c.strip() for c in _CLAUSE.split(norm) if c.strip()]
        found = []
        for category in self.categories:
            whole = [p for p in category.patterns if p.whole]
            if any(p.regex.search(norm) and (p.requires is None or p.requires.search(norm)) for p in whole) or any(
                    self._flags(category, clause) for clause in clauses):
                found.append(Finding(category.code, category.message, category.confirm))
        return found

    def _flags(self, category: Category, clause: str) -> bool:
        question = clause.endswith("?")
        own = clause if category.reported else self._unreported(clause)
        if any(e.search(own) for e in category.exceptions):
            return False
        for pattern in category.patterns:
            if pattern.whole:
                continue
            for m in pattern.regex.finditer(own):
                if pattern.negation == "allows" and self._negated(own, m.start()):
                    continue
                if pattern.requires is not None and not pattern.requires.search(own):
                    continue
                if not all(a.search(own) for a in pattern.also):
                    continue
                if pattern.unless is not None and pattern.unless.search(own):
                    continue
                if (category.scope == "any" or pattern.direct
                        or (self._clause_addressed(own, m.start(), question) if pattern.clause_level
                            else self._addressed(category, own, m, question))):
                    return True
        return False

    def _unreported(self, clause: str) -> str:
        """The clause without what someone else said or told the author ("my doctor told me
        to stop", 'people keep saying "just quit your meds"'): reporting is not advising."""
        m = self.reporting.search(clause)
        return clause if m is None else clause[: m.start()]

    def _negated(self, clause: str, at: int) -> bool:
        before = clause[max(0, at - 40): at]
        return self.negator.search(before) is not None

    def _clause_addressed(self, clause: str, at: int, question: bool) -> bool:
        """Whether the clause as a whole is said to someone else: it opens with an imperative,
        or holds a "you", advice framing or a rhetorical question, and is not a question the
        author asks nor what the author (or someone they tell of) did: "I quit my meds"."""
        if question and self.asking.search(clause) and not self.rhetorical.search(clause):
            return False
        if self.rhetorical.search(clause) or self.framing.search(clause):
            return True
        before = clause[:at]
        if self.speaker.search(before) or self.subject.match(before[before.rfind(",") + 1:]):
            return False
        if self.addressee.search(clause):
            return True
        start = self.subordinate.match(clause)  # "When the pain hits, take 3"
        rest = clause[start.end():] if start else clause
        lead = self.lead.match(rest)
        return self.imperative.match(rest[lead.end():] if lead else rest) is not None

    def _addressed(self, category: Category, clause: str, m: re.Match, question: bool) -> bool:
        """Whether the match is said to someone else: an imperative, a "you" in or before
        it, or advice framing ("if I were you", "my advice"); a question the author asks
        ("should I ...?", "did you ...?") is not, a rhetorical one ("why don't you ...?") is."""
        before = clause[: m.start()]
        if question and self.asking.search(clause) and not self.rhetorical.search(clause):
            return False
        if self.rhetorical.search(clause) or self.framing.search(clause):
            return True
        if self.speaker.search(before):
            return False
        if self.addressee.search(m.group()) or self.addressee.search(before[-60:]):
            return True
        if category.imperatives is not None and category.imperatives.match(clause, m.start()):
            lead = self.lead.match(before)
            if lead is not None and lead.end() == len(before):
                return True
            # "Don't bother with 5 mg, start at 20 mg": an imperative after a comma, in a
            # clause that opens with one (not "I quit sugar, take ...", which is testimony).
            segment = before[before.rfind(",") + 1:].lstrip()
            lead = self.lead.match(segment)
            if "," in before and lead is not None and lead.end() == len(segment) and _OPENS_ADVICE.match(clause):
                return True
        return False


#: How an imperative clause opens: a verb of advice or a negated one.
_OPENS_ADVICE = re.compile(r"^(?:(?:just|so|ok|okay|honestly|seriously|please|and|then|look|listen|[a-z]+,) )*"
                           r"(?:don't|do not|dont|never|stop|quit|take|try|use|start|go|get|give|ditch|drop|skip|double|"
                           r"forget|switch|swap|cut|up|bump|increase|avoid|refuse)\b")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                         "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"'})
#: Sentences and clauses: advice in one ("I stopped. You should too.") is judged on its own.
_CLAUSE = re.compile(r"(?<=[.!?;:\n])\s+|\n+|(?<=\?)|\s+(?:but|though|although|however|and then)\s+|\s-\s|\s--\s|\u2014")


# -- compiled patterns, kept between runs -------------------------------------------------


class CompiledPatterns:
    """Python's compiled form of each pattern, kept in the user's cache directory, so that a
    command does not parse some 240 kB of patterns every time (about 160 ms; loading them
    takes a few).

    CPython compiles a pattern in two steps, parsing it into its own bytecode and building the
    pattern object from that bytecode (``_sre.compile``, which checks the bytecode before it
    accepts it); this keeps the bytecode by the SHA-256 of the
    pattern's text. The file is
    ``$XDG_CACHE_HOME/rxfed/moderation-*.bin`` (default ``~/.cache/rxfed``), one per
    interpreter version, mode 0600, read only if it is this user's and nobody else may write
    it (the trust the plugin index asks for). The rules are verified before anything is
    compiled; a cache that cannot be read or written, an interpreter without these internals,
    or a file whose checksum does not match falls back to ``re.compile``. Like the plugin
    index (which names the modules to import), the file is as trusted as the user's other
    files: ``_sre`` does not defend against bytecode crafted to misbehave.
    """

    def __init__(self, path: str | None, entries: dict):
        self.path = path
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls) -> CompiledPatterns:
        path = _cache_path()
        return cls(path, _read_cache(path) if path else {})

    def compile(self, text: str) -> re.Pattern:
        key = hashlib.sha256(text.encode("utf-8")).digest()
        entry = self.entries.get(key)
        if entry is not None:
            try:
                flags, code, groups, groupindex, indexgroup = entry
                return _sre.compile(text, flags, code, groups, groupindex, indexgroup)
            except Exception:  # noqa: BLE001 (any refusal: compile it the ordinary way)
                pass
        compiled = re.compile(text)
        bytecode = _bytecode(text)
        if bytecode is not None:
            self.entries[key] = bytecode
            self.changed = True
        return compiled

    def __enter__(self) -> CompiledPatterns:
        return self

    def __exit__(self, *exc) -> None:
        if self.changed and self.path and exc[0] is None:
            _write_cache(self.path, self.entries)


def _cache_path() -> str | None:
    compiler = getattr(re, "_compiler", None)
    if compiler is None or sys.implementation.name != "cpython":
        return None
    from rxfed.plugin_index import cache_dir

    digest = hashlib.sha256(sys.version.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"moderation-{digest}.bin")


def _bytecode(text: str) -> tuple | None:
    """What ``re._compiler.compile`` hands ``_sre.compile`` for ``text``, or None."""
    try:
        compiler, parser = re._compiler, re._parser  # type: ignore[attr-defined]
        parsed = parser.parse(text, 0)
        code = compiler._code(parsed, 0)
        groupindex = dict(parsed.state.groupdict)
        indexgroup = [None] * parsed.state.groups
        for name, index in groupindex.items():
            indexgroup[index] = name
        return (int(parsed.state.flags), [int(word) for word in code], parsed.state.groups - 1, groupindex, tuple(indexgroup))
    except Exception:  # noqa: BLE001 (internals changed: no cache)
        return None


#: The cache file: this header, the SHA-256 of the rest, then the entries in ``marshal``'s
#: format (plain lists, tuples, dicts, ints and strings: loading it runs nothing). One
#: checksum over the whole file, so a damaged file (a partial write, a bad disk) is never
#: handed to ``_sre``; it is no defence against someone who may write the user's files, who
#: could as well change the plugin itself.
_CACHE_MAGIC = b"rxfed-moderation-patterns-1\n"


def _read_cache(path: str) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
            return {}
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(16 << 20)
    except OSError:
        return {}
    finally:
        os.close(fd)
    head = len(_CACHE_MAGIC)
    if not data.startswith(_CACHE_MAGIC) or hashlib.sha256(data[head + 32:]).digest() != data[head:head + 32]:
        return {}
    try:
        entries = marshal.loads(data[head + 32:])
    except (EOFError, ValueError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: str, entries: dict) -> None:
    body = marshal.dumps(entries)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_CACHE_MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


# -- the plugin ----------------------------------------------------------------------------


def shipped_rules_bytes() -> bytes:
    return (importlib.resources.files("rxfed_plugins") / "data" / "moderation_rules.json").read_bytes()


@functools.cache
def _rules(chosen: str | None) -> ModerationRules | RulesRefused:
    try:
        shipped = ModerationRules.from_bytes(shipped_rules_bytes(), PUBLISHERS, where="the shipped moderation rules")
        if not chosen:
            return shipped
        path = Path(chosen).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RulesRefused(f"moderation rules {chosen}: {exc.strerror or exc}") from None
        rules = ModerationRules.from_bytes(data, PUBLISHERS, where=f"moderation rules {chosen}")
        if rules.version < shipped.version:
            raise RulesRefused(f"moderation rules {chosen}: version {rules.version} is older than the "
                               f"shipped version {shipped.version}")
        return rules
    except RulesRefused as exc:
        return exc


def rules() -> ModerationRules:
    """The rules in force (``RXFED_MODERATION_RULES`` or the shipped file); raises
    :class:`RulesRefused`."""
    found = _rules(os.environ.get("RXFED_MODERATION_RULES") or None)
    if isinstance(found, RulesRefused):
        raise found
    return found


def warnings_for(text: str, country: str | None = None) -> list[Any]:
    from rxfed.plugins import PresendWarning

    try:
        active = rules()
    except RulesRefused as exc:
        return [PresendWarning("unchecked", f"This message was not checked: {exc.message}.", confirm=False)]
    out = []
    for finding in active.check(text):
        resources: Iterable[str] = ()
        if finding.code == "crisis":
            resources = (crisis_resources(country), crisis_notice())
        out.append(PresendWarning(finding.code, finding.message, resources, confirm=finding.confirm))
    return out


@hookimpl
def rxfed_plugin_manifest():
    from rxfed.plugins import PluginManifest

    return PluginManifest(name="moderation", version="1.0", reads=(), purposes=(), sends=(),
                          description="pre-send warnings on the patient's device (signed rules; "
                                      "crisis language shows a crisis line); reads no signals")


@hookimpl
def rxfed_presend_check(text, country):
    return warnings_for(text, country)
