"""Private set intersection between two nodes, sans-I/O: ECDH-PSI over ristretto255.

Two nodes learn which diagnosis categories both offer, and nothing else about each other's
sets but their padded sizes. Each side blinds its elements with a fresh secret exponent,
the other raises them to its own, and both compare the doubly blinded values (as short
tags). Every byte in and out goes through this module; the node only carries messages
(spec/crypto.md §13 has the construction and its security argument).

One session, from each side (``I`` initiates, ``R`` responds)::

    I: session, hello = start(context, elements)          -> hello to R
    R: session, hello = accept(hello, federation=, me=, peer=, elements=)  -> hello to I
    I: session = session.receive_hello(hello)
    both: session, blinded = session.blind()              -> to the peer (the costly step)
    both: session, commitment = session.receive_blinded(peer's blinded)   -> to the peer
    both: session, reveal = session.receive_commitment(peer's commitment) -> to the peer
    both: session, result = session.receive_reveal(peer's reveal)

Each call returns a new session (the old one is left as it was) or raises an
:class:`rxfed.errors.RxfedError` and changes nothing: a malformed, oversized or misplaced
message is refused with a code a node can put in its reply (:data:`ERROR_CODES`).
Randomness comes in as ``random`` (bytes from the CSPRNG by default).

The rule of what a node offers is :func:`offered_categories` (at least ``k`` consenting
patients per category); its set is padded with dummies to :func:`padded_size`.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import attrs

from rxfed.crypto.keys import random_bytes
from rxfed.crypto.ristretto import (
    POINT_SIZE,
    ExponentKey,
    GroupHasher,
    InvalidElement,
    Tagger,
    base_exponentiate,
    is_element,
    random_scalar,
)
from rxfed.errors import BadRequest, Conflict, PayloadTooLarge, RxfedError
from rxfed.protocol.canonical import canonical, loads

VERSION = 1
MAGIC = b"RXPSI"
SESSION_ID_SIZE = 16
#: Bytes of a doubly blinded element's tag. Two sets of ``2**17`` tags give a false match
#: with probability below ``2**34 / 2**96 = 2**-62``.
TAG_SIZE = 12
COMMITMENT_SIZE = 32
#: A category is offered only when at least this many of the node's patients consented.
DEFAULT_K = 11
#: The largest padded set a session takes from a peer or sends (the request size cap).
DEFAULT_MAX_ELEMENTS = 1024
#: No set is padded to fewer elements than this.
MIN_PADDED = 64
#: Every set carries at least this many dummies, so there are always some to check.
MIN_DUMMIES = 16
#: Dummies whose doubly blinded tags are checked in the peer's reveal.
CHECKED_DUMMIES = 256
#: Below twice this many elements a step runs on one thread whatever ``workers`` says.
_MIN_CHUNK = 256

#: hash-to-group's domain separation tag (RFC 9380 §3.1: protocol, version, suite).
HASH_DST = b"rxfed-psi-v1-ristretto255_XMD:SHA-512_R255MAP_RO_"
_TRANSCRIPT_PERSON = b"rxfed-psi-th"
_TAG_PERSON = b"rxfed-psi-tag"
_COMMIT_PERSON = b"rxfed-psi-commit"

#: The ``code`` of every error this module raises, for the node's replies and logs.
ERROR_CODES = ("psi_malformed", "psi_too_large", "psi_wrong_session", "psi_out_of_order",
               "psi_peer_misbehaved")


class MessageType(enum.IntEnum):
    HELLO = 1
    BLINDED = 2
    COMMITMENT = 3
    REVEAL = 4


class Role(enum.IntEnum):
    INITIATOR = 0
    RESPONDER = 1


class Phase(enum.Enum):
    HELLO_SENT = "hello-sent"  # the initiator waits for the responder's hello
    READY = "ready"            # both hellos known: blind our set
    BLINDED = "blinded"        # ours sent: exponentiate the peer's, commit to the tags
    COMMITTED = "committed"    # our commitment sent: reveal once the peer's arrives
    REVEALED = "revealed"      # both committed, our reveal sent: read the peer's
    DONE = "done"


#: Every step of a session, in one place: (step, phase it needs) -> phase after it.
TRANSITIONS: dict[tuple[str, Phase], Phase] = {
    ("receive_hello", Phase.HELLO_SENT): Phase.READY,
    ("blind", Phase.READY): Phase.BLINDED,
    ("receive_blinded", Phase.BLINDED): Phase.COMMITTED,
    ("receive_commitment", Phase.COMMITTED): Phase.REVEALED,
    ("receive_reveal", Phase.REVEALED): Phase.DONE,
}


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="psi_malformed")


def _too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(message, code="psi_too_large")


def _wrong_session(message: str) -> BadRequest:
    return BadRequest(message, code="psi_wrong_session")


def _misbehaved(message: str) -> BadRequest:
    return BadRequest(message, code="psi_peer_misbehaved")


# --- what a node offers ---------------------------------------------------------------

def offered_categories(consents: Iterable[tuple[str, str]], *, k: int = DEFAULT_K) -> frozenset[str]:
    """The categories a node may offer: those at least ``k`` distinct patients hold and
    consented to matching for. ``consents`` holds one ``(patient, category)`` pair per
    consenting patient and category (a patient named twice counts once)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError("k is a positive integer")
    patients: dict[str, set[str]] = defaultdict(set)
    for patient, category in consents:
        patients[category].add(patient)
    return frozenset(category for category, who in patients.items() if len(who) >= k)


