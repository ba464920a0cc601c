"""The moderation plugin's fast path: patterns compiled only when a message could match them
(what every match needs, read off each pattern), their bytecode kept in the user's cache, and
the proof that all this flags exactly what plainly compiled patterns do (spec/moderation.md,
"Compiled patterns")."""

from __future__ import annotations

import hashlib
import hmac
import marshal
import os
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxfed.protocol.canonical import loads
from rxfed_plugins import moderation
from rxfed_plugins.moderation import LazyPattern, ModerationRules

EVAL = Path(__file__).parent / "data" / "moderation_eval.txt"


def _body() -> dict:
    return loads(moderation.shipped_rules_bytes())["body"]


def _texts() -> list[str]:
    return [line.split("\t")[2] for line in EVAL.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def plain() -> ModerationRules:
    """The rules compiled the straightforward way: every pattern by ``re.compile``, at once."""
    return ModerationRules._compile(_body(), re.compile)


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "rxfed"


def _cache_file(cache_home: Path) -> Path:
    [found] = cache_home.glob("moderation-*.bin")
    return found


def _patterns() -> list[str]:
    seen: list[str] = []
    ModerationRules._compile(_body(), lambda text: seen.append(text) or re.compile(text))
    return seen


# -- the same answers ----------------------------------------------------------------------


def test_the_fast_rules_flag_exactly_what_plainly_compiled_ones_do(plain, cache_home):
    data = moderation.shipped_rules_bytes()
    first = ModerationRules.from_bytes(data, moderation.PUBLISHERS)  # compiles, writes the cache
    assert _cache_file(cache_home).stat().st_mode & 0o777 == 0o600
    again = ModerationRules.from_bytes(data, moderation.PUBLISHERS)  # built from the cache, lazily
    assert moderation.CompiledPatterns.load().entries
    texts = _texts()
    expected = [plain.check(t) for t in texts]
    assert sum(map(len, expected)) > 300  # the set flags plenty: the comparison means something
    assert [again.check(t) for t in texts] == expected
    assert [first.check(t) for t in texts] == expected
    assert [again.normalise(t) for t in texts] == [plain.normalise(t) for t in texts]


def test_each_pattern_answers_as_re_compile_on_every_message(cache_home):
    """Stronger than the check's result: every pattern, lazily built from the cache, gives
    the same matches as ``re.compile`` on every normalised message and clause."""
    texts = _patterns()
    ModerationRules.from_bytes(moderation.shipped_rules_bytes(), moderation.PUBLISHERS)  # the cache
    with moderation.CompiledPatterns.load() as cache:
        lazy = [cache.compile(t) for t in texts]
    assert all(p.need is not None for p in lazy[:5]) and sum(p.need is not None for p in lazy) > 200
    rules = moderation.rules()
    samples = []
    for message in _texts()[::2]:
        norm = rules.normalise(message)
        samples.append(norm)
        samples.extend(c.strip() for c in moderation._CLAUSE.split(norm) if c.strip())
    skipped = 0
    for text, pattern in zip(texts, lazy):
        compiled = re.compile(text)
        for s in samples:
            want = [m.span() for m in compiled.finditer(s)]
            if not pattern.could_match(s):
                skipped += 1
                assert want == [], (text[:80], s)
            assert [m.span() for m in pattern.finditer(s)] == want
            want_match, got_match = compiled.match(s), pattern.match(s)
            assert (got_match and got_match.span()) == (want_match and want_match.span())
    assert skipped > len(texts) * len(samples) // 2  # most patterns are ruled out without running


def _sample(fragment: str, rng: random.Random) -> str:
    """A string a lexicon entry (a small regular expression) matches."""
    from re import _constants as c
    from re import _parser

    def walk(items) -> str:
        out = []
        for op, av in items:
            if op is c.LITERAL:
                out.append(chr(av))
            elif op is c.SUBPATTERN:
                out.append(walk(av[3].data))
            elif op is c.BRANCH:
                out.append(walk(rng.choice(av[1]).data))
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                low, high, sub = av
                out.extend(walk(sub.data) for _ in range(rng.randint(low, min(high, low + 2))))
            elif op is c.IN:
                chars = [chr(x) for o, x in av if o is c.LITERAL] or ["a"]
                out.append(rng.choice(chars))
            elif op is c.CATEGORY:
                out.append(rng.choice(["1", "2", " "]) if "DIGIT" in str(av) or "SPACE" in str(av) else "a")
            elif op is c.ANY:
                out.append("x")
        return "".join(out)

    return walk(_parser.parse(fragment).data)


_LEXICON = _body()["lexicon"]
_GLUE = sorted({w for t in _texts()[::5] for w in re.findall(r"[a-z']+", t.lower())})
_PUNCT = [" ", " ", " ", ", ", ". ", "? ", "! ", " - ", "\n", ": "]


@st.composite
def messages(draw) -> str:
    rng = random.Random(draw(st.integers(0, 2**32)))
    words = []
    for _ in range(draw(st.integers(1, 30))):
        if rng.random() < 0.45:
            words.append(_sample(rng.choice(_LEXICON[rng.choice(sorted(_LEXICON))]), rng))
        else:
            words.append(rng.choice(_GLUE))
        words.append(rng.choice(_PUNCT))
    text = "".join(words)
    return text.upper() if rng.random() < 0.1 else text


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=messages())
def test_generated_messages_from_the_lexicon_are_flagged_alike(plain, text):
    assert moderation.rules().check(text) == plain.check(text)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=messages())
