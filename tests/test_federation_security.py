"""Attacks on federation peer keys: forged key documents, forged rotations, changed keys.

A host that can serve a peer's URL (DNS, a proxy, a stolen domain) but holds none of the
peer's private keys must not get its requests accepted as the peer's, nor get signals
sealed to its key: a pinned or learnt key trusts only itself and keys it signed.
"""

from __future__ import annotations

import time

import pytest
from aiohttp import web

from helpers import raw_request, record_notes
from rxfed.crypto import SigningKeyPair, b64e, fingerprint
from rxfed.node.config import load_node_keys, rotate_node_key
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import WireEvent
from rxfed.protocol.statements import sign_statement
from rxfed.testing import NodeHarness, free_port

ROTATION = "rxfed.node-key-rotation"


async def send_as(key: SigningKeyPair, origin: str, b: NodeHarness, n: int) -> tuple[int, dict]:
    """A transaction with one test.note event, signed by ``key`` in ``origin``'s name."""
    body = canonical({"origin": origin, "destination": b.node_id, "seq": n,
                      "events": [WireEvent("test.note", {"n": n}).to_json()]})
    path = f"/federation/v1/transactions/txn-{n:020d}"
    headers = sign_request(key, method="PUT", target=path, destination=b.node_id, origin=origin, body=body,
                           now=int(time.time()))
    return await raw_request(b.url, "PUT", path, body, {**headers, "Content-Type": "application/json"})


def key_entry(public: bytes, valid_from: int, valid_until: int | None = None) -> dict:
    return {"key_id": "ed25519:" + b64e(public)[:16], "alg": "ed25519", "public_key": b64e(public),
            "fingerprint": fingerprint(public), "valid_from": valid_from, "valid_until": valid_until}


def rotation(signer: SigningKeyPair, node: str, old: bytes, new: bytes, valid_from: int, old_valid_until: int) -> dict:
    return sign_statement(signer, {"type": ROTATION, "node": node, "old": b64e(old), "new": b64e(new),
                                   "valid_from": valid_from, "old_valid_until": old_valid_until})


class ForgedHost:
    """A web server that answers /.well-known/rxfed with whatever document it is given: a
    host serving a peer's URL without holding the peer's keys."""

    def __init__(self):
        self.document: dict = {}
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForgedHost:
        async def well_known(request):
            return web.Response(body=canonical(self.document), content_type="application/json")

        app = web.Application()
        app.router.add_get("/.well-known/rxfed", well_known)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def forged():
    host = await ForgedHost().start()
    yield host
    await host.stop()


def forged_document(node_id: str, keys: list[dict], rotations: list[dict] = ()) -> dict:
    return {"node_id": node_id, "name": "a", "protocol_versions": ["1"], "keys": keys, "rotations": list(rotations)}


async def point_at(b: NodeHarness, peer: str, url: str, *, pin: str | None = None) -> None:
    """b's operator (or DNS) now sends b to ``url`` for ``peer``."""
    await b.app_store().set_peer_policy(peer, "allowed", url=url, fingerprint=pin)
    await b.state.federation.policy_changed()


async def test_pinned_peer_forged_document_listing_the_pinned_key_is_not_enough(pair, forged):
    """The forged document lists a's real (pinned) key beside the attacker's own; requests
    signed by the attacker's key are refused and nothing is sealed to it."""
    a, b = pair
    seen = record_notes(b)
    real = a.state.signing_key()
    attacker = SigningKeyPair.generate()
    now = int(time.time())
    forged.document = forged_document(a.node_id, [key_entry(real.public, now - 60), key_entry(attacker.public, now - 60)])
    await point_at(b, a.node_id, forged.url, pin=fingerprint(real.public))
    status, doc = await send_as(attacker, a.node_id, b, 1)
    assert status == 401 and doc["error"] == "untrusted_key", doc
    assert [k.public_key for k in (await b.state.federation.document(a.node_id)).keys] == [real.public]
    status, doc = await send_as(real, a.node_id, b, 2)  # the pinned key itself still works
    assert status == 200, doc
    assert seen == [2]


async def test_rotation_signed_by_a_wrong_key_is_not_followed(pair, forged):
    """A rotation statement from the pinned key to the attacker's key, signed by the
    attacker's key (or by any key but the pinned one), introduces nothing."""
    a, b = pair
    seen = record_notes(b)
    real = a.state.signing_key()
    attacker, other = SigningKeyPair.generate(), SigningKeyPair.generate()
    now = int(time.time())
    forged.document = forged_document(
        a.node_id, [key_entry(real.public, now - 60, now + 60), key_entry(attacker.public, now - 30)],
        [rotation(attacker, a.node_id, real.public, attacker.public, now - 30, now + 60),
         rotation(other, a.node_id, real.public, attacker.public, now - 30, now + 60)])
    await point_at(b, a.node_id, forged.url, pin=fingerprint(real.public))
    status, doc = await send_as(attacker, a.node_id, b, 1)
    assert status == 401 and doc["error"] == "untrusted_key", doc
    assert seen == []