def _round_up(n: int) -> int:
    """The least ``m * 2**e >= n`` with ``8 <= m <= 15``: at most 12.5% above ``n``."""
    e = max(0, n.bit_length() - 4)
    return (-(-n >> e)) << e


def padded_size(n: int, *, minimum: int = MIN_PADDED) -> int:
    """How many elements a set of ``n`` is sent as: ``n`` and :data:`MIN_DUMMIES` dummies,
    rounded up to a size bucket (:func:`is_bucket`), and at least ``minimum``."""
    return max(minimum, _round_up(n + MIN_DUMMIES))


def is_bucket(size: int) -> bool:
    """Whether ``size`` is a size bucket: ``m * 2**e`` with ``m`` below 16."""
    return size >= 1 and _round_up(size) == size


# --- session parameters ---------------------------------------------------------------

def _name(value: str, what: str) -> bytes:
    data = value.encode() if isinstance(value, str) else b""
    if not 1 <= len(data) <= 255:
        raise ValueError(f"{what} is a string of 1 to 255 UTF-8 bytes")
    return data


@attrs.frozen
class PsiContext:
    """What a session is bound to: the federation, a session id the initiator draws, and
    both nodes in their roles. All of it enters every element's hash to the group."""

    federation: str
    session_id: bytes
    initiator: str
    responder: str

    def __attrs_post_init__(self):
        for value, what in ((self.federation, "federation"), (self.initiator, "initiator"),
                            (self.responder, "responder")):
            _name(value, what)
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_SIZE:
            raise ValueError(f"a session id is {SESSION_ID_SIZE} bytes")
        if self.initiator == self.responder:
            raise ValueError("a node does not run a session with itself")

    @classmethod
    def new(cls, federation: str, initiator: str, responder: str, *,
            random: Callable[[int], bytes] = random_bytes) -> PsiContext:
        return cls(federation, random(SESSION_ID_SIZE), initiator, responder)

    def hash_prefix(self) -> bytes:
        """What precedes each element in its hash to the group: every name length-prefixed,
        so no two contexts give one prefix."""
        out = bytearray()
        for value in (self.federation, self.session_id, self.initiator, self.responder):
            data = value if isinstance(value, bytes) else value.encode()
            out += bytes([len(data)]) + data
        return bytes(out)


