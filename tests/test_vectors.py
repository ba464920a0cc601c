"""The test vectors in spec/vectors/ match what the code produces and accepts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rxfed.crypto import SigningKeyPair, b64d
from rxfed.errors import RxfedError
from rxfed.protocol.auth import SignedRequest
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.federation import Transaction
from rxfed.protocol.statements import open_statement

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
spec = importlib.util.spec_from_file_location("generate_vectors", VECTORS / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


@pytest.mark.parametrize("name", sorted(generate.VECTORS))
def test_vector_files_are_current(name):
    assert (VECTORS / name).read_text() == generate.render(name), f"run python spec/vectors/generate.py ({name})"


def load(name):
    return json.loads((VECTORS / name).read_text())


def test_canonical_vectors():
    v = load("canonical.json")
    for case in v["good"]:
        assert canonical(loads(case["input"])).decode() == case["canonical"]
    for case in v["bad"]:
        with pytest.raises(RxfedError) as info:
            loads(case["input"])
        assert info.value.code == case["error"]


def test_request_signature_vector_verifies_and_breaks():
    v = load("request-signature.json")
    key = SigningKeyPair.from_seed(b64d(v["seed"]))
    signed = SignedRequest.from_headers(v["headers"])
    args = dict(method=v["method"], target=v["target"], destination=v["destination"], body=v["body"].encode(),
                now=v["created"])
    signed.verify(key.public, **args)
    assert signed.signing_bytes(method=v["method"], target=v["target"], destination=v["destination"],
                                body=v["body"].encode()).decode() == v["signing_string"]
    with pytest.raises(RxfedError):
        signed.verify(key.public, **{**args, "destination": "b.example"})


def test_statement_vector():
    v = load("statement.json")
    key = SigningKeyPair.from_seed(b64d(v["seed"]))
    assert open_statement(v["statement"], "s", v["body"]["type"], key.public) == v["body"]


def test_transaction_vectors():
    v = load("transaction.json")
    txn = Transaction.from_json("txn-0000000000000001", v["good"]["body"])
    assert [e.id for e in txn.events] == v["good"]["event_ids"]
    for case in v["bad"]:
        with pytest.raises(RxfedError) as info:
            Transaction.from_json("txn-0000000000000001", case["body"])
        assert info.value.code == case["error"]


def test_consent_vectors():
    from rxfed.consent import grants as consent_grants
    from rxfed.consent.audit import chain
    from rxfed.crypto import b64e, pseudonym_key

    v = load("consent.json")
    key = pseudonym_key(b64d(v["pseudonym_secret"], length=32), v["pseudonym"]["label"])
    assert b64e(key.seed) == v["pseudonym"]["seed"]
    assert b64e(key.public) == v["pseudonym"]["public_key"]
    assert consent_grants.subject_of(key.public) == v["pseudonym"]["subject"]
    token = consent_grants.Token.from_json(v["token"])
    assert token.subject_key == key.public and token.recipient.only_plugin() == "outcomes"
    assert token.nodes == ("c.example",) and token.v == 2
    # every time all recipients see is a whole day (spec/consent.md §1)
    assert token.issued % 86400 == 0 and token.not_after % 86400 == 86399
    with pytest.raises(RxfedError) as refused:
        consent_grants.Token.from_json(v["widened_token"]["statement"])
    assert refused.value.code == v["widened_token"]["error"] == "bad_statement_signature"
    device = SigningKeyPair.from_seed(b64d(v["grant"]["device_seed"], length=32))
    assert b64e(device.public) == v["grant"]["device_public_key"]
    assert token.matches(consent_grants.Grant.from_json(v["grant"]["statement"], device.public))
    entries = [canonical(e) for e in v["audit"]["entries"]]
    assert [e.decode() for e in entries] == v["audit"]["canonical"]
    assert [b64e(h) for h in chain(entries)] == v["audit"]["hashes"]


def test_delivery_and_sealed_box_vectors():
    """crypto.md §10: a fixed box sealed to a fixed node key opens to the given delivery,
    whose sequence number is the last one plus 1 + the random step as a big-endian uint32."""
    from rxfed.consent import grants as consent_grants
    from rxfed.crypto import DecryptionFailed, b64e, node_box_key, open_as_node

    v = load("consent.json")
    d, box = v["delivery"], v["sealed_box"]
    assert consent_grants.next_seq(d["last_seq"], b64d(d["random"], length=4)) == d["seq"]
    assert canonical(d["statement"]).decode() == d["canonical"] == box["plaintext"]
    node = SigningKeyPair.from_seed(b64d(box["node_seed"], length=32))
    assert b64e(node.public) == box["node_public_key"]
    assert b64e(node_box_key(node.public)) == box["node_x25519_public_key"]
    sealed = b64d(box["sealed"])
    assert len(sealed) == len(box["plaintext"].encode()) + 48  # ephemeral key (32) and MAC (16)
    assert open_as_node(node, sealed) == box["plaintext"].encode()
    token = consent_grants.Token.from_json(v["token"])
    assert consent_grants.open_delivery(loads(box["plaintext"]), token, "2" * 32) == (d["seq"], d["statement"]["body"]["signals"])
    with pytest.raises(DecryptionFailed):
        open_as_node(SigningKeyPair.from_seed(bytes(32)), sealed)


def test_acknowledgement_vector():
    from rxfed.consent import grants as consent_grants
    from rxfed.crypto import b64e, sha256

    v = load("consent.json")["ack"]
    node = SigningKeyPair.from_seed(b64d(v["node_seed"], length=32))
    assert b64e(sha256(canonical(v["revocation"]))) == v["revocation_sha256"] == v["statement"]["body"]["revocation"]
    ack = consent_grants.Acknowledgement.check(v["statement"], token="0" * 32, node="c.example", revocation=v["revocation"],
                                   node_keys=[node.public])
    assert ack.unconfirmed == ("outcomes",)
    with pytest.raises(RxfedError) as refused:  # another revocation, or another node's key
        consent_grants.Acknowledgement.check(v["statement"], token="0" * 32, node="c.example",
                                 revocation={**v["revocation"], "sig": v["statement"]["sig"]}, node_keys=[node.public])
    assert refused.value.code == "bad_ack"
    with pytest.raises(RxfedError):
        consent_grants.Acknowledgement.check(v["statement"], token="0" * 32, node="c.example", revocation=v["revocation"],
                                 node_keys=[SigningKeyPair.from_seed(bytes(32)).public])


def test_vault_vectors():
    """Identity chain, sealed record, envelope and recovery bundle (spec/crypto.md 1-3, 6)."""
    from rxfed.client.identity import EpochSecrets, open_secrets
    from rxfed.crypto import BoxKeyPair
    from rxfed.crypto.records import VaultKeyring, open_record, secretbox_open
    from rxfed.crypto.recovery import RecoveryCode
    from rxfed.protocol import vault as pv

    v = load("vault.json")
    root = SigningKeyPair.from_seed(b64d(v["root_seed"]))
    chain = pv.IdentityChain.verify(root.public, v["identity_chain"])
    assert chain.current.epoch == 2 and chain.statements[0].patient == v["patient"]
    with pytest.raises(RxfedError):  # epoch 2 alone is not a chain
        pv.IdentityChain.verify(root.public, v["identity_chain"][1:])
    cert = pv.DeviceCert.from_json(v["device_cert"]["cert"], "cert", chain)
    cert.check_enroller(chain, {})
    assert cert.device == pv.device_id(SigningKeyPair.from_seed(b64d(v["device_cert"]["sign_seed"])).public)
    forged = {**v["device_cert"]["cert"], "body": {**v["device_cert"]["cert"]["body"], "enrolled_by": "recovery"}}
    with pytest.raises(RxfedError):
        pv.DeviceCert.from_json(forged, "cert", chain)
    secrets = EpochSecrets.from_bytes(v["secrets"]["bytes"].encode())
    env = v["envelope"]
    opened = open_secrets(chain.statements[0], env["holder"], BoxKeyPair.from_secret(b64d(env["box_secret"])),
                          b64d(env["sealed"]))
    assert opened == secrets
    rec = v["record"]
    sealed = b64d(rec["sealed"])
    assert open_record(VaultKeyring({1: b64d(rec["vault_key"])}), rec["ad"].encode(), sealed) == rec["plaintext"].encode()
    assert len(sealed) == 2 + 4 + 72 + 24 + rec["padded_size"] + 16
    r = v["recovery"]
    code = RecoveryCode.parse(r["code"])
    assert b64d(r["bundle_key"]) == code.bundle_key() and b64d(r["auth_public"]) == code.auth_key().public
    assert b64d(r["box_public"]) == BoxKeyPair.from_secret(code.box_secret()).public
    assert secretbox_open(code.bundle_key(), r["bundle_ad"].encode(), b64d(r["root_bundle"])) == root.seed


def test_keyfile_vector():
    from rxfed.crypto import WrongPassphrase, b64e
    from rxfed.crypto.keyfile import KdfCost, keyfile_ad, keyfile_key, open_keyfile, seal_keyfile

    v = load("keyfile.json")
    cost = KdfCost(v["opslimit"], v["memlimit"])
    assert cost == KdfCost.named("min")
    salt = b64d(v["salt"], length=16)
    assert b64e(keyfile_key(v["passphrase"], salt, cost)) == v["key"]
    doc = json.loads(v["file"])
    assert keyfile_ad({"format": doc["format"], "kdf": doc["kdf"]}).decode() == v["ad"]
    assert b64d(doc["sealed"])[:24] == b64d(v["nonce"])  # nonce || ciphertext || tag
    assert open_keyfile(v["file"].encode(), v["passphrase"]) == v["plaintext"].encode()
    assert seal_keyfile(v["plaintext"].encode(), v["passphrase"], cost, salt=salt,
                        nonce=b64d(v["nonce"])).decode() == v["file"]
    for data, passphrase in ((v["tampered_file"], v["passphrase"]), (v["file"], v["passphrase"] + "!")):
        with pytest.raises(WrongPassphrase):
            open_keyfile(data.encode(), passphrase)


def test_node_key_rotation_vectors():
    from rxfed.crypto import b64e
    from rxfed.protocol.federation import KeyRotation, NodeKey, trusted_keys

    v = load("node-key-rotation.json")
    for name, seed in v["seeds"].items():
        assert b64e(SigningKeyPair.from_seed(b64d(seed)).public) == v["public_keys"][name]
    r12 = v["statements"]["r12"]
    assert "rxfed-statement|" + canonical(r12["body"]).decode() == v["signed_bytes"]["r12"]
    k1 = SigningKeyPair.from_seed(b64d(v["seeds"]["k1"]))
    assert open_statement(r12, "r12", "rxfed.node-key-rotation", k1.public) == r12["body"]
    with pytest.raises(RxfedError) as refused:
        KeyRotation.from_statement(v["statements"]["forged"], "forged")
    assert refused.value.code == "bad_statement_signature"
    for case in v["cases"]:
        anchors = tuple(NodeKey.from_json(k, "anchor") for k in case["anchors"])
        rotations = []
        for name in case["rotations"]:
            try:
                rotations.append(KeyRotation.from_statement(v["statements"][name], name))
            except RxfedError:
                pass
        assert [k.to_json() for k in trusted_keys(anchors, tuple(rotations))] == case["trusted"], case["case"]


def test_community_vectors():
    """spec/crypto.md §8, checked from the vector's values with the code's primitives."""
    from rxfed.crypto import BoxKeyPair, b64e, sha256
    from rxfed.crypto.groups import SenderKey, check_commitment, open_message, open_sender_key
    from rxfed.crypto.records import bucket_size
    from rxfed.protocol import community as pc
    from rxfed.protocol.statements import statement_hash

    v = load("community.json")
    host = SigningKeyPair.from_seed(b64d(v["host"]["seed"]))
    admin = SigningKeyPair.from_seed(b64d(v["admin"]["seed"]))
    member = SigningKeyPair.from_seed(b64d(v["member"]["seed"]))
    member_box = BoxKeyPair.from_secret(b64d(v["member"]["box_secret"]))
    assert (b64e(host.public), b64e(admin.public)) == (v["host"]["public_key"], v["admin"]["public_key"])

    # The address certifies the create event; the create event commits to name and condition.
    events = [(e["seq"], e["event"]) for e in v["events"]]
    create = events[0][1]
    assert sha256(v["address"]["hashed"].encode())[:16].hex() == v["address"]["id"]
    assert pc.community_id(v["host"]["node"], create["body"]) == v["address"]["id"]
    assert create["body"]["community"] == v["address"]["address"]
    about = pc.About(v["about"]["name"], v["about"]["condition"], b64d(v["about"]["key"]))
    assert b64e(about.commitment()) == v["about"]["commitment"] == create["body"]["about"]
    about.check(pc.parse_event(create))

    # Sender-key distribution: each recipient opens its sealed copy, signed by the sender.
    key = SenderKey(v["sender_key"]["epoch"], b64d(v["sender_key"]["key"]))
    assert b64e(key.to_bytes()) == v["sender_key"]["bytes"]
    for r in v["sender_key"]["recipients"]:
        box = BoxKeyPair.from_secret(b64d(r["box_secret"]))
        assert box.open_sealed(b64d(r["sealed"])) == b64d(r["inner"])
        context = r["context"].encode()
        assert context.startswith(b"rxfed-sender-key|")
        opened = open_sender_key(member.public, box, context[len(b"rxfed-sender-key|"):], b64d(r["sealed"]))
        assert opened == key

    # The message: padded, sealed under the sender key with its associated data, franked.
    m = v["message"]
    ad = m["ad"].encode()[len(b"rxfed-msg|"):]
    ciphertext = b64d(m["ciphertext"])
    assert ciphertext[:24] == b64d(m["nonce"])
    assert len(ciphertext) == bucket_size(len(m["plaintext"].encode())) + 24 + 16
    assert open_message(key, ad, ciphertext) == m["plaintext"].encode()
    assert check_commitment(b64d(m["franking_key"]), m["franked"].encode(), b64d(m["commitment"]))

    # Host stamps, the history chain, and what the member reads.
    pin = pc.HistoryPin()
    for e in v["events"]:
        stamp = pc.verify_stamp([host.public], e["stamp"], e["event"])
        assert stamp.seq == e["seq"] and stamp.event == statement_hash(e["event"])
        pin = pin.extend([statement_hash(x["event"]) for x in v["events"][:e["seq"]]])
        assert b64e(pin.head) == e["head"]
    reading = pc.read_history(events, member, member_box)
    assert [(x.text, x.sent) for x in reading.messages] == [(m["text"], m["sent"])]
    address = pc.CommunityAddress.parse(v["address"]["address"])
    assert pc.open_read_proof(v["read_proof"], address, node="a.example",
                              now=v["read_proof"]["body"]["time"]) == member.public


def test_restore_statement_vector():
    from rxfed.protocol.restore import RestoreStatement

    v = load("restore.json")
    key = SigningKeyPair.from_seed(b64d(v["seed"]))
    statement = RestoreStatement.from_json(v["statement"], "restore", [key.public])
    assert (statement.node, statement.restore_id, statement.backup_taken, statement.restored) == (
        "a.example", "0123456789abcdef0123456789abcdef", 1764000000 - 3600, 1764000000)
    assert ("rxfed-statement|" + canonical(v["statement"]["body"]).decode()) == v["signed_bytes"]
    with pytest.raises(RxfedError):  # another key, or a changed time, does not verify
        RestoreStatement.from_json(v["statement"], "restore", [SigningKeyPair.from_seed(bytes(32)).public])
    changed = {**v["statement"], "body": {**v["statement"]["body"], "restored": 1764000001}}
    with pytest.raises(RxfedError):
        RestoreStatement.from_json(changed, "restore", [key.public])


def test_credential_vectors():
    """A second implementation verifies these with the issuer's key alone (spec/crypto.md §12)."""
    from rxfed.crypto.multikey import ed25519_multikey
    from rxfed.protocol import credentials as vc
    from rxfed.protocol.data_integrity import BadProof, CredentialRevoked, IssuerKeys
    from rxfed.protocol.federation import NodeKey

    v = load("credential.json")
    key = SigningKeyPair.from_seed(bytes.fromhex(v["issuer"]["seed"]))
    assert v["issuer"]["verification_method"] == f"{v['issuer']['did']}#{ed25519_multikey(key.public)}"
    keys = {v["issuer"]["did"]: IssuerKeys(v["issuer"]["did"], (NodeKey(key.public, 0, None),))}
    url = v["credentials"]["badge"]["credentialStatus"]["statusListCredential"]
    for profile, document in v["credentials"].items():
        got = vc.verify(document, issuers=keys, now=v["verify_at"], status_lists={url: v["status_lists"]["unrevoked"]})
        assert got.clinician_key == b64d(v["clinician_public_key"], length=32), profile
        with pytest.raises(CredentialRevoked):
            vc.verify(document, issuers=keys, now=v["verify_at"], status_lists={url: v["status_lists"]["revoked"]})
        tampered = json.loads(json.dumps(document))
        tampered["credentialSubject"]["role"] = "nurse"
        with pytest.raises(BadProof):
            vc.verify(tampered, issuers=keys, now=v["verify_at"], status_lists={url: v["status_lists"]["unrevoked"]})


