"""Write the test vectors in this folder from fixed keys, nonces and times.

    python spec/vectors/generate.py          # rewrite the vector files
    tests/test_vectors.py                    # checks the files against the code

Every value is deterministic (Ed25519 signatures are), so a change to any byte of the
protocol shows up as a diff of these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from rxfed.crypto import SigningKeyPair, b64e  # noqa: E402
from rxfed.errors import RxfedError  # noqa: E402
from rxfed.protocol.auth import sign_request, signing_bytes  # noqa: E402
from rxfed.protocol.canonical import canonical, loads  # noqa: E402
from rxfed.protocol.federation import Transaction  # noqa: E402
from rxfed.protocol.statements import sign_statement  # noqa: E402

SEED = bytes(range(1, 33))
NONCE = bytes([0x02] * 16)
CREATED = 1764000000

CANONICAL_GOOD = [
    '{"b":2,"a":1}',
    '{"z":[3,2,1],"a":{"y":null,"x":true}}',
    '{"\\u20ac":1,"\\ud83d\\ude00":2,"\\ufb01":3,"a":0}',
    '"line\\nbreak\\ttab\\u0001 quote\\" backslash\\\\ slash/ \\u2028"',
    '[-9007199254740991,0,9007199254740991]',
    '{"nested":{"deeper":{"deepest":[{},[]]}}}',
]
CANONICAL_BAD = [
    ('{"a":1,"a":2}', "bad_json"),
    ("1.5", "bad_json"),
    ("1e3", "bad_json"),
    ("NaN", "bad_json"),
    ("9007199254740992", "bad_json"),
    ('"\\ud800"', "bad_json"),
    ("{", "bad_json"),
]


def canonical_vectors() -> dict:
    good = [{"input": text, "canonical": canonical(loads(text)).decode()} for text in CANONICAL_GOOD]
    bad = []
    for text, code in CANONICAL_BAD:
        try:
            loads(text)
        except RxfedError as exc:
            assert exc.code == code
            bad.append({"input": text, "error": exc.code})
        else:  # pragma: no cover
            raise AssertionError(f"{text} parsed")
    return {"good": good, "bad": bad}


def request_vectors() -> dict:
    key = SigningKeyPair.from_seed(SEED)
    body = canonical({"origin": "a.example", "destination": "c.example", "seq": 1, "events": []})
    args = dict(method="PUT", target="/federation/v1/transactions/txn-0000000000000001", destination="c.example",
                body=body, now=CREATED, nonce=NONCE, origin="a.example")
    headers = sign_request(key, **args)
    string = signing_bytes(method="PUT", target=args["target"], destination="c.example", origin="a.example",
                           key=key.public, created=CREATED, nonce=NONCE, body=body)
    return {"seed": b64e(SEED), "public_key": b64e(key.public), "method": "PUT", "target": args["target"],
            "destination": "c.example", "origin": "a.example", "created": CREATED, "nonce": b64e(NONCE),
            "body": body.decode(), "signing_string": string.decode(), "headers": headers}


def statement_vectors() -> dict:
    key = SigningKeyPair.from_seed(SEED)
    body = {"type": "rxfed.community.leave", "community": "0" * 32 + "@c.example",
            "member": b64e(key.public), "time": CREATED}
    return {"seed": b64e(SEED), "body": body, "statement": sign_statement(key, body),
            "signed_bytes": "rxfed-statement|" + canonical(body).decode()}


def transaction_vectors() -> dict:
    good = {"origin": "a.example", "destination": "c.example", "seq": 7,
            "events": [{"kind": "community.submit", "content": {"community": "0" * 32 + "@c.example", "event": {}}}]}
    bad = [
        ({"origin": "a.example", "destination": "c.example", "seq": 0, "events": []}, "bad_request"),
        ({"origin": "a.example", "destination": "c.example", "seq": 1, "events": [], "extra": 1}, "unknown_field"),
        ({"origin": "a.example", "destination": "c.example", "seq": 1}, "missing_field"),
        ({"origin": "a.example", "destination": "c.example", "seq": 1, "events": [{"kind": "Bad Kind", "content": {}}]},
         "bad_request"),
        ({"origin": "a.example", "destination": "c.example", "seq": 1, "events": [{"kind": "x", "content": []}]},
         "bad_request"),
    ]
    out_bad = []
    for obj, code in bad:
        try:
            Transaction.from_json("txn-0000000000000001", obj)
        except RxfedError as exc:
            assert exc.code == code, (obj, exc.code)
            out_bad.append({"body": obj, "error": exc.code})
        else:  # pragma: no cover
            raise AssertionError(obj)
    txn = Transaction.from_json("txn-0000000000000001", good)
    return {"good": {"body": good, "event_ids": [e.id for e in txn.events]}, "bad": out_bad}


#: The node of the consent vectors (c.example) and the patient device that signs the grant.
NODE_SEED = bytes(range(33, 65))
DEVICE_SEED = bytes(range(65, 97))


def consent_vectors() -> dict:
    from rxfed.consent import grants as consent_grants
    from rxfed.consent.audit import chain
    from rxfed.crypto import BoxKeyPair, node_box_key, open_as_node, pseudonym_key, seal_to, sha256

    # Whole days, as every recipient of a grant sees them (spec/consent.md §1).
    issued, not_after = consent_grants.day(CREATED), consent_grants.end_of_day(CREATED + 86400)
    label = consent_grants.pseudonym_label("c.example", "research", "outcomes")
    key = pseudonym_key(SEED, label)
    body = {"type": consent_grants.TOKEN, "v": consent_grants.VERSION, "id": "0" * 32, "node": "c.example", "home": "a.example",
            "subject": b64e(key.public), "kind": "diagnosis.category", "purpose": "research",
            "recipient": "plugin:c.example/outcomes", "nodes": ["c.example"], "issued": issued,
            "not_after": not_after}
    token = sign_statement(key, body)
    parsed = consent_grants.Token.from_json(token)
    widened = {"body": {**body, "kind": "treatment.outcome"}, "sig": token["sig"]}
    try:
        consent_grants.Token.from_json(widened)
    except RxfedError as exc:
        widened_error = exc.code
    else:  # pragma: no cover
        raise AssertionError("a widened token parsed")
    device = SigningKeyPair.from_seed(DEVICE_SEED)
    grant_body = {"type": consent_grants.GRANT, "v": consent_grants.VERSION, "id": "1" * 32, "patient": "3" * 32, "device": "4" * 32,
                  "kind": "diagnosis.category", "purpose": "research", "recipient": "plugin:c.example/outcomes",
                  "issued": CREATED, "not_after": not_after, "nodes": ["c.example"], "tokens": ["0" * 32]}
    grant = sign_statement(device, grant_body)
    assert parsed.matches(consent_grants.Grant.from_json(grant, device.public))
    step = bytes([0, 0, 1, 0])
    seq = consent_grants.next_seq(0, step)
    signals = [{"kind": "diagnosis.category", "body": {"system": "icd10", "category": "E11", "source": "icd10"}}]
    delivery = consent_grants.sign_delivery(key, token="0" * 32, node="c.example", delivery="2" * 32, seq=seq, signals=signals)
    node = SigningKeyPair.from_seed(NODE_SEED)
    plaintext = canonical(delivery)
    # seal_to_node is seal_to the node's X25519 key; a fixed ephemeral key makes it a vector
    sealed = seal_to(node_box_key(node.public), plaintext, ephemeral=BoxKeyPair.from_secret(bytes([0x27]) * 32))
    assert open_as_node(node, sealed) == plaintext
    revocation = consent_grants.revoke_token(key, "0" * 32, CREATED + 3600)
    ack = consent_grants.Acknowledgement.create(node, token="0" * 32, node="c.example", revocation=revocation,
                                    unconfirmed=["outcomes"], now=CREATED + 3660)
    entries = [{"event": "granted", "grant": "1" * 32, "seq": 1, "time": CREATED},
               {"event": "revoked", "grant": "1" * 32, "seq": 2, "time": CREATED + 60}]
    return {
        "pseudonym_secret": b64e(SEED),
        "pseudonym": {"label": label, "seed": b64e(key.seed), "public_key": b64e(key.public),
                      "subject": consent_grants.subject_of(key.public)},
        "token": token,
        "widened_token": {"statement": widened, "error": widened_error},
        "grant": {"device_seed": b64e(DEVICE_SEED), "device_public_key": b64e(device.public), "statement": grant},
        "delivery": {"last_seq": 0, "random": b64e(step), "seq": seq, "statement": delivery,
                     "canonical": plaintext.decode()},
        "sealed_box": {"node_seed": b64e(NODE_SEED), "node_public_key": b64e(node.public),
                       "node_x25519_public_key": b64e(node_box_key(node.public)),
                       "plaintext": plaintext.decode(), "sealed": b64e(sealed)},
        "ack": {"node_seed": b64e(NODE_SEED), "revocation": revocation,
                "revocation_sha256": b64e(sha256(canonical(revocation))), "statement": ack.signed},
        "audit": {"entries": entries, "canonical": [canonical(e).decode() for e in entries],
                  "hashes": [b64e(h) for h in chain(canonical(e) for e in entries)]},
    }


def _fixed_random(label: bytes):
    """Deterministic bytes for vectors only: SHA-256 in counter mode over a label."""
    import hashlib
    import itertools

    counter = itertools.count()

    def draw(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + next(counter).to_bytes(4, "big")).digest()
        return out[:n]

    return draw


def vault_vectors() -> dict:
    """spec/crypto.md sections 1 (identity chain), 2 (sealed records), 3 (envelopes) and 6
    (recovery codes and bundles)."""
    from rxfed.client.identity import EpochSecrets, open_secrets, seal_secrets
    from rxfed.crypto import BoxKeyPair
    from rxfed.crypto.records import VaultKeyring, open_record, seal_record, secretbox_seal
    from rxfed.crypto.recovery import RecoveryCode
    from rxfed.protocol import vault as pv

    root = SigningKeyPair.from_seed(SEED)
    patient = pv.patient_id(root.public)
    code = RecoveryCode(bytes(range(100, 120)))
    box = BoxKeyPair.from_secret(code.box_secret())
    secrets = EpochSecrets(1, SigningKeyPair.from_seed(bytes([7]) * 32), VaultKeyring({1: bytes([9]) * 32}),
                           VaultKeyring({1: bytes([11]) * 32}))
    identity = pv.IdentityStatement.issue(root, patient=patient, epoch=1, previous=None, master_key=root.public,
                                          signing_key=secrets.signing.public, recovery_auth=code.auth_key().public,
                                          recovery_box=box.public, now=CREATED)
    master2 = SigningKeyPair.from_seed(bytes([13]) * 32)
    identity2 = identity.next(root, signing_key=SigningKeyPair.from_seed(bytes([17]) * 32).public, now=CREATED + 60,
                              master_key=master2.public)
    pv.IdentityChain.verify(root.public, [identity.signed, identity2.signed])
    device = BoxKeyPair.from_secret(bytes([21]) * 32)
    device_key = SigningKeyPair.from_seed(bytes([23]) * 32)
    cert = pv.DeviceCert.issue(
        secrets.signing, patient=patient, epoch=1, sign_key=device_key.public, box_key=device.public,
        enrolled_by="registration", enrolled_epoch=1, device_proof=pv.device_key_proof(device_key, device.public),
        enroller_proof=pv.enrolment_proof(root, patient=patient, sign_key=device_key.public, box_key=device.public,
                                          enrolled_by="registration", enrolled_epoch=1), now=CREATED)
    holder = "d" * 32
    ephemeral = BoxKeyPair.from_secret(bytes([25]) * 32)
    sealed_secrets = seal_secrets(secrets, holder, device.public, ephemeral=ephemeral)
    assert open_secrets(identity, holder, device, sealed_secrets) == secrets
    envelope = {"holder": holder, "epoch": 1, "box_secret": b64e(device.secret),
                "ephemeral_secret": b64e(ephemeral.secret), "sealed": b64e(sealed_secrets)}
    ad = canonical({"owner": patient, "record": "0" * 32, "version": 1})
    plaintext = b'{"kind":"journal"}'
    sealed = seal_record(secrets.keyring, ad, plaintext, random=_fixed_random(b"record"))
    assert open_record(secrets.keyring, ad, sealed) == plaintext
    bundle = secretbox_seal(code.bundle_key(), b"rxfed-recovery|" + patient.encode(), root.seed,
                            random=_fixed_random(b"bundle"))
    return {
        "root_seed": b64e(SEED),
        "patient": patient,
        "identity_chain": [identity.signed, identity2.signed],
        "secrets": {"bytes": secrets.to_bytes().decode(), "signing_public": b64e(secrets.signing.public)},
        "device_cert": {"sign_seed": b64e(device_key.seed), "cert": cert.signed,
                        "device_proof_message": b64e(b"rxfed-device-key|" + device_key.public + device.public)},
        "envelope": envelope,
        "record": {"vault_key": b64e(secrets.keyring.keys[1]), "epoch": 1, "ad": ad.decode(),
                   "plaintext": plaintext.decode(), "sealed": b64e(sealed), "padded_size": 256},
        "recovery": {"code": str(code), "bundle_key": b64e(code.bundle_key()), "box_public": b64e(box.public),
                     "auth_public": b64e(code.auth_key().public), "bundle_ad": "rxfed-recovery|" + patient,
                     "root_bundle": b64e(bundle)},
    }


KEYFILE_PASSPHRASE = "correct horse battery staple"
KEYFILE_SALT = bytes(range(16))
KEYFILE_NONCE = bytes([0x03] * 24)


def keyfile_vectors() -> dict:
    """spec/crypto.md §4: a key file sealed at the minimal (test-only) cost."""
    from rxfed.crypto import WrongPassphrase
    from rxfed.crypto.keyfile import KdfCost, keyfile_ad, keyfile_key, open_keyfile, seal_keyfile

    cost = KdfCost.named("min")
    plaintext = canonical({"root": b64e(SEED), "test": "rxfed key file vector"})
    data = seal_keyfile(plaintext, KEYFILE_PASSPHRASE, cost, salt=KEYFILE_SALT, nonce=KEYFILE_NONCE)
    assert open_keyfile(data, KEYFILE_PASSPHRASE) == plaintext
    doc = json.loads(data)
    header = {"format": doc["format"], "kdf": doc["kdf"]}
    # Raising the cost in the header (or any edit of it) makes the file fail to open.
    tampered = data.replace(b'"memlimit": %d' % cost.memlimit, b'"memlimit": %d' % (2 * cost.memlimit))
    for wrong, passphrase in ((tampered, KEYFILE_PASSPHRASE), (data, KEYFILE_PASSPHRASE + "!")):
        try:
            open_keyfile(wrong, passphrase)
        except WrongPassphrase:
            pass
        else:  # pragma: no cover
            raise AssertionError("a wrong key file opened")
    return {
        "passphrase": KEYFILE_PASSPHRASE,
        "salt": b64e(KEYFILE_SALT),
        "opslimit": cost.opslimit,
        "memlimit": cost.memlimit,
        "key": b64e(keyfile_key(KEYFILE_PASSPHRASE, KEYFILE_SALT, cost)),
        "ad": keyfile_ad(header).decode(),
        "nonce": b64e(KEYFILE_NONCE),
        "plaintext": plaintext.decode(),
        "file": data.decode(),
        "tampered_file": tampered.decode(),
    }


def rotation_vectors() -> dict:
    """spec/federation.md §2.2: rotation statements and which keys a receiver trusts."""
    from rxfed.protocol.federation import KeyRotation, NodeKey, trusted_keys

    k1, k2, k3, attacker = (SigningKeyPair.from_seed(bytes([n]) * 32) for n in (0x11, 0x12, 0x13, 0xAA))
    day = 86400
    r12 = KeyRotation("a.example", k1.public, k2.public, CREATED + 30 * day, CREATED + 37 * day).signed_by(k1)
    r23 = KeyRotation("a.example", k2.public, k3.public, CREATED + 60 * day, CREATED + 67 * day).signed_by(k2)
    forged = sign_statement(attacker, KeyRotation("a.example", k1.public, attacker.public, CREATED + 40 * day,
                                                  CREATED + 41 * day).body())
    fork = KeyRotation("a.example", k1.public, attacker.public, CREATED + 31 * day, CREATED + 38 * day).signed_by(k1)
    late = KeyRotation("a.example", k1.public, attacker.public, CREATED + 90 * day, CREATED + 91 * day).signed_by(k1)
    statements = {"r12": r12, "r23": r23, "forged": forged, "fork": fork, "late": late}
    anchor1, anchor2 = NodeKey(k1.public, CREATED, None), NodeKey(k2.public, CREATED + 30 * day, None)
    ended1 = NodeKey(k1.public, CREATED, CREATED + 37 * day)
    followed1 = NodeKey(k1.public, CREATED, CREATED + 37 * day, k2.public)
    cases = [
        ("a chain from the pinned key is followed to the newest key", [anchor1], ["r12", "r23"]),
        ("the statements' order does not matter", [anchor1], ["r23", "r12"]),
        ("a rotation not signed by its old key introduces nothing", [anchor1], ["forged"]),
        ("a key that signed two different rotations is followed by neither", [anchor1], ["r12", "fork", "r23"]),
        ("a rotation made after its old key ended is not followed", [ended1], ["late"]),
        ("a key whose rotation was followed introduces no other, even alone", [followed1, anchor2], ["fork"]),
        ("rotations before the anchor are not needed, and not followed backwards", [anchor2], ["r12", "r23"]),
    ]
    out = []
    for why, anchors, names in cases:
        parsed = []
        for name in names:
            try:
                parsed.append(KeyRotation.from_statement(statements[name], name))
            except RxfedError:
                pass
        out.append({"case": why, "anchors": [k.to_json() for k in anchors], "rotations": names,
                    "trusted": [k.to_json() for k in trusted_keys(tuple(anchors), tuple(parsed))]})
    # Pinning (a node's peers, the web client's `nodes`): a document read with the keys
    # trusted before (none at first contact: the listed keys are the anchors).
    from rxfed.crypto import fingerprint
    from rxfed.protocol.federation import NodeDocument

    def listed(key, valid_from, valid_until=None):
        return {"key_id": b64e(key.public)[:8], "alg": "ed25519", "public_key": b64e(key.public),
                "fingerprint": fingerprint(key.public), "valid_from": valid_from, "valid_until": valid_until}

    other = KeyRotation("b.example", k1.public, k2.public, CREATED + 30 * day, CREATED + 37 * day).signed_by(k1)
    documents = [
        ("first contact trusts every key listed", None, [listed(k1, CREATED), listed(k2, CREATED + day)], []),
        ("a pinned key's signed rotation is followed", [anchor1],
         [listed(k1, CREATED, CREATED + 37 * day), listed(k2, CREATED + 30 * day)], ["r12"]),
        ("the pinned key may leave the document once its rotation is listed", [anchor1],
         [listed(k3, CREATED + 60 * day)], ["r12", "r23"]),
        ("a key changed without a rotation is untrusted", [anchor1], [listed(attacker, CREATED + 40 * day)], []),
        ("a rotation its old key did not sign changes nothing", [anchor1],
         [listed(k1, CREATED), listed(attacker, CREATED + 40 * day)], ["forged"]),
        ("another node's rotation is not followed", [anchor1], [listed(k2, CREATED + 30 * day)], ["other"]),
        ("a fork by the pinned key is followed by neither branch", [anchor1],
         [listed(k2, CREATED + 30 * day), listed(attacker, CREATED + 31 * day)], ["r12", "fork"]),
    ]
    named = {**statements, "other": other}
    pinning = []
    for why, pinned, keys, names in documents:
        doc = {"node_id": "a.example", "protocol_versions": ["1"], "keys": keys,
               "rotations": [named[n] for n in names]}
        parsed = NodeDocument.from_json(doc)
        view = parsed.trusting(tuple(pinned) if pinned is not None else parsed.keys)
        pinning.append({"case": why, "pinned": None if pinned is None else [k.to_json() for k in pinned],
                        "document": doc, "trusted": [k.to_json() for k in view.keys],
                        "untrusted": sorted(b64e(k) for k in view.untrusted)})
    return {
        "pinning": pinning,
        "node": "a.example",
        "seeds": {"k1": b64e(bytes([0x11]) * 32), "k2": b64e(bytes([0x12]) * 32), "k3": b64e(bytes([0x13]) * 32),
                  "attacker": b64e(bytes([0xAA]) * 32)},
        "public_keys": {"k1": b64e(k1.public), "k2": b64e(k2.public), "k3": b64e(k3.public),
                        "attacker": b64e(attacker.public)},
        "statements": statements,
        "signed_bytes": {"r12": "rxfed-statement|" + canonical(r12["body"]).decode()},
        "cases": out,
    }


def community_vectors() -> dict:
    """spec/crypto.md §8: a community's address, metadata commitment, sender-key
    distribution, a sealed and franked message, host stamps, the history chain and a read
    proof, all from fixed keys, nonces and times."""
    from rxfed.crypto import BoxKeyPair
    from rxfed.crypto.groups import SenderKey
    from rxfed.protocol import community as pc
    from rxfed.protocol.statements import statement_hash

    admin, admin_box = SigningKeyPair.from_seed(bytes([0x11] * 32)), BoxKeyPair.from_secret(bytes([0x12] * 32))
    member, member_box = SigningKeyPair.from_seed(bytes([0x21] * 32)), BoxKeyPair.from_secret(bytes([0x22] * 32))
    host = SigningKeyPair.from_seed(bytes([0x31] * 32))
    about = pc.About("Epilepsy support", "G40", bytes([0x41] * 32))
    create = pc.make_create(admin, admin_box.public, "c.example", about=about, approval=True, node="c.example",
                            now=CREATED)
    address = pc.parse_event(create).community
    events = [create, pc.make_join(member, member_box.public, address, "a.example", CREATED + 60),
              pc.make_approve(admin, address, member.public, CREATED + 120)]
    state = pc.CommunityState.from_events(list(enumerate(events, 1)))
    sender_key = SenderKey(1, bytes([0x51] * 32))
    ephemerals = [BoxKeyPair.from_secret(bytes([0x61 + i] * 32)) for i in range(len(state.joined()))]
    events.append(pc.make_sender_key(member, state, sender_key, ephemerals=ephemerals))
    text = "Has anyone tried lamotrigine?"
    franking_key, nonce = bytes([0x71] * 32), bytes([0x81] * 24)
    message, _ = pc.make_message(member, sender_key, address, text, CREATED + 180, franking_key=franking_key,
                                 nonce=nonce)
    events.append(message)
    stamps = [pc.stamp(host, address, seq, event, CREATED + 200 + seq,
                       signer=admin.public if pc.parse_event(event).author is None else None)
              for seq, event in enumerate(events, 1)]
    heads, pin = [], pc.HistoryPin()
    for seq in range(1, len(events) + 1):
        pin = pin.extend([statement_hash(e) for e in events[:seq]])
        heads.append(b64e(pin.head))
    body = create["body"]
    distribution = events[3]["body"]
    plaintext = canonical({"text": text, "franking_key": b64e(franking_key), "sent": CREATED + 180})
    recipients = []
    for m, box, ephemeral in zip(state.joined(), (admin_box, member_box), ephemerals):
        context = b"rxfed-sender-key|" + canonical({"community": str(address), "recipient": m.member_b64,
                                                    "epoch": 1})
        recipients.append({"member": m.member_b64, "box_secret": b64e(box.secret), "box_key": b64e(box.public),
                           "ephemeral_secret": b64e(ephemeral.secret), "context": context.decode(),
                           "inner": b64e(member.sign(context + sender_key.to_bytes()) + sender_key.to_bytes()),
                           "sealed": distribution["keys"][m.member_b64]})
    return {
        "host": {"node": "c.example", "seed": b64e(host.seed), "public_key": b64e(host.public)},
        "admin": {"seed": b64e(admin.seed), "public_key": b64e(admin.public), "box_secret": b64e(admin_box.secret)},
        "member": {"seed": b64e(member.seed), "public_key": b64e(member.public),
                   "box_secret": b64e(member_box.secret)},
        "about": {"name": about.name, "condition": about.condition, "key": b64e(about.key),
                  "committed": canonical({"condition": about.condition, "name": about.name}).decode(),
                  "commitment": body["about"]},
        "address": {"hashed": "rxfed-community-id|" + canonical({
                        "create": {k: v for k, v in body.items() if k != "community"}, "host": "c.example"}).decode(),
                    "id": address.id, "address": str(address)},
        "sender_key": {"epoch": 1, "key": b64e(sender_key.key), "bytes": b64e(sender_key.to_bytes()),
                       "recipients": recipients},
        "message": {"text": text, "sent": CREATED + 180, "franking_key": b64e(franking_key),
                    "plaintext": plaintext.decode(), "nonce": b64e(nonce),
                    "ad": "rxfed-msg|" + canonical({"community": str(address), "sender": b64e(member.public),
                                                    "epoch": 1}).decode(),
                    "ciphertext": message["body"]["ciphertext"],
                    "franked": canonical({"community": str(address), "sender": b64e(member.public), "text": text,
                                          "sent": CREATED + 180}).decode(),
                    "commitment": message["body"]["commitment"]},
        "events": [{"seq": seq, "event": event, "stamp": stamp, "head": head}
                   for seq, (event, stamp, head) in enumerate(zip(events, stamps, heads), 1)],
        "read_proof": pc.make_read_proof(member, address, "a.example", CREATED + 240),
    }


def fold_vectors() -> dict:
    """spec/federation.md §5.3: a community's history with every event type (create, join,
    approve, remove, leave, rekey, sender keys, messages, readable and not), from fixed keys,
    nonces and times; the state after each event; what each member reads of it; and the
    histories a host must never stamp, with the error code of their first bad event."""
    from rxfed.crypto import BoxKeyPair
    from rxfed.crypto.groups import SenderKey, seal_message
    from rxfed.protocol import community as pc

    names = ("admin", "alice", "bob", "carol", "alice2", "dave")
    keys = {name: (SigningKeyPair.from_seed(bytes([0x90 + i] * 32)), BoxKeyPair.from_secret(bytes([0xA0 + i] * 32)))
            for i, name in enumerate(names)}
    (admin, admin_box), (alice, alice_box), (bob, bob_box), (carol, carol_box), (alice2, alice2_box), (dave, dave_box) = (
        keys[n] for n in names)
    about = pc.About("Lupus", "M32", bytes([0xB0] * 32))
    events = [pc.make_create(admin, admin_box.public, "c.example", about=about, approval=True, node="c.example",
                             now=CREATED)]
    address = pc.parse_event(events[0]).community
    nonces = iter(bytes([0xC0 + i] * 24) for i in range(32))
    ephemeral = iter(BoxKeyPair.from_secret(bytes([0x40 + i] * 32)) for i in range(64))

    def state():
        return pc.CommunityState.from_events(list(enumerate(events, 1)))

    def distribute(sender, key):
        events.append(pc.make_sender_key(sender, state(), key, ephemerals=[next(ephemeral) for _ in state().joined()]))

    def post(sender, key, text, now, franking=None):
        events.append(pc.make_message(sender, key, address, text, now, franking_key=franking or bytes([now % 251] * 32),
                                      nonce=next(nonces))[0])

    events.append(pc.make_join(alice, alice_box.public, address, "a.example", CREATED + 1))
    events.append(pc.make_join(bob, bob_box.public, address, "b.example", CREATED + 2))
    events.append(pc.make_join(carol, carol_box.public, address, "b.example", CREATED + 3))
    events.append(pc.make_approve(admin, address, alice.public, CREATED + 4))
    events.append(pc.make_approve(admin, address, bob.public, CREATED + 5))
    events.append(pc.make_remove(admin, address, carol.public, CREATED + 6))
    admin_key = SenderKey(1, bytes([0xD1] * 32))
    distribute(admin, admin_key)
    post(admin, admin_key, "welcome, alice and bob", CREATED + 7)
    alice_key = SenderKey(1, bytes([0xD2] * 32))
    distribute(alice, alice_key)
    post(alice, alice_key, "hello from alice \u2713 \U0001F600", CREATED + 8)
    events.append(pc.make_leave(bob, address, CREATED + 9))
    events.append(pc.make_rekey(alice, alice2, alice2_box.public, address, "a.example", CREATED + 10))
    alice_key2 = SenderKey(state().next_epoch(alice2.public), bytes([0xD3] * 32))
    distribute(alice2, alice_key2)
    post(alice2, alice_key2, "after bob left", CREATED + 11)
    # sealed under a key alice2 never distributed: members hold the epoch's key, it does not open
    post(alice2, SenderKey(alice_key2.epoch, bytes([0xEE] * 32)), "under another key", CREATED + 12)
    # its commitment made with another franking key than the one inside: it could never be reported
    inner, other = bytes([0x33] * 32), bytes([0x34] * 32)
    plaintext = canonical({"text": "a commitment that does not open", "franking_key": b64e(inner), "sent": CREATED + 13})
    sealed = seal_message(alice_key2, pc._message_ad(address, alice2.public, alice_key2.epoch), plaintext,
                          nonce=next(nonces))
    events.append(pc._built(alice2, {
        "type": pc.MESSAGE, "community": str(address), "sender": b64e(alice2.public), "epoch": alice_key2.epoch,
        "ciphertext": b64e(sealed), "sent": CREATED + 13,
        "commitment": b64e(pc.commitment(other, pc._franked(address, alice2.public, "a commitment that does not open",
                                                             CREATED + 13)))}))
    events.append(pc.make_join(dave, dave_box.public, address, "d.example", CREATED + 14))
    events.append(pc.make_approve(admin, address, dave.public, CREATED + 15))
    admin_key2 = SenderKey(state().next_epoch(admin.public), bytes([0xD4] * 32))
    distribute(admin, admin_key2)
    post(admin, admin_key2, "welcome, dave", CREATED + 16)

    pairs = list(enumerate(events, 1))
    folded = pc.CommunityState.empty(address)
    states = []
    for seq, event in pairs:
        folded = folded.step(event, seq=seq)[0]
        states.append({"seq": folded.seq, "version": folded.version, "type": event["body"]["type"],
                       "members": [[m.member_b64, str(m.status), m.node] for m in folded.members.values()]})
    readers = {}
    for name, (member, box) in keys.items():
        reading = pc.read_history(pairs, member, box)
        readers[name] = {
            "seq": reading.state.seq, "version": reading.state.version, "admin": b64e(reading.state.meta.admin),
            "members": [[m.member_b64, str(m.status), m.node] for m in reading.state.members.values()],
            "senders": {k: list(v) for k, v in sorted(reading.state.senders.items())},
            "messages": [[m.seq, b64e(m.sender), m.text, m.sent] for m in reading.messages],
            "unreadable": [[u.seq, u.reason] for u in reading.unreadable]}
    assert sorted(r for v in readers.values() for _, r in v["unreadable"]) and readers["dave"]["messages"]

    # histories a host must never stamp: (why, the events kept, events added after them)
    refused = []
    for why, kept, extra in [
        ("a second create", 2, [events[0]]),
        ("a removed member leaves", 7, [pc.make_leave(carol, address, CREATED + 20)]),
        ("an approval of a member already joined", 5, [events[4]]),
        ("a sender key for an old membership version", 12, [events[9]]),
        ("a rekey of a member who left", 12, [pc.make_rekey(bob, dave, dave_box.public, address, "b.example",
                                                            CREATED + 20)]),
        ("a message under a sender key never distributed", 9, [pc.make_message(bob, SenderKey(7, bytes(32)), address,
                                                                                "no key", CREATED + 20,
                                                                                franking_key=bytes([1] * 32),
                                                                                nonce=bytes([2] * 24))[0]]),
        ("a join by someone already pending", 3, [events[1]]),
        ("an approval by someone not the admin", 4, [pc.make_approve(alice, address, bob.public, CREATED + 20)]),
        ("a history that does not start with its create event", 0, [events[1]]),
    ]:
        history = events[:kept] + extra
        try:
            pc.CommunityState.from_events(list(enumerate(history, 1)))
        except RxfedError as exc:
            refused.append({"case": why, "kept": kept, "extra": extra, "error": exc.code})
        else:
            raise AssertionError(f"{why}: Python accepted it")
    return {
        "address": str(address),
        "members": {name: {"seed": b64e(m.seed), "public_key": b64e(m.public), "box_secret": b64e(b.secret)}
                    for name, (m, b) in keys.items()},
        "events": events,
        "states": states,
        "readers": readers,
        "refused": refused,
    }


def moderation_vectors() -> dict:
    """spec/moderation.md and spec/crypto.md §14, on the history of community.json: the admin
    appoints the member a moderator, a report of the member's message sealed to both
    moderators under a fixed reporter key and fixed ephemeral keys, a forged report (another
    text), the hide and warn that follow, and a forwarded report."""
    from rxfed.crypto import BoxKeyPair, b64d
    from rxfed.protocol import community as pc

    base = community_vectors()
    admin = SigningKeyPair.from_seed(b64d(base["admin"]["seed"]))
    admin_box = BoxKeyPair.from_secret(b64d(base["admin"]["box_secret"]))
    member = SigningKeyPair.from_seed(b64d(base["member"]["seed"]))
    events = [e["event"] for e in base["events"]]
    address = pc.parse_event(events[0]).community
    events.append(pc.make_action(admin, address, "appoint", member.public, reason="moderator", now=CREATED + 300))
    state = pc.CommunityState.from_events(list(enumerate(events, 1)))
    message = next(m for m in pc.read_history(list(enumerate(events, 1)), admin, admin_box).messages)
    reporter = SigningKeyPair.from_seed(bytes([0x91] * 32))
    ephemerals = [BoxKeyPair.from_secret(bytes([0xa1 + i] * 32)) for i in range(len(state.moderator_keys()))]
    events.append(pc.make_report(state, message, "miracle_cure", CREATED + 360, reporter=reporter,
                                 ephemerals=ephemerals))
    report_seq = len(events)
    state = pc.CommunityState.from_events(list(enumerate(events, 1)))
    events.append(pc.make_report(state, message, "spam", CREATED + 370, reporter=SigningKeyPair.from_seed(
        bytes([0x92] * 32)), text="something else", ephemerals=[BoxKeyPair.from_secret(bytes([0xb1 + i] * 32))
                                                                 for i in range(2)]))
    for action in ("hide", "warn"):
        events.append(pc.make_action(member, address, action, member.public, seq=message.seq, reason="miracle_cure",
                                     now=CREATED + 400))
    franking = pc.franking_report(message, events[message.seq - 1], base["events"][message.seq - 1]["stamp"])
    payload = canonical({"category": "miracle_cure", "franking_key": b64e(message.franking_key), "seq": message.seq,
                         "text": message.text})
    return {
        "community": "the history of community.json, then the events here",
        "events": [{"seq": seq, "event": event} for seq, event in enumerate(events, 1)],
        "reporter": {"seed": b64e(reporter.seed), "public_key": b64e(reporter.public)},
        "report": {"seq": report_seq, "payload": payload.decode(),
                   "contexts": {m.member_b64: pc._report_context(address, m.member, reporter.public).decode()
                                for m in state.moderator_keys()},
                   "ephemeral_secrets": [b64e(e.secret) for e in ephemerals]},
        "expected": {"hidden": [message.seq], "moderators": [m.member_b64 for m in state.moderator_keys()],
                     "reports": [[report_seq, message.seq, "miracle_cure", message.text, "verified"],
                                 [report_seq + 1, message.seq, "spam", "something else", "refused"]]},
        "forward": pc.make_forward(admin, franking, "miracle_cure", CREATED + 500),
    }


def restore_vectors() -> dict:
    from rxfed.protocol.restore import RestoreStatement

    key = SigningKeyPair.from_seed(SEED)
    statement = RestoreStatement.issue(key, node="a.example", restore_id="0123456789abcdef0123456789abcdef",
                                       backup_taken=CREATED - 3600, restored=CREATED)
    return {"seed": b64e(SEED), "public_key": b64e(key.public),
            "signed_bytes": "rxfed-statement|" + canonical(statement.signed["body"]).decode(),
            "statement": statement.signed}


def credential_vectors() -> dict:
    """Clinician credentials (spec/crypto.md §12): the three disclosure profiles of one
    clinician, issued by a node with a fixed key, and its status list before and after the
    clinician's index is revoked. Ed25519 is deterministic, so every byte is fixed."""
    from rxfed.protocol import credentials as vc
    from rxfed.protocol.data_integrity import Issuer, did_document
    from rxfed.protocol.federation import NodeKey
    from rxfed.protocol.status_list import Bitstring, StatusEntry, status_list_credential

    issuer = Issuer("hospital-a.example", "Hospital A", SigningKeyPair.from_seed(SEED))
    clinician_key = SigningKeyPair.from_seed(bytes(range(33, 65)))
    clinician = vc.Clinician.create(clinician_key.public, "physician", "207RE0101X", "Endocrinology",
                                    name="Dr Ada Example", npi="1234567893")
    list_url = vc.status_list_url("https://hospital-a.example", "1")
    entry = StatusEntry(list_url, 94567)
    ids = iter(f"urn:uuid:6a1c4e7e-0000-4000-8000-00000000000{i}" for i in range(3))
    credentials = vc.issue_profiles(issuer, clinician, valid_from=CREATED, valid_until=CREATED + 30 * 86400,
                                    status=entry, new_id=lambda: next(ids))
    now = CREATED + 86400
    lists = {name: status_list_credential(issuer, list_url, bits, valid_from=now - 3600)
             for name, bits in (("unrevoked", Bitstring.empty()), ("revoked", Bitstring.empty().with_bit(94567)))}
    return {"issuer": {"node_id": issuer.node_id, "seed": SEED.hex(), "did": issuer.did,
                       "verification_method": issuer.verification_method,
                       "did_document": did_document(issuer.node_id, (NodeKey(issuer.key.public, CREATED, None),))},
            "clinician_public_key": b64e(clinician_key.public), "verify_at": now,
            "credentials": credentials, "status_lists": lists,
            "expected": {"unrevoked": "valid", "revoked": "credential_revoked"}}