@attrs.frozen
class PsiLimits:
    """What one session may take and send."""

    #: The largest padded set, ours or the peer's (the request size cap).
    max_elements: int = DEFAULT_MAX_ELEMENTS
    #: Our set is padded to at least this many elements.
    min_padded: int = MIN_PADDED

    def __attrs_post_init__(self):
        if not isinstance(self.max_elements, int) or not 1 <= self.max_elements <= 2**24:
            raise ValueError("max_elements is from 1 to 2**24")
        if not isinstance(self.min_padded, int) or not 1 <= self.min_padded <= self.max_elements:
            raise ValueError("min_padded is from 1 to max_elements")

    def max_message_size(self) -> int:
        """The longest message a session accepts (a blinded set of ``max_elements``), so
        a node can refuse a longer body before reading it."""
        return _HEADER_SIZE + POINT_SIZE + 4 + POINT_SIZE * self.max_elements


# --- the wire encoding ----------------------------------------------------------------

_HEADER = struct.Struct(f">{len(MAGIC)}sBB{SESSION_ID_SIZE}s")
_HEADER_SIZE = _HEADER.size


def _header(kind: MessageType, session_id: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, kind, session_id)


def _as_bytes(data) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed("a PSI message is bytes")
    return bytes(data)


def _read_header(data: bytes, kind: MessageType, limits: PsiLimits) -> bytes:
    """The session id of a message of ``kind``; the rest is the caller's to read."""
    if len(data) > limits.max_message_size():
        raise _too_large(f"a PSI message is at most {limits.max_message_size()} bytes here")
    if len(data) < _HEADER_SIZE:
        raise _malformed("a PSI message is shorter than its header")
    magic, version, found, session_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _malformed("not a PSI message")
    if version != VERSION:
        raise _malformed(f"PSI version {version} is not spoken here (version {VERSION})")
    if found != kind:
        try:
            name = MessageType(found).name.lower()
        except ValueError:
            name = f"type {found}"
        raise _malformed(f"expected a PSI {kind.name.lower()} message, got {name}")
    return bytes(session_id)


def _read_count(data: bytes, offset: int, item: int, what: str) -> int:
    if len(data) < offset + 4:
        raise _malformed(f"the {what} has no count")
    (count,) = struct.unpack_from(">I", data, offset)
    if len(data) != offset + 4 + count * item:
        raise _malformed(f"the {what} holds {count} elements but is {len(data)} bytes long")
    return count


def _unique(items: list[bytes], what: str) -> None:
    if len(set(items)) != len(items):
        raise _malformed(f"the {what} holds an element twice")


@attrs.frozen
class Hello:
    """Opens a session (initiator) or accepts it (responder): who, where, and how many."""

    session_id: bytes
    role: Role
    size: int
    federation: str
    sender: str
    receiver: str

    def to_bytes(self) -> bytes:
        out = bytearray(_header(MessageType.HELLO, self.session_id))
        out += struct.pack(">BI", self.role, self.size)
        for value, what in ((self.federation, "federation"), (self.sender, "sender"), (self.receiver, "receiver")):
            data = _name(value, what)
            out += bytes([len(data)]) + data
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PsiLimits) -> Hello:
        data = _as_bytes(data)
        session_id = _read_header(data, MessageType.HELLO, limits)
        offset = _HEADER_SIZE
        if len(data) < offset + 5:
            raise _malformed("the hello is cut short")
        role, size = struct.unpack_from(">BI", data, offset)
        offset += 5
        if role not in (Role.INITIATOR, Role.RESPONDER):
            raise _malformed("the hello names an unknown role")
        names = []
        for what in ("federation", "sender", "receiver"):
            if len(data) < offset + 1 or len(data) < offset + 1 + data[offset]:
                raise _malformed(f"the hello's {what} is cut short")
            length = data[offset]
            raw = data[offset + 1:offset + 1 + length]
            offset += 1 + length
            try:
                names.append(raw.decode())
            except UnicodeDecodeError:
                raise _malformed(f"the hello's {what} is not UTF-8") from None
            if not raw:
                raise _malformed(f"the hello's {what} is empty")
        if offset != len(data):
            raise _malformed("the hello has trailing bytes")
        if size > limits.max_elements:
            raise _too_large(f"the peer's set of {size} elements is above this node's cap of {limits.max_elements}")
        if not is_bucket(size):
            raise _malformed(f"{size} elements is not a padded set size")
        return cls(session_id, Role(role), size, *names)