def test_what_every_match_needs_holds_of_every_match(text):
    """The property the lazy patterns rest on, pattern by pattern: a text a pattern matches
    holds one string of each set the pattern is said to need."""
    norm = moderation.rules().normalise(text)
    for source, need in _NEEDS:
        if re.search(source, norm) is not None:
            assert need is None or all(any(s in norm for s in alternatives) for alternatives in need), source[:80]


_NEEDS = [(source, moderation._bytecode(source)[5]) for source in dict.fromkeys(_patterns())]


@pytest.mark.parametrize("pattern, text", [
    (r"\bstop (?:taking )?(?:your )?meds\b", "please stop your meds now"),
    (r"(?:a|b)c", "bc"),
    (r"x(?:ab|)y", "xy"),
    (r"(?i)hello", "HeLLo"),
    (r"(?i:k)elvin", "\u212aelvin"),
    (r"ab+c", "abbbc"),
    (r"(?:ab){2,}", "ababab"),
    (r"a(?=bc)", "abc"),
    (r"(?<!no )dose", "the dose"),
    (r"\d+ ?mg", "300 mg"),
    (r"(?P<x>ab)(?P=x)", "abab"),
    (r"(?>ab|a)c", "ac"),
])
def test_needs_are_necessary_on_tricky_patterns(pattern, text):
    built = moderation._bytecode(pattern)
    assert built is not None
    lazy = LazyPattern(pattern, built[5], re.compile)
    assert re.search(pattern, text) is not None
    assert lazy.could_match(text) and lazy.search(text).span() == re.search(pattern, text).span()
    assert lazy.sub("-", text) == re.sub(pattern, "-", text)


def test_what_a_pattern_needs_is_read_off_it():
    need = moderation._bytecode(r"\b(?:you|u) should (?:stop|quit) (?:taking )?(?:metformin|insulins?)\b")[5]
    assert frozenset({" should "}) in need and frozenset({"stop", "quit"}) in need
    assert moderation._bytecode(r"(?i)hello")[5] is None  # case-insensitive literals: nothing claimed
    assert moderation._bytecode(r"a?b*")[5] is None


# -- the cache stays safe ------------------------------------------------------------------