async def test_rotation_for_another_node_is_not_followed(pair, forged):
    """The pinned key really signed a rotation, but for another node id: not ours to follow."""
    a, b = pair
    seen = record_notes(b)
    real = a.state.signing_key()
    successor = SigningKeyPair.generate()
    now = int(time.time())
    forged.document = forged_document(
        a.node_id, [key_entry(real.public, now - 60, now + 60), key_entry(successor.public, now - 30)],
        [rotation(real, "elsewhere.example", real.public, successor.public, now - 30, now + 60)])
    await point_at(b, a.node_id, forged.url, pin=fingerprint(real.public))
    status, doc = await send_as(successor, a.node_id, b, 1)
    assert status == 401 and doc["error"] == "untrusted_key", doc
    assert seen == []


async def test_legitimate_rotations_are_followed_from_the_pin(pair):
    """b pinned a's first key; a rotates twice; b follows the chain of signed rotations to
    a's newest key, and the retired key ends where its rotation statement says."""
    a, b = pair
    seen = record_notes(b)
    first = a.state.signing_key()
    await point_at(b, a.node_id, a.url, pin=fingerprint(first.public))
    rotate_node_key(a.data_dir, overlap=3600)
    rotate_node_key(a.data_dir, overlap=0)
    a.state.keys = load_node_keys(a.data_dir)
    newest = a.state.signing_key()
    assert newest.public != first.public
    status, doc = await send_as(newest, a.node_id, b, 1)
    assert status == 200, doc
    keys = {k.public_key: k for k in (await b.state.federation.document(a.node_id)).keys}
    assert set(keys) == {k.key.public for k in a.state.keys}
    assert keys[first.public].valid_until == a.state.keys[0].valid_until
    assert seen == [1]


async def test_a_learnt_key_is_kept_and_a_changed_key_refused_until_accepted(pair, forged):
    """Trust on first use, kept: b learnt a's key on first contact (no pin). Later a host
    serving a's URL publishes a completely different key with no rotation from the learnt
    one: refused (``untrusted_key``) until the operator accepts the change."""
    a, b = pair
    seen = record_notes(b)
    real = a.state.signing_key()
    status, _ = await send_as(real, a.node_id, b, 1)
    assert status == 200
    replacement = SigningKeyPair.generate()
    forged.document = forged_document(a.node_id, [key_entry(replacement.public, int(time.time()) - 60)])
    await point_at(b, a.node_id, forged.url)
    status, doc = await send_as(replacement, a.node_id, b, 2)
    assert status == 401 and doc["error"] == "untrusted_key", doc
    assert [k.public_key for k in (await b.state.federation.document(a.node_id)).keys] == [real.public]
    assert (await b.app_store().peer(a.node_id)).trusted_keys is not None
    # the operator checked with a's operator and accepts the new key (as `rxfed node peers
    # DATA_DIR accept-key PEER` does while the node runs)
    await b.app_store().forget_peer_keys(a.node_id)
    await b.state.federation.refresh_policies()
    status, doc = await send_as(replacement, a.node_id, b, 3)
    assert status == 200, doc
    assert seen == [1, 3]


async def test_learnt_keys_survive_a_restart(pair, forged):
    a, b = pair
    real = a.state.signing_key()
    assert (await send_as(real, a.node_id, b, 1))[0] == 200
    await b.stop()
    await b.start()
    record_notes(b)
    replacement = SigningKeyPair.generate()
    forged.document = forged_document(a.node_id, [key_entry(replacement.public, int(time.time()) - 60)])
    await point_at(b, a.node_id, forged.url)
    status, doc = await send_as(replacement, a.node_id, b, 2)
    assert status == 401 and doc["error"] == "untrusted_key", doc


async def test_repinning_replaces_learnt_keys(pair):
    """An operator pin that differs from what was learnt wins: the learnt keys are dropped."""
    a, b = pair
    real = a.state.signing_key()
    assert (await send_as(real, a.node_id, b, 1))[0] == 200
    other = SigningKeyPair.generate()
    await point_at(b, a.node_id, a.url, pin=fingerprint(other.public))
    assert (await b.app_store().peer(a.node_id)).trusted_keys is None
    status, doc = await send_as(real, a.node_id, b, 2)
    assert status == 401 and doc["error"] == "pin_mismatch", doc


async def test_a_leaked_retired_key_cannot_introduce_another_successor(pair, forged):
    """b followed a's real rotation. Later a's retired key leaks; the thief, serving a's URL,
    publishes only a backdated rotation from it to a key of its own: not followed, since b
    remembers which key the retired one introduced."""
    a, b = pair
    first = load_node_keys(a.data_dir)[0]
    await point_at(b, a.node_id, a.url, pin=fingerprint(first.key.public))
    rotate_node_key(a.data_dir, overlap=3600)
    a.state.keys = load_node_keys(a.data_dir)
    assert (await send_as(a.state.signing_key(), a.node_id, b, 1))[0] == 200
    thief = SigningKeyPair.generate()
    ended = a.state.keys[0].valid_until
    forged.document = forged_document(
        a.node_id, [key_entry(first.key.public, first.valid_from, ended), key_entry(thief.public, first.valid_from)],
        [rotation(first.key, a.node_id, first.key.public, thief.public, first.valid_from, ended)])
    await point_at(b, a.node_id, forged.url)
    status, doc = await send_as(thief, a.node_id, b, 2)
    assert status == 401 and doc["error"] == "untrusted_key", doc