@attrs.frozen
class Blinded:
    """A side's padded set, each element hashed to the group and raised to its key, and
    the key's public element (for the peer's spot checks)."""

    session_id: bytes
    public: bytes
    elements: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        return b"".join((_header(MessageType.BLINDED, self.session_id), self.public,
                         struct.pack(">I", len(self.elements)), *self.elements))

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PsiLimits) -> Blinded:
        data = _as_bytes(data)
        session_id = _read_header(data, MessageType.BLINDED, limits)
        offset = _HEADER_SIZE + POINT_SIZE
        if len(data) < offset:
            raise _malformed("the blinded set has no public element")
        public = data[_HEADER_SIZE:offset]
        count = _read_count(data, offset, POINT_SIZE, "blinded set")
        if count > limits.max_elements:
            raise _too_large(f"{count} elements is above this node's cap of {limits.max_elements}")
        offset += 4
        elements = [data[offset + i * POINT_SIZE:offset + (i + 1) * POINT_SIZE] for i in range(count)]
        if not is_element(public):
            raise _malformed("the blinded set's public element is not a group element")
        _unique(elements, "blinded set")
        return cls(session_id, public, tuple(elements))


@attrs.frozen
class Commitment:
    """A side's commitment to its reveal, sent before either side reveals."""

    session_id: bytes
    digest: bytes

    def to_bytes(self) -> bytes:
        return _header(MessageType.COMMITMENT, self.session_id) + self.digest

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PsiLimits) -> Commitment:
        data = _as_bytes(data)
        session_id = _read_header(data, MessageType.COMMITMENT, limits)
        if len(data) != _HEADER_SIZE + COMMITMENT_SIZE:
            raise _malformed(f"a commitment is {COMMITMENT_SIZE} bytes")
        return cls(session_id, data[_HEADER_SIZE:])


@attrs.frozen
class Reveal:
    """The tags of the peer's blinded elements raised to this side's key, in the peer's order."""

    session_id: bytes
    tags: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        return b"".join((_header(MessageType.REVEAL, self.session_id), struct.pack(">I", len(self.tags)), *self.tags))

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PsiLimits) -> Reveal:
        data = _as_bytes(data)
        session_id = _read_header(data, MessageType.REVEAL, limits)
        count = _read_count(data, _HEADER_SIZE, TAG_SIZE, "reveal")
        if count > limits.max_elements:
            raise _too_large(f"{count} tags is above this node's cap of {limits.max_elements}")
        offset = _HEADER_SIZE + 4
        tags = [data[offset + i * TAG_SIZE:offset + (i + 1) * TAG_SIZE] for i in range(count)]
        _unique(tags, "reveal")
        return cls(session_id, tuple(tags))


# --- the session ----------------------------------------------------------------------

@attrs.frozen
class PsiResult:
    """What a session gave this side: the common elements and both padded sizes."""

    common: frozenset[bytes]
    own_size: int
    own_padded: int
    peer_padded: int


def _shuffled(items: list, random: Callable[[int], bytes]) -> list:
    """``items`` in a uniformly random order: sorted by independent 128-bit random keys."""
    keys = random(16 * len(items))
    order = sorted(range(len(items)), key=lambda i: keys[16 * i:16 * i + 16])
    return [items[i] for i in order]


def _own_set(elements: Iterable[bytes], limits: PsiLimits, random: Callable[[int], bytes]):
    own = set()
    for element in elements:
        if not isinstance(element, bytes):
            raise TypeError("PSI elements are bytes")
        own.add(element)
    size = padded_size(len(own), minimum=limits.min_padded)
    if size > limits.max_elements:
        raise _too_large(f"{len(own)} elements pad to {size}, above the session's cap of {limits.max_elements}")
    slots = _shuffled([*sorted(own), *([None] * (size - len(own)))], random)
    # Each dummy is r times the generator for a fresh r: a uniformly random element, like a
    # blinded one. The peer raises it to its key k; we expect the tag of r times k's public.
    dummies = tuple((slot, random_scalar(random)) for slot, element in enumerate(slots) if element is None)
    return tuple(slots), dummies, len(own)