def _count(monkeypatch, name: str) -> list:
    calls: list = []
    real = getattr(moderation, name) if name != "compile" else re.compile
    target = (moderation.re, "compile") if name == "compile" else (moderation, name)
    monkeypatch.setattr(*target, lambda *a: calls.append(a) or real(*a))
    return calls


def _check_all(rules: ModerationRules) -> list:
    return [rules.check(t) for t in _texts()[::3]]


def test_a_damaged_index_is_not_used(plain, cache_home, monkeypatch):
    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    cache = _cache_file(cache_home)
    damaged = bytearray(cache.read_bytes())
    damaged[len(moderation._CACHE_MAGIC) + 40] ^= 0x01  # inside the index: its checksum fails
    cache.write_bytes(bytes(damaged))
    assert moderation.CompiledPatterns.load().entries == {}
    parsed = _count(monkeypatch, "_bytecode")
    rules = ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    assert len(parsed) == len(_patterns())  # every pattern parsed again, none built from the file
    assert _check_all(rules) == _check_all(plain)
    assert moderation.CompiledPatterns.load().entries  # and the file written again, whole


def test_damaged_bytecode_is_never_handed_to_sre(plain, cache_home, monkeypatch):
    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    cache = _cache_file(cache_home)
    damaged = bytearray(cache.read_bytes())
    for at in range(len(damaged) - 4, len(damaged) - 400_000, -4001):  # code words of many patterns
        damaged[at] ^= 0x5A
    cache.write_bytes(bytes(damaged))
    compiled = _count(monkeypatch, "compile")
    rules = ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    assert _check_all(rules) == _check_all(plain)
    assert compiled  # the damaged ones were compiled from their text instead


def _rewrite(cache: Path, change, key: bytes | None) -> None:
    """Rewrite the cache file with a changed index, authenticated under ``key`` (None: with a
    plain SHA-256 instead, as someone who knows the format but not the user's key could)."""
    raw = cache.read_bytes()
    head = len(moderation._CACHE_MAGIC)
    length = int.from_bytes(raw[head + 32:head + 36], "big")
    index = marshal.loads(raw[head + 36:head + 36 + length])
    code = raw[head + 36 + length:]
    index, code = change(index, code)
    body = marshal.dumps(index)
    tag = hashlib.sha256(body).digest() if key is None else hmac.digest(key, body, "sha256")
    cache.write_bytes(moderation._CACHE_MAGIC + tag + len(body).to_bytes(4, "big") + body + code)