def test_moderation_vectors():
    """spec/vectors/moderation.json: the report opens for each moderator as its payload,
    the forged one is refused, the hide hides, and the forwarded report verifies."""
    from rxfed.crypto import BoxKeyPair
    from rxfed.crypto.records import unpad
    from rxfed.crypto import open_signed
    from rxfed.protocol import community as pc

    v, base = load("moderation.json"), load("community.json")
    events = [(e["seq"], e["event"]) for e in v["events"]]
    boxes = {base["admin"]["public_key"]: (SigningKeyPair.from_seed(b64d(base["admin"]["seed"])),
                                           BoxKeyPair.from_secret(b64d(base["admin"]["box_secret"]))),
             base["member"]["public_key"]: (SigningKeyPair.from_seed(b64d(base["member"]["seed"])),
                                            BoxKeyPair.from_secret(b64d(base["member"]["box_secret"])))}
    assert list(boxes) == v["expected"]["moderators"]
    report = v["events"][v["report"]["seq"] - 1]["event"]["body"]
    for key, (member, box) in boxes.items():
        context = v["report"]["contexts"][key].encode()
        sealed = b64d(report["reports"][key])
        assert unpad(open_signed(b64d(v["reporter"]["public_key"]), box, context, sealed)) == v["report"]["payload"].encode()
        reading = pc.read_history(events, member, box)
        assert sorted(reading.hidden) == v["expected"]["hidden"]
        assert [[r.report_seq, r.seq, r.category, r.text, r.status] for r in reading.reports] == v["expected"]["reports"]
    facts = pc.open_forward(v["forward"], [b64d(base["host"]["public_key"])])
    assert facts.text == v["expected"]["reports"][0][3] and facts.category == "miracle_cure"