def client_vectors() -> dict:
    """What the patient's clients (the SDK and the web client) make that the other vectors do
    not pin: patient and device ids, padding buckets, a journal record's plaintext and its
    sealed form, a vault manifest, and a device link's link and confirmation codes
    (spec/crypto.md sections 1, 2 and 5; spec/web.md)."""
    from rxfed.client import records as rec
    from rxfed.client.sdk import confirmation_code, link_code, record_ad
    from rxfed.crypto import BoxKeyPair, sha256
    from rxfed.crypto.records import VaultKeyring, bucket_size, open_record, seal_record
    from rxfed.protocol import vault as pv

    root = SigningKeyPair.from_seed(SEED)
    patient = pv.patient_id(root.public)
    device = SigningKeyPair.from_seed(bytes([23]) * 32)
    signing = SigningKeyPair.from_seed(bytes([7]) * 32)
    keyring = VaultKeyring({1: bytes([9]) * 32, 2: bytes([10]) * 32})
    data = rec.journal(symptoms={"Fatigue": 6, "douleur \u00e9paule": "3"}, feeling=4,
                       note="Tired \u2014 \U0001f634 \"quoted\"\n\tand a tab", date="2026-01-02")
    record = rec.Record("0" * 31 + "1", 1, "journal", "2026-01-02T03:04:05.000006Z", data)
    plaintext = record.to_plaintext()
    ad = record_ad(patient, record.id, record.version)
    sealed = seal_record(keyring, ad, plaintext, random=_fixed_random(b"journal"))
    assert open_record(keyring, ad, sealed) == plaintext
    blobs = {record.id: sealed, "f" * 32: b"R1 another blob"}
    entries = {rid: (1, sha256(blob)) for rid, blob in blobs.items()}
    signed = pv.Manifest.issue(signing, patient=patient, epoch=2, counter=5, entries=entries, now=CREATED)
    box = BoxKeyPair.from_secret(bytes([21]) * 32)
    recovery = SigningKeyPair.from_seed(bytes([27]) * 32)
    identity = pv.IdentityStatement.issue(root, patient=patient, epoch=1, previous=None, master_key=root.public,
                                          signing_key=signing.public, recovery_auth=recovery.public,
                                          recovery_box=BoxKeyPair.from_secret(bytes([29]) * 32).public, now=CREATED)
    shown = [
        rec.Record("1" * 32, 1, "condition", "2026-01-01T00:00:00.000000Z",
                   rec.condition("E11.9", label="type 2 diabetes", onset="2019-03-01")),
        rec.Record("2" * 32, 1, "condition", "2026-01-01T00:00:00.000000Z",
                   {"system": None, "code": None, "label": "Chronic pain", "onset": None}),
        rec.Record("3" * 32, 1, "treatment", "2026-01-01T00:00:00.000000Z",
                   rec.treatment("metformin", dose="500 mg", efficacy=7, side_effects=["nausea", "bloating"],
                                 stopped="2024-02-01")),
        rec.Record("4" * 32, 1, "observation", "2026-01-01T00:00:00.000000Z",
                   {"code": {"display": "Body Mass Index"}, "value": 19.124306358791486, "unit": "kg/m2",
                    "date": "2020-05-05"}),
        rec.Record("5" * 32, 1, "observation", "2026-01-01T00:00:00.000000Z",
                   {"code": {"display": "Blood pressure"}, "value": None, "date": "2020-05-06", "components": [
                       {"code": {"code": "8480-6"}, "value": 120, "unit": "mm[Hg]"},
                       {"code": {"code": "8462-4"}, "value": 80, "unit": "mm[Hg]"}]}),
        rec.Record("6" * 32, 1, "profile", "2026-01-01T00:00:00.000000Z", {}),
    ]
    entered = {"dose": "500 mg", "started": "2024-01-01", "stopped": "2024-02-01", "efficacy": "7",
               "side_effects": ["nausea", " ", "bloating"], "adherence": 9}
    return {
        "treatment": {"name": " metformin ", "entered": entered, "data": rec.treatment(" metformin ", **entered)},
        "summaries": [{"record": r.to_json(), "summary": rec.summary(r), "date": rec.clinical_date(r)} for r in shown],
        "link": {"device_seed": b64e(device.seed), "box_secret": b64e(box.secret),
                 "link_code": link_code(device, box.public), "identity": identity.signed,
                 "device": pv.device_id(device.public),
                 "confirmation": confirmation_code(identity, pv.device_id(device.public))},
        "root_seed": b64e(SEED),
        "patient": patient,
        "device_seed": b64e(device.seed),
        "device": pv.device_id(device.public),
        "buckets": [[n, bucket_size(n)] for n in (0, 1, 255, 256, 257, 65535, 65536, 200000)],
        "journal": {"record": record.to_json(), "plaintext": plaintext.decode(), "ad": ad.decode(),
                    "keyring": b64e(keyring.to_bytes()), "sealed": b64e(sealed)},
        "manifest": {"signing_seed": b64e(signing.seed), "epoch": 2, "counter": 5,
                     "blobs": {rid: b64e(blob) for rid, blob in blobs.items()},
                     "digest": b64e(pv.Manifest.digest_of(entries)), "statement": signed.signed},
    }