def _garbage(index, code):
    """Code words that ``_sre`` accepts and that match everywhere (a substitution would then
    grow the message without end): what a forged file could hold."""
    words = b"\x01\x00\x00\x00"
    return ({k: e[:7] + (hashlib.sha256(words * e[6]).digest(),) for k, e in index.items()},
            words * (len(code) // 4))


_MALFORMED = [
    pytest.param(lambda index, code: ({k: ("x",) * 8 for k in index}, code), id="wrong-types"),
    pytest.param(lambda index, code: ({k: e[:5] + (e[5] + 10**9,) + e[6:] for k, e in index.items()}, code),
                 id="bytecode-past-the-end"),
    pytest.param(lambda index, code: (index, code[: len(code) // 3]), id="truncated"),
    pytest.param(lambda index, code: ({k: e[:4] + (("",),) + e[5:] for k, e in index.items()}, code),
                 id="empty-needs"),
    pytest.param(lambda index, code: ({k: e[:4] + (("stop\0\0quit",),) + e[5:] for k, e in index.items()}, code),
                 id="needs-with-an-empty-string"),
    pytest.param(lambda index, code: ({k: e[:4] + ((1,),) + e[5:] for k, e in index.items()}, code),
                 id="needs-not-strings"),
    pytest.param(lambda index, code: ([1, 2, 3], code), id="not-a-dict"),
]


@pytest.mark.parametrize("change", [*_MALFORMED, pytest.param(_garbage, id="forged-bytecode"),
                                    pytest.param(lambda index, code: (
                                        {k: e[:4] + (("never in a message",),) + e[5:]
                                         for k, e in index.items()}, code), id="forged-needs")])
def test_a_file_made_without_the_users_key_is_refused_whole(plain, cache_home, change):
    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    _rewrite(_cache_file(cache_home), change, None)
    assert moderation.CompiledPatterns.load().entries == {}
    assert _check_all(ModerationRules.from_bytes(data, moderation.PUBLISHERS)) == _check_all(plain)


@pytest.mark.parametrize("change", _MALFORMED)
def test_a_malformed_index_cannot_change_results_even_under_the_key(plain, cache_home, change):
    """Defence in depth: what the key authenticates is still checked entry by entry."""
    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    key = (cache_home / moderation._KEY_FILE).read_bytes()
    _rewrite(_cache_file(cache_home), change, key)
    assert _check_all(ModerationRules.from_bytes(data, moderation.PUBLISHERS)) == _check_all(plain)


def test_the_key_is_private_and_a_key_others_could_read_disables_the_cache(plain, cache_home):
    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    key = cache_home / moderation._KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert moderation.CompiledPatterns.load().entries
    os.chmod(key, 0o644)  # others could read it, so forge a file
    assert moderation.CompiledPatterns.load().entries == {}
    assert _check_all(ModerationRules.from_bytes(data, moderation.PUBLISHERS)) == _check_all(plain)
    os.chmod(key, 0o600)
    key.write_bytes(os.urandom(32))  # another key: the file was not made under it
    assert moderation.CompiledPatterns.load().entries == {}
    key.unlink()
    assert moderation.CompiledPatterns.load().entries == {}
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)  # a new key, a new file
    assert moderation.CompiledPatterns.load().entries


def test_a_cache_others_could_write_is_not_read(cache_home):
    ModerationRules.from_bytes(moderation.shipped_rules_bytes(), moderation.PUBLISHERS)
    cache = _cache_file(cache_home)
    assert moderation.CompiledPatterns.load().entries
    os.chmod(cache, 0o666)
    assert moderation.CompiledPatterns.load().entries == {}
    os.chmod(cache, 0o600)
    os.chmod(cache_home, 0o777)  # a folder others may write: they could swap the file
    try:
        assert moderation.CompiledPatterns.load().entries == {}
    finally:
        os.chmod(cache_home, 0o700)
    link = cache.with_name(cache.name + ".real")
    cache.rename(link)
    cache.symlink_to(link)
    assert moderation.CompiledPatterns.load().entries == {}  # not followed


def test_an_old_format_cache_is_replaced(cache_home):
    cache_home.mkdir(parents=True, mode=0o700)
    path = moderation._cache_path()
    body = marshal.dumps({b"k" * 32: (0, [1, 2, 3], 0, {}, (None,))})
    Path(path).write_bytes(b"rxfed-moderation-patterns-1\n" + hashlib.sha256(body).digest() + body)  # the old format
    os.chmod(path, 0o600)
    assert moderation.CompiledPatterns.load().entries == {}
    ModerationRules.from_bytes(moderation.shipped_rules_bytes(), moderation.PUBLISHERS)
    assert len(moderation.CompiledPatterns.load().entries) == len(set(_patterns()))


def test_patterns_built_by_several_threads_at_once_answer_alike(plain, cache_home):
    """The plugin manager calls the check from worker threads: a pattern two threads build
    at the same moment is built twice at worst, never left unbuilt."""
    import threading

    data = moderation.shipped_rules_bytes()
    ModerationRules.from_bytes(data, moderation.PUBLISHERS)
    rules = ModerationRules.from_bytes(data, moderation.PUBLISHERS)  # nothing built yet
    texts = _texts()[::4]
    expected = [plain.check(t) for t in texts]
    results: list = [None] * 4
    start = threading.Barrier(4)

    def run(i: int) -> None:
        start.wait()
        results[i] = [rules.check(t) for t in texts]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [expected] * 4