@attrs.frozen
class PsiSession:
    """One side of one session. Secrets (the exponent, our elements) never show in ``repr``."""

    role: Role
    context: PsiContext
    limits: PsiLimits
    phase: Phase
    key: ExponentKey = attrs.field(repr=False)
    #: Our padded set in the order we send it: an element, or ``None`` for a dummy.
    slots: tuple[bytes | None, ...] = attrs.field(repr=False)
    #: (slot, scalar) of every dummy.
    dummies: tuple[tuple[int, bytes], ...] = attrs.field(repr=False)
    own_size: int = attrs.field(repr=False)
    own_hello: bytes
    peer_hello: bytes | None = None
    peer_size: int | None = None
    peer_public: bytes | None = None
    #: Tags of the peer's elements raised to our key, in the peer's order (our reveal).
    peer_tags: tuple[bytes, ...] | None = attrs.field(default=None, repr=False)
    commitment: bytes | None = None
    peer_commitment: bytes | None = None

    def _step(self, step: str) -> Phase:
        after = TRANSITIONS.get((step, self.phase))
        if after is None:
            raise Conflict(f"a PSI session cannot {step.replace('_', ' ')} when {self.phase.value}",
                           code="psi_out_of_order")
        return after

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self.context.session_id:
            raise _wrong_session("the message belongs to another PSI session")

    @property
    def transcript(self) -> bytes:
        """BLAKE2b-256 of both hellos, the initiator's first: the key of every tag and commitment."""
        if self.peer_hello is None:
            raise Conflict("the transcript needs both hellos", code="psi_out_of_order")
        hellos = (self.own_hello, self.peer_hello) if self.role is Role.INITIATOR else (self.peer_hello, self.own_hello)
        return hashlib.blake2b(b"".join(hellos), digest_size=32, person=_TRANSCRIPT_PERSON).digest()

    def receive_hello(self, data: bytes) -> PsiSession:
        """The initiator reads the responder's hello."""
        after = self._step("receive_hello")
        hello = Hello.from_bytes(data, limits=self.limits)
        self._check_session(hello.session_id)
        context = self.context
        if hello.role is not Role.RESPONDER or (hello.federation, hello.sender, hello.receiver) != (
                context.federation, context.responder, context.initiator):
            raise _wrong_session("the hello does not answer this session")
        return attrs.evolve(self, phase=after, peer_hello=hello.to_bytes(), peer_size=hello.size)

    def blind(self, *, workers: int = 1) -> tuple[PsiSession, bytes]:
        """Our padded set, blinded: each element hashed to the group (under the context)
        and raised to our key, each dummy a random element. ``workers`` threads share the
        work (libsodium's calls release the interpreter lock)."""
        after = self._step("blind")
        scalars = dict(self.dummies)
        key, prefix = self.key, self.context.hash_prefix()

        def blinder():
            hasher = GroupHasher(HASH_DST, prefix)
            return lambda item: (base_exponentiate(scalars[item[0]]) if item[1] is None
                                 else key.exponentiate(hasher(item[1])))

        elements = _each(blinder, list(enumerate(self.slots)), workers)
        message = Blinded(self.context.session_id, key.public, elements).to_bytes()
        return attrs.evolve(self, phase=after), message

    def receive_blinded(self, data: bytes, *, workers: int = 1) -> tuple[PsiSession, bytes]:
        """The peer's blinded set: raise each element to our key, tag it, and commit to the
        tags (``workers`` as for :meth:`blind`)."""
        after = self._step("receive_blinded")
        blinded = Blinded.from_bytes(data, limits=self.limits)
        self._check_session(blinded.session_id)
        if len(blinded.elements) != self.peer_size:
            raise _malformed(f"the peer announced {self.peer_size} elements and sent {len(blinded.elements)}")
        key, transcript = self.key, self.transcript

        def raiser():
            tagger = Tagger(transcript, size=TAG_SIZE, person=_TAG_PERSON)
            return lambda element: tagger(key.exponentiate(element))

        try:
            tags = _each(raiser, list(blinded.elements), workers)
        except InvalidElement:
            raise _malformed("the blinded set holds something that is not a group element") from None
        reveal = Reveal(self.context.session_id, tags).to_bytes()
        digest = _commit(self.transcript, self.role, reveal)
        message = Commitment(self.context.session_id, digest).to_bytes()
        return attrs.evolve(self, phase=after, peer_public=blinded.public, peer_tags=tags, commitment=digest), message

    def receive_commitment(self, data: bytes) -> tuple[PsiSession, bytes]:
        """The peer's commitment; both sides are committed, so we reveal."""
        after = self._step("receive_commitment")
        commitment = Commitment.from_bytes(data, limits=self.limits)
        self._check_session(commitment.session_id)
        if commitment.digest == self.commitment:
            raise _misbehaved("the peer sent our own commitment back")
        message = Reveal(self.context.session_id, self.peer_tags).to_bytes()
        return attrs.evolve(self, phase=after, peer_commitment=commitment.digest), message

    def receive_reveal(self, data: bytes) -> tuple[PsiSession, PsiResult]:
        """The peer's reveal: check it against its commitment and our dummies, then intersect."""
        after = self._step("receive_reveal")
        reveal = Reveal.from_bytes(data, limits=self.limits)
        self._check_session(reveal.session_id)
        if len(reveal.tags) != len(self.slots):
            raise _malformed(f"the reveal holds {len(reveal.tags)} tags for our {len(self.slots)} elements")
        peer_role = Role.RESPONDER if self.role is Role.INITIATOR else Role.INITIATOR
        if _commit(self.transcript, peer_role, Reveal(reveal.session_id, reveal.tags).to_bytes()) != self.peer_commitment:
            raise _misbehaved("the peer's reveal is not what it committed to")
        tagger = Tagger(self.transcript, size=TAG_SIZE, person=_TAG_PERSON)
        for slot, scalar in self.dummies[:CHECKED_DUMMIES]:
            if reveal.tags[slot] != tagger(ExponentKey(scalar).exponentiate(self.peer_public)):
                raise _misbehaved("the peer did not raise our set to the key it published")
        theirs = set(self.peer_tags)
        common = frozenset(element for element, found in zip(self.slots, reveal.tags)
                           if element is not None and found in theirs)
        result = PsiResult(common, self.own_size, len(self.slots), self.peer_size)
        return attrs.evolve(self, phase=after), result


