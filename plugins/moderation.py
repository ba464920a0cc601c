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
import array
import functools
import hashlib
import hmac
import marshal
import os
import re
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rxfed import hookimpl
from rxfed.crypto import b64d
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol.canonical import loads
from rxfed.protocol.statements import open_statement

#: Publishers whose rules this plugin accepts: the name a rules file gives in ``publisher``
#: and the Ed25519 public key (base64url) its signature must verify under.
PUBLISHERS = {"rxfed": "RuwbzMkjpK87l-5MIqw6EMSXqiHdNTiqoKF7ngHHYOQ"}
STATEMENT = "moderation.rules"
#: Categories the engine knows how to apply (a rules file naming another is refused).
SCOPES = ("advice", "any")
MAX_RULES_BYTES = 1 << 20


class RulesRefused(BadRequest):
    code = "moderation_rules_refused"


class _Record:
    """A frozen record with fields named by ``__slots__``, compared and hashed by value
    (what ``attrs.frozen`` gives, without building methods when the module is imported: the
    ``rxfed`` command imports this plugin before every post)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values):
        if len(values) != len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} values, not {len(values)}")
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return self._values() == other._values() if type(other) is type(self) else NotImplemented

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


class Pattern(_Record):
    __slots__ = (
        "regex",
        "negation",  # "allows": a negated match is not flagged; "ignore": the pattern holds its own
        "requires",  # another cue the clause must hold (or None)
        "direct",  # advice by its very form ("the right dose is 300 mg"): no addressee needed
        "whole",  # read across the whole message ("I stopped my meds. You should too.")
        "also",  # cues that must all occur in the clause too (anywhere in it)
        "clause_level",  # addressed if the clause as a whole is (not the match alone)
        "unless",  # a cue that, found in the clause, means the match is not meant (or None)
    )


class Category(_Record):
    __slots__ = (
        "code",
        "message",
        "confirm",
        "scope",  # "advice": only when addressed to others; "any": wherever it occurs
        "patterns",
        "exceptions",
        "imperatives",  # or None
        "reported",  # whether reported speech counts ("my doctor told me to stop" does not)
    )


class Finding(_Record):
    __slots__ = ("code", "message", "confirm")


class ModerationRules(_Record):
    """A verified, compiled rules file. :meth:`check` applies it to one message. Its patterns
    are :class:`LazyPattern` objects (or ``re.Pattern`` ones: both answer alike)."""

    __slots__ = ("publisher", "version", "issued", "categories", "addressee", "framing", "asking", "rhetorical",
                 "lead", "imperative", "subordinate", "speaker", "subject", "negator", "reporting", "substitutions",
                 "clause", "opens_advice")

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
                   tuple((rx(s[0]), s[1]) for s in body["substitutions"]),
                   compile_pattern(_CLAUSE.pattern), compile_pattern(_OPENS_ADVICE.pattern))

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
        clauses = [c.strip() for c in self.clause.split(norm) if c.strip()]
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
            if "," in before and lead is not None and lead.end() == len(segment) and self.opens_advice.match(clause):
                return True
        return False


#: How an imperative clause opens: a verb of advice or a negated one.
_OPENS_ADVICE_TEXT = (r"^(?:(?:just|so|ok|okay|honestly|seriously|please|and|then|look|listen|[a-z]+,) )*"
                           r"(?:don't|do not|dont|never|stop|quit|take|try|use|start|go|get|give|ditch|drop|skip|double|"
                           r"forget|switch|swap|cut|up|bump|increase|avoid|refuse)\b")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                         "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"'})
#: Sentences and clauses: advice in one ("I stopped. You should too.") is judged on its own.
_CLAUSE_TEXT = r"(?<=[.!?;:\n])\s+|\n+|(?<=\?)|\s+(?:but|though|although|however|and then)\s+|\s-\s|\s--\s|\u2014"


# -- compiled patterns, kept between runs -------------------------------------------------


class LazyPattern:
    """One pattern, compiled the first time a string could hold a match, with the same
    ``search``, ``match``, ``fullmatch``, ``finditer`` and ``sub`` answers as ``re.compile``'s.

    ``need`` is what every match contains, read off the parsed pattern (:func:`_needs`): a
    tuple of sets of literal strings, every match holding one string of each set (None: not
    known). A string holding none of one set's strings cannot match anywhere in it, so the
    pattern answers "no match" without being compiled or run; otherwise it is compiled (by
    ``build``) and asked. The answers are those of the compiled pattern either way: ``need``
    is a necessary condition, never a sufficient one.
    """

    __slots__ = ("pattern", "need", "_build", "_compiled")

    def __init__(self, pattern: str, need: tuple[frozenset[str], ...] | None, build):
        self.pattern = pattern
        self.need = need
        self._build = build
        self._compiled: re.Pattern | None = None

    def could_match(self, string: str) -> bool:
        return self.need is None or all(any(s in string for s in alternatives) for alternatives in self.need)

    @property
    def compiled(self) -> re.Pattern:
        compiled = self._compiled
        if compiled is None:
            build = self._build
            if build is None:  # built meanwhile, by another thread
                return self._compiled
            compiled = build(self.pattern)
            self._compiled = compiled  # before the builder is dropped (see above)
            self._build = None
        return compiled

    def search(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match | None:
        return self.compiled.search(string, pos, endpos) if self.could_match(string) else None

    def match(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match | None:
        return self.compiled.match(string, pos, endpos) if self.could_match(string) else None

    def fullmatch(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match | None:
        return self.compiled.fullmatch(string, pos, endpos) if self.could_match(string) else None

    def finditer(self, string: str, pos: int = 0, endpos: int = sys.maxsize):
        return self.compiled.finditer(string, pos, endpos) if self.could_match(string) else iter(())

    def sub(self, repl, string: str, count: int = 0) -> str:
        return self.compiled.sub(repl, string, count) if self.could_match(string) else string

    def split(self, string: str, maxsplit: int = 0) -> list[str]:
        return self.compiled.split(string, maxsplit) if self.could_match(string) else [string]

    def __repr__(self) -> str:
        return f"LazyPattern({self.pattern[:40]!r}...)"


#: The engine's own two patterns (a rules object compiles its own copies, through the cache).
_OPENS_ADVICE = LazyPattern(_OPENS_ADVICE_TEXT, None, re.compile)
_CLAUSE = LazyPattern(_CLAUSE_TEXT, None, re.compile)

#: Factors of a match kept per pattern (each a set of literal strings the match holds one of).
_MAX_FACTORS = 3


def _needs(parsed, flags: int) -> tuple[frozenset[str], ...] | None:
    """What every match of a parsed pattern (``re._parser.parse``) contains: up to
    :data:`_MAX_FACTORS` sets of literal strings, each a necessary condition (the match holds
    at least one string of each set), the most selective first; None when nothing is known.

    Sound by construction: a run of literals (zero-width assertions such as ``\\b`` between
    them consume nothing, so the run's characters are adjacent in the match) is in every
    match of the sequence it belongs to; so is whatever a group, or a repeat of at least once,
    needs; an alternation needs one of what its branches need (and nothing if one branch
    needs nothing). Anything else (character classes, optional parts, lookarounds,
    backreferences, case-insensitive literals) ends a run and adds nothing."""
    factors = _sequence_factors(parsed.data if hasattr(parsed, "data") else parsed, flags)
    factors.sort(key=_selectivity)
    chosen: list[frozenset[str]] = []
    for f in factors:
        if f not in chosen and _selectivity(f)[0] is False and not any("\0" in s for s in f):
            chosen.append(f)
        if len(chosen) == _MAX_FACTORS:
            break
    return tuple(chosen) or None


def _selectivity(alternatives: frozenset[str]) -> tuple:
    shortest = min(len(s) for s in alternatives)
    return (shortest < 2, len(alternatives), -shortest)


def _sequence_factors(items, flags: int) -> list[frozenset[str]]:
    from re import _constants as c  # type: ignore[attr-defined]

    factors: list[frozenset[str]] = []
    run: list[str] = []

    def end_run():
        if run:
            factors.append(frozenset(["".join(run)]))
            run.clear()

    for op, av in items:
        if op is c.LITERAL and not flags & (c.SRE_FLAG_IGNORECASE | c.SRE_FLAG_LOCALE):
            run.append(chr(av))
            continue
        if op is c.AT:
            continue  # zero width: the literals on either side stay adjacent
        end_run()
        best = None
        if op is c.SUBPATTERN:
            _, add, remove, sub = av
            best = _one_of(_sequence_factors(sub.data, (flags | add) & ~remove))
        elif op is c.ATOMIC_GROUP:
            best = _one_of(_sequence_factors(av.data, flags))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _, sub = av
            if low >= 1:
                best = _one_of(_sequence_factors(sub.data, flags))
        elif op is c.BRANCH:
            union: set[str] = set()
            for branch in av[1]:
                one = _one_of(_sequence_factors(branch.data, flags))
                if one is None:
                    union = set()
                    break
                union |= one
            best = _minimal(union) if union else None
        if best is not None:
            factors.append(best)
    end_run()
    return factors


def _one_of(factors: list[frozenset[str]]) -> frozenset[str] | None:
    """The most selective of a sequence's factors (any one of them is necessary)."""
    return min(factors, key=_selectivity) if factors else None


def _minimal(strings: set[str]) -> frozenset[str]:
    """The same condition with fewer strings: one that holds another is implied by it."""
    ordered = sorted(strings, key=len)
    kept: list[str] = []
    for s in ordered:
        if not any(k in s for k in kept):
            kept.append(s)
    return frozenset(kept)


class CompiledPatterns:
    """The patterns of the rules, each compiled when first needed (:class:`LazyPattern`), and
    what compiling them takes kept in the user's cache directory, so that a command neither
    parses some 270 kB of patterns (about 160 ms) nor builds the ones a message cannot match.

    CPython compiles a pattern in two steps, parsing it into its own bytecode and building the
    pattern object from that bytecode (``_sre.compile``, which checks the bytecode before it
    accepts it). The cache keeps, by the SHA-256 of each pattern's text, the bytecode (raw
    32-bit code words, read without building an object per word) and what every match needs
    (:func:`_needs`). The file is ``$XDG_CACHE_HOME/rxfed/moderation-*.bin`` (default
    ``~/.cache/rxfed``), one per interpreter version and byte order, mode 0600, read only if it
    is this user's and nobody else may write it or its folder (the trust the plugin index
    asks for). The rules are verified before anything is compiled. The file's index is
    covered by one SHA-256 and each pattern's bytecode by its own, checked when that pattern
    is built, so a damaged or truncated file is never handed to ``_sre``; a cache that cannot
    be read or written, an interpreter without these internals, or anything that does not
    check out is compiled the ordinary way (``re.compile``). Like the plugin index (which
    names the modules to import), the file is as trusted as the user's other files: someone
    who may write them can as well change the plugin itself.
    """

    def __init__(self, path: str | None, index: dict, fd: int | None = None, start: int = 0, size: int = 0):
        self.path = path
        self.index = index  # key -> (flags, groups, groupindex, indexgroup, need, offset, words, digest)
        self._fd = fd  # the file, open: each pattern's code words are read when it is built
        self._start = start  # where the code words begin in it
        self._size = size  # and how many bytes of them there are
        self._checked: set[str] = set()  # the index's needs found well formed
        self._split: dict[str, tuple[str, ...]] = {}
        self.used: dict[bytes, tuple] = {}  # what this run compiled, for the next file
        self.fresh: dict[bytes, bytes] = {}  # code words of patterns compiled in this run
        self.changed = False

    @classmethod
    def load(cls) -> CompiledPatterns:
        path = _cache_path()
        return cls(path, *_read_cache(path)) if path else cls(None, {})

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _code_words(self, offset: int, words: int) -> bytes:
        if self._fd is None:
            return b""
        try:
            return os.pread(self._fd, words * 4, self._start + offset * 4)
        except OSError:
            return b""

    @property
    def entries(self) -> dict:
        return self.index

    def compile(self, text: str) -> LazyPattern:
        key = hashlib.sha256(text.encode("utf-8")).digest()
        entry = self.index.get(key)
        if entry is not None and _entry_ok(entry, self._size, self._checked):
            self.used[key] = entry
            return LazyPattern(text, self._need(entry[4]), functools.partial(self._build, entry))
        self.changed = True
        built = _bytecode(text)
        if built is None:
            return LazyPattern(text, None, re.compile)
        flags, code, groups, groupindex, indexgroup, need = built
        words = array.array("I", code).tobytes()
        self.fresh[key] = words
        self.used[key] = (flags, groups, groupindex, indexgroup, _joined(need), -1, len(code),
                          hashlib.sha256(words).digest())
        try:
            compiled = _sre.compile(text, flags, code, groups, groupindex, indexgroup)
        except Exception:  # noqa: BLE001 (internals changed: the ordinary way)
            return LazyPattern(text, None, re.compile)
        pattern = LazyPattern(text, need, None)
        pattern._compiled = compiled
        return pattern

    def _need(self, joined: tuple[str, ...] | None) -> tuple[tuple[str, ...], ...] | None:
        """A need as the index keeps it (each set of strings joined by NUL) as sets of strings;
        the file shares equal sets, and so does this (each split once)."""
        if joined is None:
            return None
        return tuple(self._split[s] if s in self._split else self._split.setdefault(s, tuple(s.split("\0")))
                     for s in joined)

    def _build(self, entry: tuple, text: str) -> re.Pattern:
        flags, groups, groupindex, indexgroup, _, offset, words, digest = entry
        raw = self._code_words(offset, words)
        if len(raw) == words * 4 and hashlib.sha256(raw).digest() == digest:
            code = array.array("I")
            code.frombytes(raw)
            try:
                return _sre.compile(text, flags, code.tolist(), groups, dict(groupindex), tuple(indexgroup))
            except Exception:  # noqa: BLE001 (any refusal: compile it the ordinary way)
                pass
        return re.compile(text)

    def __enter__(self) -> CompiledPatterns:
        return self

    def __exit__(self, *exc) -> None:
        if self.path and exc[0] is None and self.changed:
            # Kept: what this run compiled, and the other entries of the file (the patterns of
            # another rules file, RXFED_MODERATION_RULES), unless the file grows too large.
            kept = {key: entry for key, entry in self.index.items()
                    if key not in self.used and _entry_ok(entry, self._size, self._checked)}
            if self._size > _MAX_CACHE_BYTES // 2:
                kept = {}
            _write_cache(self.path, {**kept, **self.used}, self.fresh, self._code_words)


def _joined(need: tuple[frozenset[str], ...] | None) -> tuple[str, ...] | None:
    """A need as the cache keeps it: each set of strings as one string, sorted, joined by NUL
    (one object for ``marshal`` to read instead of hundreds)."""
    return None if need is None else tuple("\0".join(sorted(alternatives)) for alternatives in need)


def _entry_ok(entry, size: int, checked: set[str]) -> bool:
    """An index entry of the expected shape, whose bytecode lies inside the file (``checked``:
    the needs already found well formed; the file shares equal ones)."""
    try:
        flags, groups, groupindex, indexgroup, need, offset, words, digest = entry
    except (TypeError, ValueError):
        return False
    if not (type(flags) is int and type(groups) is int and type(groupindex) is dict
            and type(indexgroup) is tuple and type(offset) is int and type(words) is int
            and 0 <= offset and 0 < words and (offset + words) * 4 <= size
            and type(digest) is bytes and len(digest) == 32 and (need is None or type(need) is tuple)):
        return False
    for joined in need or ():
        if type(joined) is not str:
            return False
        if joined not in checked:
            if not joined or "\0\0" in joined or joined[0] == "\0" or joined[-1] == "\0":
                return False
            checked.add(joined)
    return True


def _cache_path() -> str | None:
    compiler = getattr(re, "_compiler", None)
    if compiler is None or sys.implementation.name != "cpython" or array.array("I").itemsize != 4:
        return None
    from rxfed.plugin_index import cache_dir

    digest = hashlib.sha256(f"{sys.version} {sys.byteorder}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"moderation-{digest}.bin")


def _bytecode(text: str) -> tuple | None:
    """What ``re._compiler.compile`` hands ``_sre.compile`` for ``text``, and what every
    match needs (:func:`_needs`), or None."""
    try:
        compiler, parser = re._compiler, re._parser  # type: ignore[attr-defined]
        parsed = parser.parse(text, 0)
        code = compiler._code(parsed, 0)
        groupindex = dict(parsed.state.groupdict)
        indexgroup = [None] * parsed.state.groups
        for name, index in groupindex.items():
            indexgroup[index] = name
        return (int(parsed.state.flags), [int(word) for word in code], parsed.state.groups - 1, groupindex,
                tuple(indexgroup), _needs(parsed, int(parsed.state.flags)))
    except Exception:  # noqa: BLE001 (internals changed: no cache)
        return None


#: The cache file: this header, HMAC-SHA256 of the index under this user's cache key
#: (:func:`_cache_key`), the index's length (4 bytes, big endian), the index in ``marshal``'s
#: format (plain tuples, dicts, frozensets, ints, bytes and strings: loading it runs nothing),
#: then the code words of every pattern, each covered by the SHA-256 its index entry holds.
#: A file made without the key (damaged, copied from another account or machine, or written
#: by anyone who knows the format but not the key) is refused whole; someone who may read the
#: user's files has the key, and could as well change the plugin itself.
_CACHE_MAGIC = b"rxfed-moderation-patterns-2\n"
_MAX_CACHE_BYTES = 16 << 20
_KEY_FILE = "moderation-cache.key"


def _private(st: os.stat_result, *, readable: bool = True) -> bool:
    """This user's own, and nobody else may write it (nor read it, with ``readable=False``)."""
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & (0o022 if readable else 0o077)


def _cache_key(folder: str, *, create: bool) -> bytes | None:
    """The 32 random bytes that authenticate this user's pattern cache, kept next to it
    (mode 0600, read only if it is the user's own and nobody else may read or write it);
    made on first use when ``create``. None: no usable key, so no cache."""
    path = os.path.join(folder, _KEY_FILE)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(2):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:
                continue  # made meanwhile by another process: read theirs
            except OSError:
                return None
            key = os.urandom(32)
            try:
                os.write(fd, key)
            finally:
                os.close(fd)
            return key
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            key = os.read(fd, 33) if _private(st, readable=False) and _private(os.stat(folder)) else b""
        except OSError:
            key = b""
        finally:
            os.close(fd)
        return key if len(key) == 32 else None
    return None


def _read_cache(path: str) -> tuple[dict, int | None, int, int]:
    """The file's index, the file (open: the caller closes it), where its code words begin
    and how many bytes of them there are; an empty index and no file if it is not usable."""
    nothing: tuple[dict, None, int, int] = ({}, None, 0, 0)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return nothing
    try:
        st = os.fstat(fd)
        folder = os.path.dirname(path)
        if not (_private(st) and _private(os.stat(folder))):
            raise OSError("not this user's own")
        key = _cache_key(folder, create=False)
        if key is None:
            raise OSError("no key")
        head = len(_CACHE_MAGIC)
        top = os.read(fd, head + 36)
        if not top.startswith(_CACHE_MAGIC) or len(top) != head + 36:
            raise OSError("not a cache file")
        length = int.from_bytes(top[head + 32:], "big")
        if length > _MAX_CACHE_BYTES or st.st_size > _MAX_CACHE_BYTES:
            raise OSError("too large")
        index_bytes = os.read(fd, length)
        if len(index_bytes) != length or not hmac.compare_digest(hmac.digest(key, index_bytes, "sha256"),
                                                                     top[head:head + 32]):
            raise OSError("damaged")
        index = marshal.loads(index_bytes)
        if not isinstance(index, dict):
            raise OSError("not an index")
    except (OSError, EOFError, ValueError, TypeError):
        os.close(fd)
        return nothing
    start = head + 36 + length
    return index, fd, start, max(0, st.st_size - start)


def _write_cache(path: str, used: dict, fresh: dict, old) -> None:
    """Write ``used`` (entries: their code words from ``fresh`` or, read by ``old(offset,
    words)``, from the file read before); equal sets of strings are written once."""
    index, blob, offset, shared = {}, bytearray(), 0, {}
    for key, (flags, groups, groupindex, indexgroup, need, at, words, digest) in used.items():
        raw = fresh[key] if key in fresh else old(at, words)
        if len(raw) != words * 4 or hashlib.sha256(raw).digest() != digest:
            continue
        if need is not None:
            need = tuple(shared.setdefault(alternatives, alternatives) for alternatives in need)
        index[key] = (flags, groups, groupindex, indexgroup, need, offset, words, digest)
        blob += raw
        offset += words
    body = marshal.dumps(index)
    key = _cache_key(os.path.dirname(path), create=True)
    if key is None:
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_CACHE_MAGIC + hmac.digest(key, body, "sha256") + len(body).to_bytes(4, "big") + body + blob)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


# -- the plugin ----------------------------------------------------------------------------


def shipped_rules_bytes() -> bytes:
    """The rules file shipped with the plugin (read beside this module when it is a file on
    disk, as it is when installed; through ``importlib.resources`` otherwise)."""
    here = globals().get("__file__")
    if here:
        try:
            with open(os.path.join(os.path.dirname(here), "data", "moderation_rules.json"), "rb") as f:
                return f.read(MAX_RULES_BYTES + 1)
        except OSError:
            pass
    import importlib.resources

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
            from rxfed.vocabulary.crisis import crisis_notice, crisis_resources

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
