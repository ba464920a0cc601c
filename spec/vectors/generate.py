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


#: The node of the consent vectors (c.example) and the patient device that signs the grant.
NODE_SEED = bytes(range(33, 65))
DEVICE_SEED = bytes(range(65, 97))


def _fixed_box(node_key, plaintext: bytes) -> bytes:
    """The sealed box of the vector file if it still opens to ``plaintext``, else a new one.
    A sealed box uses a fresh ephemeral key, so it is kept rather than made again: the
    vector is a box another implementation must open, not one it must reproduce."""
    from rxfed.crypto import DecryptionFailed, b64d, open_as_node, seal_to_node

    try:
        sealed = b64d(json.loads((HERE / "consent.json").read_text())["sealed_box"]["sealed"])
        if open_as_node(node_key, sealed) == plaintext:
            return sealed
    except (OSError, KeyError, TypeError, ValueError, DecryptionFailed):
        pass
    return seal_to_node(node_key.public, plaintext)


def consent_vectors() -> dict:
    from rxfed.consent import grants as pg
    from rxfed.consent.audit import chain
    from rxfed.crypto import node_box_key, pseudonym_key, sha256

    # Whole days, as every recipient of a grant sees them (spec/consent.md §1).
    issued, not_after = pg.day(CREATED), pg.end_of_day(CREATED + 86400)
    label = pg.pseudonym_label("c.example", "research", "outcomes")
    key = pseudonym_key(SEED, label)
    body = {"type": pg.TOKEN, "v": pg.VERSION, "id": "0" * 32, "node": "c.example", "home": "a.example",
            "subject": b64e(key.public), "kind": "diagnosis.category", "purpose": "research",
            "recipient": "plugin:c.example/outcomes", "nodes": ["c.example"], "issued": issued,
            "not_after": not_after}
    token = sign_statement(key, body)
    parsed = pg.Token.from_json(token)
    widened = {"body": {**body, "kind": "treatment.outcome"}, "sig": token["sig"]}
    try:
        pg.Token.from_json(widened)
    except RxfedError as exc:
        widened_error = exc.code
    else:  # pragma: no cover
        raise AssertionError("a widened token parsed")
    device = SigningKeyPair.from_seed(DEVICE_SEED)
    grant_body = {"type": pg.GRANT, "v": pg.VERSION, "id": "1" * 32, "patient": "3" * 32, "device": "4" * 32,
                  "kind": "diagnosis.category", "purpose": "research", "recipient": "plugin:c.example/outcomes",
                  "issued": CREATED, "not_after": not_after, "nodes": ["c.example"], "tokens": ["0" * 32]}
    grant = sign_statement(device, grant_body)
    assert parsed.matches(pg.Grant.from_json(grant, device.public))
    step = bytes([0, 0, 1, 0])
    seq = pg.next_seq(0, step)
    signals = [{"kind": "diagnosis.category", "body": {"system": "icd10", "category": "E11", "source": "icd10"}}]
    delivery = pg.sign_delivery(key, token="0" * 32, node="c.example", delivery="2" * 32, seq=seq, signals=signals)
    node = SigningKeyPair.from_seed(NODE_SEED)
    plaintext = canonical(delivery)
    revocation = pg.revoke_token(key, "0" * 32, CREATED + 3600)
    ack = pg.Acknowledgement.create(node, token="0" * 32, node="c.example", revocation=revocation,
                                    unconfirmed=["outcomes"], now=CREATED + 3660)
    entries = [{"event": "granted", "grant": "1" * 32, "seq": 1, "time": CREATED},
               {"event": "revoked", "grant": "1" * 32, "seq": 2, "time": CREATED + 60}]
    return {
        "root_seed": b64e(SEED),
        "pseudonym": {"label": label, "seed": b64e(key.seed), "public_key": b64e(key.public),
                      "subject": pg.subject_of(key.public)},
        "token": token,
        "widened_token": {"statement": widened, "error": widened_error},
        "grant": {"device_seed": b64e(DEVICE_SEED), "device_public_key": b64e(device.public), "statement": grant},
        "delivery": {"last_seq": 0, "random": b64e(step), "seq": seq, "statement": delivery,
                     "canonical": plaintext.decode()},
        "sealed_box": {"node_seed": b64e(NODE_SEED), "node_public_key": b64e(node.public),
                       "node_x25519_public_key": b64e(node_box_key(node.public)),
                       "plaintext": plaintext.decode(), "sealed": b64e(_fixed_box(node, plaintext))},
        "ack": {"node_seed": b64e(NODE_SEED), "revocation": revocation,
                "revocation_sha256": b64e(sha256(canonical(revocation))), "statement": ack.signed},
        "audit": {"entries": entries, "canonical": [canonical(e).decode() for e in entries],
                  "hashes": [b64e(h) for h in chain(canonical(e) for e in entries)]},
    }


VECTORS = {
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
