"""Secure aggregation of integer vectors between nodes by pairwise masks (sans-I/O).

Bonawitz et al., *Practical Secure Aggregation for Privacy-Preserving Machine Learning*
(CCS 2017), for a federation of a few nodes: each node's vector (its noisy counts) reaches
the aggregator masked, the masks cancel in the sum, and the aggregator learns only the
total of the nodes that stayed in the round. Four phases (spec/privacy.md, section 3):

1. *advertise*: each node sends a fresh X25519 mask key, signed by its identity key and
   bound to the round's :class:`RoundSpec`; the aggregator forwards every advert (the
   *roster*) to every node that advertised;
2. *masked input*: each node sends x + self mask + sum of signed pairwise masks, mod 2^bits;
3. *consistency*: the aggregator names the nodes whose input arrived (the *survivors*);
   each survivor signs that list;
4. *unmask*: with every survivor's signature over the same list, each survivor reveals its
   self-mask seed and its pairwise seeds with the nodes that dropped out, nothing else.

A node that drops out before its masked input is recovered (its masks with the survivors are
revealed and removed); one that drops out later ends the round, abandoned: its self mask is
never revealed, so no vector is ever unmasked. A node reveals its self-mask seed only for a
list that names it and its pairwise seed with a peer only for a list that leaves the peer out,
and signs one list per round, so the aggregator can never hold both for any node.

:class:`Participant` and :class:`Aggregator` take bytes in and give bytes out; the caller
moves them between nodes (signed federation requests) and calls :meth:`Aggregator.deadline`
when a phase's time is up. Randomness comes from the crypto layer, or is passed in for tests.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, b64d, b64e, random_bytes, sha256, verify_signature
from rxfed.crypto.masks import PUBLIC_KEY_SIZE, SEED_SIZE, BadMaskKey, MaskKeyPair, expand, mask_seed, self_mask_seed
from rxfed.errors import BadRequest, Conflict, Forbidden, PayloadTooLarge
from rxfed.protocol.canonical import canonical, loads

#: Most cells one round sums (a table is a few thousand; this bounds memory per message).
MAX_CELLS = 1 << 16
#: Most nodes in one round.
MAX_NODES = 64
BITS = (32, 48, 64)
_ROUND = re.compile(r"[0-9a-f]{32}")
_NODE = re.compile(r"[a-z0-9][a-z0-9.:\[\]-]{0,260}")
_SIG_PREFIX = b"rxfed-agg|"


class AggregationError(BadRequest):
    code = "bad_aggregation_message"


class AggregationReplay(Conflict):
    """A message for another round, a phase already over, or one already received."""

    code = "aggregation_replay"


class AggregationRefused(Forbidden):
    """The message asks for something the protocol forbids (a reveal that would unmask)."""

    code = "aggregation_refused"


class AggregationTooLarge(PayloadTooLarge):
    code = "aggregation_too_large"


class Phase(enum.StrEnum):
    ADVERTISE = "advertise"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


def _node(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NODE.fullmatch(value):
        raise AggregationError(f"{where} is not a node id")
    return value


def _bytes(value: Any, where: str, length: int | None = None) -> bytes:
    try:
        return b64d(value, length=length)
    except ValueError:
        raise AggregationError(f"{where} is not base64url" + (f" of {length} bytes" if length else "")) from None


def _sign(key: SigningKeyPair, body: dict) -> str:
    return b64e(key.sign(_SIG_PREFIX + canonical(body)))


def _verify(public: bytes, body: dict, sig: Any, where: str) -> None:
    try:
        verify_signature(public, _SIG_PREFIX + canonical(body), _bytes(sig, where, 64))
    except BadSignature:
        raise AggregationError(f"{where}: bad signature", code="bad_aggregation_signature") from None


@attrs.frozen
class RoundSpec:
    """What one round sums, among whom; every node checks it before it joins, and every
    advert is bound to its digest, so the aggregator cannot tell nodes different things.

    ``collusion`` is how many nodes may pool what they know (their own noise included; the
    aggregator counts among them when it takes part) and ``dropouts`` how many may leave
    before their masked input while the round still completes. Each node adds 1/``threshold`` of the noise, ``threshold = nodes - collusion
    - dropouts``, and the round needs ``nodes - dropouts`` survivors (spec/privacy.md §2)."""

    round: str
    aggregator: str
    nodes: tuple[tuple[str, bytes], ...]  # (node id, Ed25519 identity key), sorted by id
    cells: int
    table: str  # what is being summed: the release's digest (schema, period, epsilon)
    bits: int = 32
    collusion: int = 1
    dropouts: int = 0

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.round, str) or not _ROUND.fullmatch(self.round):
            raise AggregationError("round is 32 lower-case hex digits")
        _node(self.aggregator, "aggregator")
        ids = [n for n, _ in self.nodes]
        if not 2 <= len(ids) <= MAX_NODES or ids != sorted(set(ids)):
            raise AggregationError(f"nodes: 2 to {MAX_NODES} distinct node ids, sorted")
        for node, key in self.nodes:
            _node(node, "node")
            if not isinstance(key, bytes) or len(key) != 32:
                raise AggregationError("a node's identity key is 32 bytes")
        if isinstance(self.cells, bool) or not isinstance(self.cells, int) or not 1 <= self.cells <= MAX_CELLS:
            raise AggregationError(f"cells: 1 to {MAX_CELLS}")
        if self.bits not in BITS:
            raise AggregationError(f"bits: one of {BITS}")
        if not isinstance(self.table, str) or not 1 <= len(self.table) <= 128:
            raise AggregationError("table: 1 to 128 characters")
        for name in ("collusion", "dropouts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AggregationError(f"{name} is a count >= 0")
        if self.threshold < 1:
            raise AggregationError("nodes - collusion - dropouts must be at least 1 (the noise shares)")
        if self.min_survivors < 2:
            raise AggregationError("nodes - dropouts must be at least 2")
        if 2 * self.min_survivors - len(self.nodes) < self.collusion + 1:
            # Two survivor lists, one naming a node and one leaving it out, share at least
            # 2 * min_survivors - nodes signers; more than ``collusion`` of them means an
            # honest one, who signs one list only (spec/privacy.md §3).
            raise AggregationError("2 * (nodes - dropouts) - nodes must exceed collusion")

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.nodes)

    @property
    def threshold(self) -> int:
        """How many nodes' noise shares make the full noise (each adds 1/threshold of it)."""
        return len(self.nodes) - self.collusion - self.dropouts

    @property
    def min_survivors(self) -> int:
        return len(self.nodes) - self.dropouts

    @property
    def max_message(self) -> int:
        """The largest message of this round, in bytes (a masked vector in base64url, or a
        reveal naming every node, plus room for ids and signatures)."""
        return 4 * self.cells * self.bits // 8 // 3 + 200 * len(self.nodes) + 1024

    def key_of(self, node: str) -> bytes:
        return dict(self.nodes)[node]

    def to_json(self) -> dict:
        return {"round": self.round, "aggregator": self.aggregator, "cells": self.cells, "table": self.table,
                "bits": self.bits, "collusion": self.collusion, "dropouts": self.dropouts,
                "nodes": [[n, b64e(k)] for n, k in self.nodes]}

    @classmethod
    def from_json(cls, obj: Any) -> RoundSpec:
        if not isinstance(obj, dict) or set(obj) != {"round", "aggregator", "cells", "table", "bits", "collusion",
                                                     "dropouts", "nodes"}:
            raise AggregationError("a round spec has round, aggregator, cells, table, bits, collusion, dropouts, nodes")
        nodes = obj["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(p, list) and len(p) == 2 for p in nodes):
            raise AggregationError("nodes: a list of [node id, key]")
        return cls(round=obj["round"], aggregator=obj["aggregator"], cells=obj["cells"], table=obj["table"],
                   bits=obj["bits"], collusion=obj["collusion"], dropouts=obj["dropouts"],
                   nodes=tuple((_node(n, "node"), _bytes(k, "node key", 32)) for n, k in nodes))

    @property
    def digest(self) -> str:
        return b64e(sha256(b"rxfed-agg-spec|" + canonical(self.to_json())))

    def context(self) -> bytes:
        return canonical({"round": self.round, "spec": self.digest})


def new_round_id() -> str:
    return random_bytes(16).hex()


def encode_vector(values: Sequence[int], bits: int) -> bytes:
    width = bits // 8
    modulus = 1 << bits
    return b"".join((v % modulus).to_bytes(width, "little") for v in values)


def decode_vector(data: bytes, cells: int, bits: int) -> list[int]:
    width = bits // 8
    if len(data) != cells * width:
        raise AggregationError(f"a vector is {cells} cells of {width} bytes")
    return [int.from_bytes(data[i:i + width], "little") for i in range(0, len(data), width)]


def centred(values: Iterable[int], bits: int) -> list[int]:
    """Residues mod 2^bits as the integers in [-2^(bits-1), 2^(bits-1)) they stand for."""
    half, modulus = 1 << (bits - 1), 1 << bits
    return [v - modulus if v >= half else v for v in values]


def _pair_context(spec: RoundSpec, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return canonical({"round": spec.round, "spec": spec.digest, "pair": [low, high]})


def _parse(spec: RoundSpec, data: bytes, types: Mapping[str, set[str]]) -> dict:
    """A message of this round of one of ``types`` (type -> its fields), checked for size,
    JSON, fields and round before anything else looks at it."""
    if not isinstance(data, (bytes, bytearray)):
        raise AggregationError("a message is bytes")
    if len(data) > spec.max_message:
        raise AggregationTooLarge(f"a message of this round is at most {spec.max_message} bytes")
    obj = loads(bytes(data))
    if not isinstance(obj, dict) or obj.get("type") not in types:
        raise AggregationError(f"expected one of {sorted(types)}")
    if set(obj) != types[obj["type"]] | {"type", "round"}:
        raise AggregationError(f"{obj['type']} has exactly the fields {sorted(types[obj['type']] | {'type', 'round'})}")
    if obj["round"] != spec.round:
        raise AggregationReplay("a message of another round")
    return obj


def _node_list(spec: RoundSpec, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or value != sorted(set(value)) or not set(value) <= set(spec.node_ids):
        raise AggregationError(f"{where}: sorted distinct nodes of the round")
    return tuple(value)


def _survivor_body(spec: RoundSpec, nodes: Sequence[str]) -> dict:
    return {"type": "rxfed.agg.survivor-list", "round": spec.round, "spec": spec.digest, "nodes": list(nodes)}


def _advert_body(spec: RoundSpec, node: str, mask_key: bytes) -> dict:
    return {"type": "rxfed.agg.advert", "round": spec.round, "spec": spec.digest, "node": node,
            "mask_key": b64e(mask_key)}


def _check_advert(spec: RoundSpec, advert: Any) -> tuple[str, bytes]:
    if not isinstance(advert, dict) or set(advert) != {"body", "sig"} or not isinstance(advert["body"], dict):
        raise AggregationError("an advert is {body, sig}")
    body = advert["body"]
    if set(body) != {"type", "round", "spec", "node", "mask_key"} or body["type"] != "rxfed.agg.advert":
        raise AggregationError("an advert's body is {type, round, spec, node, mask_key}")
    node = _node(body["node"], "advert node")
    if node not in spec.node_ids:
        raise AggregationError("an advert from a node outside the round")
    if body["round"] != spec.round:
        raise AggregationReplay("an advert of another round")
    if body["spec"] != spec.digest:
        raise AggregationError("an advert for another round spec", code="aggregation_spec_mismatch")
    key = _bytes(body["mask_key"], "mask_key", PUBLIC_KEY_SIZE)
    _verify(spec.key_of(node), body, advert["sig"], f"advert of {node}")
    return node, key


class Participant:
    """One node's side of one round: single use, and refuses what would unmask anyone."""

    def __init__(self, spec: RoundSpec, node: str, identity: SigningKeyPair, vector: Sequence[int], *,
                 mask_key: MaskKeyPair | None = None, self_secret: bytes | None = None):
        if node not in spec.node_ids:
            raise AggregationError("this node is not in the round")
        if identity.public != spec.key_of(node):
            raise AggregationError("the identity key is not the one the round names for this node")
        half = 1 << (spec.bits - 1)
        if len(vector) != spec.cells or not all(type(v) is int and -half <= v < half for v in vector):
            raise AggregationError(f"the vector is {spec.cells} integers in [-2^{spec.bits - 1}, 2^{spec.bits - 1})")
        self.spec, self.node, self._identity = spec, node, identity
        self._vector = list(vector)
        self._mask_key = mask_key or MaskKeyPair.generate()
        self._self_seed = self_mask_seed(self_secret or random_bytes(SEED_SIZE), spec.context())
        self.phase = Phase.ADVERTISE
        self._roster: dict[str, bytes] = {}
        self._signed: tuple[str, ...] | None = None

    # -- state kept between messages (the node's store; several workers may serve a node) --

    def to_state(self) -> dict:
        """Everything this participant holds, for the node's store. Once the round is over
        (done or abandoned) the secrets are left out: nothing can be revealed any more."""
        over = self.phase in (Phase.DONE, Phase.ABANDONED)
        return {"spec": self.spec.to_json(), "node": self.node, "phase": str(self.phase),
                "vector": None if over else list(self._vector),
                "mask_public": b64e(self._mask_key.public),
                "mask_secret": None if over else b64e(self._mask_key.secret),
                "self_seed": None if over else b64e(self._self_seed),
                "roster": {n: b64e(k) for n, k in self._roster.items()},
                "signed": list(self._signed) if self._signed is not None else None}

    @classmethod
    def from_state(cls, obj: dict, identity: SigningKeyPair) -> Participant:
        """The participant :meth:`to_state` kept; a finished one answers nothing more."""
        spec = RoundSpec.from_json(obj["spec"])
        p = cls.__new__(cls)
        p.spec, p.node, p._identity = spec, obj["node"], identity
        if identity.public != spec.key_of(p.node):
            raise AggregationError("the identity key is not the one the round names for this node")
        p.phase = Phase(obj["phase"])
        over = p.phase in (Phase.DONE, Phase.ABANDONED)
        p._vector = [] if over else list(obj["vector"])
        public = b64d(obj["mask_public"], length=PUBLIC_KEY_SIZE)
        p._mask_key = MaskKeyPair(public, b"" if over else b64d(obj["mask_secret"]))
        p._self_seed = b"" if over else b64d(obj["self_seed"], length=SEED_SIZE)
        p._roster = {n: b64d(k, length=PUBLIC_KEY_SIZE) for n, k in obj["roster"].items()}
        p._signed = tuple(obj["signed"]) if obj["signed"] is not None else None
        return p

    def advert(self) -> bytes:
        """The first message: this node's mask key, signed."""
        body = _advert_body(self.spec, self.node, self._mask_key.public)
        return canonical({"type": "rxfed.agg.advert", "round": self.spec.round,
                          "advert": {"body": body, "sig": _sign(self._identity, body)}})

    def receive(self, data: bytes) -> bytes | None:
        """The reply to one message from the aggregator (None for an abandoned round). An
        error leaves the participant as it was."""
        obj = _parse(self.spec, data, {"rxfed.agg.roster": {"adverts"}, "rxfed.agg.survivors": {"nodes"},
                                       "rxfed.agg.unmask": {"nodes", "sigs"}, "rxfed.agg.abandon": {"reason"}})
        kind = obj["type"]
        if kind == "rxfed.agg.abandon":
            self.phase = Phase.ABANDONED  # single use: nothing more is answered in this round
            return None
        expected = {"rxfed.agg.roster": Phase.ADVERTISE, "rxfed.agg.survivors": Phase.MASKED,
                    "rxfed.agg.unmask": Phase.CONSISTENCY}[kind]
        if self.phase != expected:
            raise AggregationReplay(f"{kind} in phase {self.phase}")
        if kind == "rxfed.agg.roster":
            return self._masked(obj["adverts"])
        if kind == "rxfed.agg.survivors":
            return self._sign_survivors(obj["nodes"])
        return self._reveal(obj["nodes"], obj["sigs"])

    def _masked(self, adverts: Any) -> bytes:
        if not isinstance(adverts, list) or len(adverts) > len(self.spec.nodes):
            raise AggregationError("adverts: a list, one per node at most")
        roster: dict[str, bytes] = {}
        for advert in adverts:
            node, key = _check_advert(self.spec, advert)
            if node in roster:
                raise AggregationError(f"two adverts from {node}")
            roster[node] = key
        if roster.get(self.node) != self._mask_key.public:
            raise AggregationRefused("the roster does not carry this node's own mask key")
        if len(roster) < self.spec.min_survivors:
            raise AggregationRefused(f"the round needs {self.spec.min_survivors} nodes, the roster has {len(roster)}")
        if len(set(roster.values())) != len(roster):
            raise AggregationError("two nodes with one mask key")
        modulus = 1 << self.spec.bits
        total = list(self._vector)
        masks = [(1, self._self_seed)]
        try:
            for peer, key in roster.items():
                if peer != self.node:
                    seed = mask_seed(self._mask_key.pair_key(key), _pair_context(self.spec, self.node, peer))
                    masks.append((1 if self.node < peer else -1, seed))
        except BadMaskKey:
            raise AggregationError("a mask key of the roster is not usable") from None
        for sign, seed in masks:
            for i, m in enumerate(expand(seed, self.spec.cells, self.spec.bits)):
                total[i] += sign * m
        self._roster = roster
        self.phase = Phase.MASKED
        return canonical({"type": "rxfed.agg.masked", "round": self.spec.round, "node": self.node,
                          "vector": b64e(encode_vector([v % modulus for v in total], self.spec.bits))})

    def _check_survivors(self, nodes: Any) -> tuple[str, ...]:
        nodes = _node_list(self.spec, nodes, "survivors")
        if not set(nodes) <= set(self._roster):
            raise AggregationRefused("survivors outside the roster")
        if self.node not in nodes:
            raise AggregationRefused("a survivor list without this node")
        if len(nodes) < self.spec.min_survivors:
            raise AggregationRefused(f"fewer than {self.spec.min_survivors} survivors: the round is to be abandoned")
        return nodes

    def _sign_survivors(self, nodes: Any) -> bytes:
        nodes = self._check_survivors(nodes)
        self._signed = nodes
        self.phase = Phase.CONSISTENCY
        return canonical({"type": "rxfed.agg.survivors-signed", "round": self.spec.round, "node": self.node,
                          "sig": _sign(self._identity, _survivor_body(self.spec, nodes))})

    def _reveal(self, nodes: Any, sigs: Any) -> bytes:
        nodes = self._check_survivors(nodes)
        if nodes != self._signed:
            raise AggregationRefused("not the survivor list this node signed")
        if not isinstance(sigs, dict) or set(sigs) != set(nodes):
            raise AggregationRefused("every survivor's signature over the list is needed")
        body = _survivor_body(self.spec, nodes)
        for node in nodes:
            try:
                _verify(self.spec.key_of(node), body, sigs[node], f"survivor list signature of {node}")
            except AggregationError:
                raise AggregationRefused(f"the survivor list signature of {node} does not verify") from None
        dropped = sorted(set(self._roster) - set(nodes))
        pair_seeds = {peer: b64e(mask_seed(self._mask_key.pair_key(self._roster[peer]),
                                           _pair_context(self.spec, self.node, peer))) for peer in dropped}
        self.phase = Phase.DONE
        return canonical({"type": "rxfed.agg.reveal", "round": self.spec.round, "node": self.node,
                          "self_seed": b64e(self._self_seed), "pair_seeds": pair_seeds})


@attrs.frozen
class Outcome:
    """How a round ended: the total of the survivors' vectors, or abandoned (and why)."""

    phase: Phase
    total: tuple[int, ...] | None = None
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    reason: str | None = None


class Aggregator:
    """The aggregator's side of one round. It never holds a self-mask seed and a pairwise
    seed of the same node; it learns the survivors' total and nothing else."""

    def __init__(self, spec: RoundSpec):
        self.spec = spec
        self.phase = Phase.ADVERTISE
        self._adverts: dict[str, dict] = {}
        self._roster: dict[str, bytes] = {}
        self._masked: dict[str, list[int]] = {}
        self._survivors: tuple[str, ...] = ()
        self._sigs: dict[str, str] = {}
        self._reveals: dict[str, tuple[bytes, dict[str, bytes]]] = {}
        self.outcome: Outcome | None = None

    # -- state kept between messages -----------------------------------------------------

    def to_state(self) -> dict:
        """Everything the aggregator holds, for the node's store (no secret of any node:
        only what it was sent)."""
        out = self.outcome
        return {"spec": self.spec.to_json(), "phase": str(self.phase), "adverts": dict(self._adverts),
                "roster": {n: b64e(k) for n, k in self._roster.items()},
                "masked": {n: list(v) for n, v in self._masked.items()}, "survivors": list(self._survivors),
                "sigs": dict(self._sigs),
                "reveals": {n: [b64e(seed), {p: b64e(x) for p, x in pairs.items()}]
                            for n, (seed, pairs) in self._reveals.items()},
                "outcome": None if out is None else {
                    "phase": str(out.phase), "total": list(out.total) if out.total is not None else None,
                    "survivors": list(out.survivors), "dropped": list(out.dropped), "reason": out.reason}}

    @classmethod
    def from_state(cls, obj: dict) -> Aggregator:
        a = cls(RoundSpec.from_json(obj["spec"]))
        a.phase = Phase(obj["phase"])
        a._adverts = dict(obj["adverts"])
        a._roster = {n: b64d(k, length=PUBLIC_KEY_SIZE) for n, k in obj["roster"].items()}
        a._masked = {n: list(v) for n, v in obj["masked"].items()}
        a._survivors = tuple(obj["survivors"])
        a._sigs = dict(obj["sigs"])
        a._reveals = {n: (b64d(seed, length=SEED_SIZE), {p: b64d(x, length=SEED_SIZE) for p, x in pairs.items()})
                      for n, (seed, pairs) in obj["reveals"].items()}
        out = obj["outcome"]
        a.outcome = None if out is None else Outcome(
            Phase(out["phase"]), tuple(out["total"]) if out["total"] is not None else None,
            tuple(out["survivors"]), tuple(out["dropped"]), out["reason"])
        return a

    # -- input -------------------------------------------------------------------------

    def receive(self, sender: str, data: bytes) -> list[tuple[str, bytes]]:
        """Take one message from ``sender`` (as the transport authenticated it); return the
        messages to send, as (node, bytes). An error leaves the aggregator as it was."""
        if sender not in self.spec.node_ids:
            raise AggregationRefused("a message from a node outside the round")
        obj = _parse(self.spec, data, {"rxfed.agg.advert": {"advert"}, "rxfed.agg.masked": {"node", "vector"},
                                       "rxfed.agg.survivors-signed": {"node", "sig"},
                                       "rxfed.agg.reveal": {"node", "self_seed", "pair_seeds"}})
        kind = obj["type"]
        expected = {"rxfed.agg.advert": Phase.ADVERTISE, "rxfed.agg.masked": Phase.MASKED,
                    "rxfed.agg.survivors-signed": Phase.CONSISTENCY, "rxfed.agg.reveal": Phase.UNMASK}[kind]
        if self.phase != expected:
            raise AggregationReplay(f"{kind} in phase {self.phase}")
        node = _check_advert(self.spec, obj["advert"])[0] if kind == "rxfed.agg.advert" else _node(obj["node"], "node")
        if node != sender:
            raise AggregationRefused("a message in another node's name")
        if kind == "rxfed.agg.advert":
            if node in self._adverts:
                raise AggregationReplay(f"a second advert from {node}")
            key = _bytes(obj["advert"]["body"]["mask_key"], "mask_key", PUBLIC_KEY_SIZE)
            if key in self._roster.values():
                raise AggregationError("a mask key another node advertised")
            self._adverts[node] = obj["advert"]
            self._roster[node] = key
            return self._roster_out() if len(self._adverts) == len(self.spec.nodes) else []
        if kind == "rxfed.agg.masked":
            if node not in self._roster:
                raise AggregationRefused(f"{node} is not on the roster")
            if node in self._masked:
                raise AggregationReplay(f"a second masked input from {node}")
            vector = decode_vector(_bytes(obj["vector"], "vector"), self.spec.cells, self.spec.bits)
            self._masked[node] = vector
            return self._survivors_out() if len(self._masked) == len(self._roster) else []
        if kind == "rxfed.agg.survivors-signed":
            if node not in self._survivors:
                raise AggregationRefused(f"{node} is not a survivor")
            if node in self._sigs:
                raise AggregationReplay(f"a second signature from {node}")
            _verify(self.spec.key_of(node), _survivor_body(self.spec, self._survivors), obj["sig"],
                    f"survivor list signature of {node}")
            self._sigs[node] = obj["sig"]
            return self._unmask_out() if len(self._sigs) == len(self._survivors) else []
        if node not in self._survivors:
            raise AggregationRefused(f"{node} is not a survivor")
        if node in self._reveals:
            raise AggregationReplay(f"a second reveal from {node}")
        pairs = obj["pair_seeds"]
        dropped = set(self._roster) - set(self._survivors)
        if not isinstance(pairs, dict) or set(pairs) != dropped:
            raise AggregationError("a reveal carries a pairwise seed for each dropped node, and no other")
        self._reveals[node] = (_bytes(obj["self_seed"], "self_seed", SEED_SIZE),
                               {peer: _bytes(seed, "pair seed", SEED_SIZE) for peer, seed in pairs.items()})
        if len(self._reveals) == len(self._survivors):
            self._finish()
        return []

    def deadline(self) -> list[tuple[str, bytes]]:
        """The current phase's time is up: go on with the nodes that answered, or abandon."""
        if self.phase == Phase.ADVERTISE:
            if len(self._adverts) < self.spec.min_survivors:
                return self._abandon(f"{len(self._adverts)} of {len(self.spec.nodes)} nodes advertised a key")
            return self._roster_out()
        if self.phase == Phase.MASKED:
            return self._survivors_out()
        if self.phase == Phase.CONSISTENCY:
            return self._abandon("a survivor did not sign the survivor list")
        if self.phase == Phase.UNMASK:
            return self._abandon("a survivor left before revealing its masks")
        return []

    # -- output ------------------------------------------------------------------------

    def _to(self, nodes: Iterable[str], message: dict) -> list[tuple[str, bytes]]:
        data = canonical({"round": self.spec.round, **message})
        return [(node, data) for node in nodes]

    def _roster_out(self) -> list[tuple[str, bytes]]:
        if len(self._adverts) < self.spec.min_survivors:
            return self._abandon(f"{len(self._adverts)} of {len(self.spec.nodes)} nodes advertised a key")
        self.phase = Phase.MASKED
        adverts = [self._adverts[n] for n in sorted(self._adverts)]
        return self._to(sorted(self._adverts), {"type": "rxfed.agg.roster", "adverts": adverts})

    def _survivors_out(self) -> list[tuple[str, bytes]]:
        if len(self._masked) < self.spec.min_survivors:
            return self._abandon(f"{len(self._masked)} masked inputs, the round needs {self.spec.min_survivors}")
        self._survivors = tuple(sorted(self._masked))
        self.phase = Phase.CONSISTENCY
        return self._to(self._survivors, {"type": "rxfed.agg.survivors", "nodes": list(self._survivors)})

    def _unmask_out(self) -> list[tuple[str, bytes]]:
        self.phase = Phase.UNMASK
        return self._to(self._survivors, {"type": "rxfed.agg.unmask", "nodes": list(self._survivors),
                                          "sigs": dict(self._sigs)})

    def _abandon(self, reason: str) -> list[tuple[str, bytes]]:
        told = sorted(self._adverts)
        self.phase = Phase.ABANDONED
        self.outcome = Outcome(Phase.ABANDONED, survivors=self._survivors, reason=reason)
        self._masked.clear()
        self._reveals.clear()
        return self._to(told, {"type": "rxfed.agg.abandon", "reason": reason})

    def _finish(self) -> None:
        spec = self.spec
        modulus = 1 << spec.bits
        total = [0] * spec.cells
        for node in self._survivors:
            self_seed, pair_seeds = self._reveals[node]
            for i, (y, m) in enumerate(zip(self._masked[node], expand(self_seed, spec.cells, spec.bits))):
                total[i] += y - m
            for peer, seed in pair_seeds.items():
                sign = 1 if node < peer else -1  # the survivor added sign * mask; take it away
                for i, m in enumerate(expand(seed, spec.cells, spec.bits)):
                    total[i] -= sign * m
        dropped = tuple(sorted(set(self._roster) - set(self._survivors)))
        self.phase = Phase.DONE
        self.outcome = Outcome(Phase.DONE, total=tuple(centred((v % modulus for v in total), spec.bits)),
                               survivors=self._survivors, dropped=dropped)
