"""Write the federation test vectors in this folder from fixed keys, nonces and times.

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


def consent_vectors() -> dict:
    from rxfed.consent.audit import chain
    from rxfed.consent.grants import TOKEN, Token, pseudonym_label, subject_of
    from rxfed.crypto import pseudonym_key

    label = pseudonym_label("c.example", "research", "outcomes")
    key = pseudonym_key(SEED, label)
    body = {"type": TOKEN, "v": 1, "id": "0" * 32, "node": "c.example", "home": "a.example",
            "subject": b64e(key.public), "kind": "diagnosis.category", "purpose": "research",
            "recipient": "plugin:c.example/outcomes", "issued": CREATED, "not_after": CREATED + 86400}
    token = sign_statement(key, body)
    Token.from_json(token)
    widened = {"body": {**body, "kind": "treatment.outcome"}, "sig": token["sig"]}
    try:
        Token.from_json(widened)
    except RxfedError as exc:
        widened_error = exc.code
    else:  # pragma: no cover
        raise AssertionError("a widened token parsed")
    entries = [{"event": "granted", "grant": "1" * 32, "seq": 1, "time": CREATED},
               {"event": "revoked", "grant": "1" * 32, "seq": 2, "time": CREATED + 60}]
    return {
        "root_seed": b64e(SEED),
        "pseudonym": {"label": label, "public_key": b64e(key.public), "subject": subject_of(key.public)},
        "token": token,
        "widened_token": {"statement": widened, "error": widened_error},
        "audit": {"entries": entries, "canonical": [canonical(e).decode() for e in entries],
                  "hashes": [b64e(h) for h in chain(canonical(e) for e in entries)]},
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


VECTORS = {
    "community.json": community_vectors,
    "consent.json": consent_vectors,
    "canonical.json": canonical_vectors,
    "request-signature.json": request_vectors,
    "statement.json": statement_vectors,
    "transaction.json": transaction_vectors,
}


def render(name: str) -> str:
    return json.dumps(VECTORS[name](), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name in VECTORS:
        (HERE / name).write_text(render(name))
        print(f"wrote {name}")