def psi_vectors() -> dict:
    """spec/crypto.md §13: one whole PSI session between two nodes, each side's randomness
    fixed, every message as sent, and the values a second implementation needs to check
    its hash to the group, transcript and tags."""
    from rxfed.crypto.ristretto import ExponentKey, hash_to_group
    from rxfed.protocol import psi

    draw_a, draw_b = _fixed_random(b"rxfed-psi-a"), _fixed_random(b"rxfed-psi-b")
    context = psi.PsiContext("rxfed-vectors", draw_a(16), "a.example", "b.example")
    ours, theirs = [b"E11", b"G40", b"J45"], [b"G40", b"I10", b"J45"]
    limits = psi.PsiLimits(min_padded=16)
    a, hello_a = psi.start(context, ours, limits=limits, random=draw_a)
    b, hello_b = psi.accept(hello_a, federation=context.federation, me=context.responder, peer=context.initiator,
                            elements=theirs, limits=limits, random=draw_b)
    a = a.receive_hello(hello_b)
    a, blinded_a = a.blind()
    b, blinded_b = b.blind()
    a, commit_a = a.receive_blinded(blinded_b)
    b, commit_b = b.receive_blinded(blinded_a)
    a, reveal_a = a.receive_commitment(commit_b)
    b, reveal_b = b.receive_commitment(commit_a)
    a, result_a = a.receive_reveal(reveal_b)
    b, result_b = b.receive_reveal(reveal_a)
    assert result_a.common == result_b.common == {b"G40", b"J45"}
    prefix = context.hash_prefix()
    return {
        "dst": psi.HASH_DST.decode(),
        "context": {"federation": context.federation, "session_id": b64e(context.session_id),
                    "initiator": context.initiator, "responder": context.responder, "hash_prefix": b64e(prefix)},
        "hash_to_group": {e.decode(): b64e(hash_to_group(prefix + e, psi.HASH_DST)) for e in sorted({*ours, *theirs})},
        "keys": {"initiator": b64e(a.key.scalar), "responder": b64e(b.key.scalar)},
        "blinded_g40_by_initiator": b64e(a.key.exponentiate(hash_to_group(prefix + b"G40", psi.HASH_DST))),
        "doubly_blinded_g40": b64e(b.key.exponentiate(a.key.exponentiate(hash_to_group(prefix + b"G40", psi.HASH_DST)))),
        "transcript": b64e(a.transcript),
        "sets": {"initiator": [e.decode() for e in ours], "responder": [e.decode() for e in theirs]},
        "padded": {"initiator": len(a.slots), "responder": len(b.slots)},
        "messages": {"hello_initiator": b64e(hello_a), "hello_responder": b64e(hello_b),
                     "blinded_initiator": b64e(blinded_a), "blinded_responder": b64e(blinded_b),
                     "commitment_initiator": b64e(commit_a), "commitment_responder": b64e(commit_b),
                     "reveal_initiator": b64e(reveal_a), "reveal_responder": b64e(reveal_b)},
        "common": sorted(e.decode() for e in result_a.common),
        "public": {"initiator": b64e(ExponentKey(a.key.scalar).public), "responder": b64e(b.key.public)},
    }

sys.path.insert(0, str(HERE))
from generate_records import fhir_vectors, records_vectors  # noqa: E402

VECTORS = {
    "records.json": records_vectors,
    "fhir.json": fhir_vectors,
    "restore.json": restore_vectors,
    "client.json": client_vectors,
    "vault.json": vault_vectors,
    "community.json": community_vectors,
    "community-fold.json": fold_vectors,
    "moderation.json": moderation_vectors,
    "consent.json": consent_vectors,
    "keyfile.json": keyfile_vectors,
    "node-key-rotation.json": rotation_vectors,
    "canonical.json": canonical_vectors,
    "credential.json": credential_vectors,
    "request-signature.json": request_vectors,
    "statement.json": statement_vectors,
    "transaction.json": transaction_vectors,
    "psi.json": psi_vectors,
}


def render(name: str) -> str:
    return json.dumps(VECTORS[name](), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name in VECTORS:
        (HERE / name).write_text(render(name))
        print(f"wrote {name}")