def _each(make: Callable[[], Callable], items: list, workers: int) -> tuple:
    """``make()`` applied to every item, in order, on ``workers`` threads (each making its
    own function, so no hash state is shared)."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError("workers is a positive integer")
    if workers == 1 or len(items) < 2 * _MIN_CHUNK:
        fn = make()
        return tuple(fn(item) for item in items)
    step = -(-len(items) // workers)
    chunks = [items[i:i + step] for i in range(0, len(items), step)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: [fn(item) for fn in (make(),) for item in chunk], chunks))
    return tuple(item for part in parts for item in part)


def _commit(transcript: bytes, role: Role, reveal: bytes) -> bytes:
    return hashlib.blake2b(bytes([role]) + reveal, digest_size=COMMITMENT_SIZE, key=transcript,
                           person=_COMMIT_PERSON).digest()


def start(context: PsiContext, elements: Iterable[bytes], *, limits: PsiLimits = PsiLimits(),
          random: Callable[[int], bytes] = random_bytes) -> tuple[PsiSession, bytes]:
    """Open a session as the initiator: a fresh key, our set padded and shuffled, and the
    hello to send."""
    slots, dummies, own_size = _own_set(elements, limits, random)
    hello = Hello(context.session_id, Role.INITIATOR, len(slots), context.federation, context.initiator,
                  context.responder).to_bytes()
    session = PsiSession(Role.INITIATOR, context, limits, Phase.HELLO_SENT, ExponentKey.generate(random), slots,
                         dummies, own_size, hello)
    return session, hello


def accept(data: bytes, *, federation: str, me: str, peer: str, elements: Iterable[bytes],
           limits: PsiLimits = PsiLimits(), random: Callable[[int], bytes] = random_bytes) -> tuple[PsiSession, bytes]:
    """Answer an initiator's hello as the responder. ``peer`` is the node that sent it, as
    the node authenticated it; ``me`` and ``federation`` are ours. Refused unless the hello
    names exactly these, and its set is within ``limits``."""
    hello = Hello.from_bytes(data, limits=limits)
    if hello.role is not Role.INITIATOR or (hello.federation, hello.sender, hello.receiver) != (federation, peer, me):
        raise _wrong_session("the hello does not open a session between these nodes")
    try:
        context = PsiContext(federation, hello.session_id, peer, me)
    except ValueError as exc:
        raise _wrong_session(str(exc)) from None
    slots, dummies, own_size = _own_set(elements, limits, random)
    reply = Hello(context.session_id, Role.RESPONDER, len(slots), federation, me, peer).to_bytes()
    session = PsiSession(Role.RESPONDER, context, limits, Phase.READY, ExponentKey.generate(random), slots,
                         dummies, own_size, reply, peer_hello=hello.to_bytes(), peer_size=hello.size)
    return session, reply


# --- keeping a session between requests ------------------------------------------------

def _b(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unb(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def session_to_state(session: PsiSession) -> bytes:
    """Everything a side needs to take the next step of ``session``, as bytes a node keeps
    in its store between a peer's requests (a node serving several worker processes cannot
    keep it in memory). It holds the session's secret exponent and the node's own elements:
    the node deletes it once the session ends."""
    c, s = session.context, session
    return canonical({
        "v": VERSION, "role": int(s.role), "phase": s.phase.value,
        "context": [c.federation, c.session_id.hex(), c.initiator, c.responder],
        "limits": [s.limits.max_elements, s.limits.min_padded], "key": s.key.scalar.hex(),
        "slots": [_b(slot) for slot in s.slots], "dummies": [[slot, scalar.hex()] for slot, scalar in s.dummies],
        "own_size": s.own_size, "own_hello": s.own_hello.hex(), "peer_hello": _b(s.peer_hello),
        "peer_size": s.peer_size, "peer_public": _b(s.peer_public),
        "peer_tags": None if s.peer_tags is None else b"".join(s.peer_tags).hex(),
        "commitment": _b(s.commitment), "peer_commitment": _b(s.peer_commitment)})


def session_from_state(data: bytes) -> PsiSession:
    """The session :func:`session_to_state` kept. ValueError for bytes it did not write."""
    try:
        d = loads(data)
        if d["v"] != VERSION:
            raise ValueError("a PSI session kept by another version")
        federation, session_id, initiator, responder = d["context"]
        tags = _unb(d["peer_tags"])
        return PsiSession(
            Role(d["role"]), PsiContext(federation, bytes.fromhex(session_id), initiator, responder),
            PsiLimits(*d["limits"]), Phase(d["phase"]), ExponentKey(bytes.fromhex(d["key"])),
            tuple(_unb(slot) for slot in d["slots"]),
            tuple((int(slot), bytes.fromhex(scalar)) for slot, scalar in d["dummies"]), int(d["own_size"]),
            bytes.fromhex(d["own_hello"]), _unb(d["peer_hello"]), d["peer_size"], _unb(d["peer_public"]),
            None if tags is None else tuple(tags[i:i + TAG_SIZE] for i in range(0, len(tags), TAG_SIZE)),
            _unb(d["commitment"]), _unb(d["peer_commitment"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a kept PSI session: {exc}") from None
    except RxfedError as exc:  # loads: not JSON
        raise ValueError(f"not a kept PSI session: {exc.message}") from None
