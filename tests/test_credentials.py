"""Clinician credentials: JCS, Multikey, the eddsa-jcs-2022 cryptosuite against W3C's
published vectors, issuing and verifying, every reason for refusal, and the status list."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import struct
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.crypto import SigningKeyPair
from rxfed.crypto.multikey import (
    base58btc_decode,
    base58btc_encode,
    ed25519_from_multikey,
    ed25519_multikey,
    ed25519_secret_multikey,
    ed25519_seed_from_multikey,
)
from rxfed.protocol import credentials as vc
from rxfed.protocol.canonical import canonical
from rxfed.protocol.data_integrity import (
    BadProof,
    CredentialExpired,
    CredentialNotYetValid,
    CredentialRevoked,
    Issuer,
    IssuerKeys,
    IssuerKeysNeeded,
    MalformedCredential,
    StatusUnavailable,
    UnknownIssuerKey,
    WrongCryptosuite,
    WrongIssuer,
    add_proof,
    did_document,
    did_web,
    hash_data,
    node_of_did,
    proof_configuration,
    verify_proof,
)
from rxfed.protocol.federation import NodeKey
from rxfed.protocol.jcs import JcsError, jcs, load_document
from rxfed.protocol.status_list import (
    MIN_BITS,
    Bitstring,
    StatusEntry,
    random_index,
    status_list_credential,
    verify_status_list,
)

VECTORS = Path(__file__).parent / "data" / "vc-di-eddsa"
T0 = 1_780_000_000  # 2026-05-28
DAY = 86400


def vector(name: str) -> str:
    return (VECTORS / name).read_text().strip()


# -- JCS (RFC 8785) ---------------------------------------------------------------------


def test_jcs_rfc8785_section_3_2_2_example():
    value = json.loads('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], '
                       '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", '
                       '"literals": [null, true, false]}')
    assert jcs(value) == ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                          '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}').encode()


def test_jcs_rfc8785_section_3_2_3_sorting():
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    text = jcs({k: i for i, k in enumerate(keys)}).decode()
    assert [json.loads(f"{{{pair}}}") for pair in text[1:-1].split(",")] == [
        {"\r": 1}, {"1": 3}, {"\u0080": 5}, {"\u00f6": 6}, {"\u20ac": 0}, {"\U0001f600": 4}, {"\ufb33": 2}]


@pytest.mark.parametrize("bits, expected", [  # RFC 8785 Appendix B
    ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"), ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"), ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
])
def test_jcs_rfc8785_appendix_b_numbers(bits, expected):
    assert jcs(struct.unpack(">d", bytes.fromhex(bits))[0]) == expected.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000"])  # NaN, Infinity
def test_jcs_refuses_what_has_no_form(bits):
    with pytest.raises(JcsError):
        jcs(struct.unpack(">d", bytes.fromhex(bits))[0])


_JSON_INT = st.integers(-(2**53 - 1), 2**53 - 1)
_JSON = st.recursive(st.none() | st.booleans() | _JSON_INT | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=20)


@given(_JSON)
def test_rxfed_canonical_json_is_exactly_jcs_on_its_integer_subset(value):
    assert canonical(value) == jcs(value)


@pytest.mark.parametrize("text", ['{"a":1,"a":2}', '{"a":NaN}', '[Infinity]', '{"a":', b'\xff'])
def test_documents_parse_strictly(text):
    with pytest.raises(JcsError):
        load_document(text)


# -- Multikey and multibase ---------------------------------------------------------------


def test_multikey_decodes_the_w3c_key_pair():
    pair = json.loads(vector("keyPair.json"))
    seed = ed25519_seed_from_multikey(pair["privateKeyMultibase"])
    key = SigningKeyPair.from_seed(seed)
    assert ed25519_multikey(key.public) == pair["publicKeyMultibase"]
    assert ed25519_from_multikey(pair["publicKeyMultibase"]) == key.public
    assert ed25519_secret_multikey(seed) == pair["privateKeyMultibase"]


@pytest.mark.parametrize("text", ["", "z", "6MkrJVna", "z0OIl", "Z6Mk", "z" + "1" * 5000,
                                  base58btc_encode(b"\xed\x01" + bytes(31)),           # 31-byte key
                                  base58btc_encode(b"\x80\x26" + bytes(32))])          # a secret key
def test_multikey_refuses_anything_else(text):
    with pytest.raises(ValueError):
        ed25519_from_multikey(text)


@given(st.binary(min_size=1, max_size=80))
def test_base58btc_round_trip(data):
    assert base58btc_decode(base58btc_encode(data)) == data


# -- the cryptosuite against the published vectors -----------------------------------------


def _vector_key() -> SigningKeyPair:
    return SigningKeyPair.from_seed(ed25519_seed_from_multikey(json.loads(vector("keyPair.json"))["privateKeyMultibase"]))


def _vector_resolver(method, created):
    assert method == "https://vc.example/issuers/5678#z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
    return _vector_key().public


def test_w3c_vector_canonical_document_and_hash():
    secured = json.loads(vector("signedJCS.json"))
    document = {k: v for k, v in secured.items() if k != "proof"}
    assert jcs(document).decode() == vector("canonDocJCS.txt")
    assert hashlib.sha256(jcs(document)).hexdigest() == vector("docHashJCS.txt")


def test_w3c_vector_proof_configuration_and_combined_hash():
    secured = json.loads(vector("signedJCS.json"))
    document = {k: v for k, v in secured.items() if k != "proof"}
    options = json.loads(vector("proofConfigJCS.json"))
    options["verificationMethod"] = ("did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
                                     "#z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2")
    config = proof_configuration(document, {k: v for k, v in options.items() if k != "@context"})
    assert config.decode() == vector("proofCanonJCS-didkey.txt")
    assert hashlib.sha256(config).hexdigest() == vector("proofHashJCS-didkey.txt")
    assert hash_data(jcs(document), config).hex() == vector("combinedHashJCS-didkey.txt")


def test_w3c_vector_signature_and_proof_are_reproduced():
    secured = json.loads(vector("signedJCS.json"))
    document = {k: v for k, v in secured.items() if k != "proof"}
    ours = add_proof(document, _vector_key(), verification_method=secured["proof"]["verificationMethod"],
                     created=1677281798)  # 2023-02-24T23:36:38Z
    assert ours == secured
    assert base58btc_decode(ours["proof"]["proofValue"]).hex() == vector("sigHexJCS.txt")
    proof_options = {k: v for k, v in secured["proof"].items() if k != "proofValue"}
    assert proof_options == json.loads(vector("proofConfigJCS.json"))


def test_w3c_vector_verifies_and_a_changed_one_does_not():
    secured = json.loads(vector("signedJCS.json"))
    verified = verify_proof(secured, _vector_resolver, now=T0)
    assert verified.document["credentialSubject"]["alumniOf"] == "The School of Examples"
    assert verified.created == 1677281798
    changed = json.loads(vector("signedJCS.json"))
    changed["credentialSubject"]["alumniOf"] = "Another School"
    with pytest.raises(BadProof):
        verify_proof(changed, _vector_resolver, now=T0)
    reordered = json.loads(vector("signedJCS.json"))
    reordered["proof"]["@context"] = reordered["proof"]["@context"][:1]  # still a prefix, but signed otherwise
    with pytest.raises(BadProof):
        verify_proof(reordered, _vector_resolver, now=T0)


# -- clinician credentials: issue and verify --------------------------------------------------

ENDO = "207RE0101X"  # Endocrinology, Diabetes & Metabolism
NPI = "1234567893"   # CMS's worked example of the check digit


@attrs.frozen
class Hospital:
    issuer: Issuer
    list_url: str
    bits: Bitstring = Bitstring.empty()

    @property
    def keys(self) -> IssuerKeys:
        return IssuerKeys(self.issuer.did, (NodeKey(self.issuer.key.public, T0 - 365 * DAY, None),))

    def status_list(self, *, now: int = T0, revoked: tuple[int, ...] = ()) -> dict:
        bits = self.bits
        for index in revoked:
            bits = bits.with_bit(index)
        return status_list_credential(self.issuer, self.list_url, bits, valid_from=now - 60, valid_until=now + DAY)


def hospital(node_id: str = "hospital-a.example", name: str = "Hospital A") -> Hospital:
    return Hospital(Issuer(node_id, name, SigningKeyPair.generate()),
                    vc.status_list_url(f"https://{node_id}", "1"))


CLINICIAN_KEY = SigningKeyPair.generate()


def clinician(**changes) -> vc.Clinician:
    fields = {"public_key": CLINICIAN_KEY.public, "role": "physician", "specialty": ENDO,
              "specialty_name": "Endocrinology", "name": "Dr Ada Example", "npi": NPI, "staff_id": "E-1001",
              **changes}
    return vc.Clinician.create(fields.pop("public_key"), fields.pop("role"), fields.pop("specialty"),
                               fields.pop("specialty_name"), **fields)


def issued(h: Hospital, *, profile: str = "badge", index: int = 94567, valid_from: int = T0 - DAY,
           valid_until: int = T0 + 30 * DAY) -> dict:
    return vc.issue(h.issuer, clinician(), valid_from=valid_from, valid_until=valid_until,
                    status=StatusEntry(h.list_url, index), profile=profile, credential_id=vc.new_credential_id())


def check(document, h: Hospital, *, now: int = T0, status_list: dict | None = None, **kwargs):
    lists = {h.list_url: status_list if status_list is not None else h.status_list(now=now)}
    return vc.verify(document, issuers={h.issuer.did: h.keys}, now=now, status_lists=lists, **kwargs)


def test_a_badge_credential_verifies_and_shows_only_what_it_discloses():
    h = hospital()
    document = issued(h)
    assert document["issuer"] == {"id": "did:web:hospital-a.example", "name": "Hospital A"}
    assert document["credentialSubject"] == {"id": vc.did_key(CLINICIAN_KEY.public), "role": "physician",
                                             "specialty": {"code": ENDO, "name": "Endocrinology"}}
    assert "E-1001" not in json.dumps(document)  # the staff id never leaves the hospital
    got = check(document, h, expected_issuer="did:web:hospital-a.example")
    assert got.clinician_key == CLINICIAN_KEY.public
    assert (got.role, got.specialty, got.name, got.npi) == ("physician", ENDO, None, None)
    assert got.badge() == "verified physician, Endocrinology, Hospital A (hospital-a.example)"
    assert got.valid_until == T0 + 30 * DAY and got.status == StatusEntry(h.list_url, 94567)


def test_derived_profiles_share_one_status_bit_and_disclose_progressively():
    h = hospital()
    ids = iter(f"urn:uuid:00000000-0000-4000-8000-00000000000{i}" for i in range(3))
    creds = vc.issue_profiles(h.issuer, clinician(), valid_from=T0 - DAY, valid_until=T0 + DAY,
                              status=StatusEntry(h.list_url, 7), new_id=lambda: next(ids))
    role, badge, full = (check(creds[p], h) for p in ("role", "badge", "full"))
    assert (role.role, role.specialty, role.name) == ("physician", None, None)
    assert role.badge() == "verified physician, Hospital A (hospital-a.example)"
    assert (badge.specialty, badge.name, badge.npi) == (ENDO, None, None)
    assert (full.name, full.npi) == ("Dr Ada Example", NPI)
    assert len({c["id"] for c in creds.values()}) == 3
    revoked = h.status_list(revoked=(7,))
    for document in creds.values():
        with pytest.raises(CredentialRevoked):
            check(document, h, status_list=revoked)


def test_a_credential_survives_json_round_trips_and_reordering():
    h = hospital()
    document = issued(h)
    text = json.dumps(document, indent=3, sort_keys=False)
    reordered = dict(reversed(list(load_document(text).items())))
    assert check(reordered, h).credential_id == document["id"]


def test_expired_and_not_yet_valid_are_refused():
    h = hospital()
    document = issued(h, valid_from=T0 - 10 * DAY, valid_until=T0 + DAY)
    with pytest.raises(CredentialExpired, match="expired at"):
        check(document, h, now=T0 + DAY + 1)
    with pytest.raises(CredentialNotYetValid, match="valid from"):
        check(document, h, now=T0 - 10 * DAY - 1)
    assert check(document, h, now=T0 + DAY).role == "physician"  # the last second still counts


def test_revoked_is_refused_and_other_bits_do_not_matter():
    h = hospital()
    document = issued(h, index=94567)
    with pytest.raises(CredentialRevoked, match="revoked"):
        check(document, h, status_list=h.status_list(revoked=(94567,)))
    assert check(document, h, status_list=h.status_list(revoked=(94566, 94568, 0))).role == "physician"


def test_a_forged_signature_is_refused():
    h = hospital()
    document = issued(h)
    forged = json.loads(json.dumps(document))
    signature = bytearray(base58btc_decode(forged["proof"]["proofValue"]))
    signature[5] ^= 1
    forged["proof"]["proofValue"] = base58btc_encode(bytes(signature))
    with pytest.raises(BadProof):
        check(forged, h)


@pytest.mark.parametrize("tamper", [
    lambda d: d["credentialSubject"].update(role="pharmacist"),
    lambda d: d["credentialSubject"]["specialty"].update(code="207Q00000X"),
    lambda d: d["credentialSubject"].update(id=vc.did_key(SigningKeyPair.generate().public)),
    lambda d: d.update(validUntil="2099-01-01T00:00:00Z"),
    lambda d: d["issuer"].update(name="Hospital B"),
    lambda d: d["credentialStatus"].update(statusListIndex="1"),
    lambda d: d["credentialSubject"].update(npi=NPI),
    lambda d: d["proof"].update(created="2026-05-27T00:00:01Z"),
])
def test_a_tampered_claim_is_refused(tamper):
    h = hospital()
    document = json.loads(json.dumps(issued(h)))
    tamper(document)
    with pytest.raises(BadProof):
        check(document, h)


def test_wrong_issuer_is_refused_three_ways():
    a, b = hospital(), hospital("hospital-b.example", "Hospital B")
    document = issued(a)
    # Not the issuer the verifier asked for.
    with pytest.raises(WrongIssuer, match="not by did:web:hospital-b.example"):
        check(document, a, expected_issuer=b.issuer.did)
    # B signs a credential claiming to come from A, naming its own key as A's.
    impostor = Issuer("hospital-a.example", "Hospital A", b.issuer.key)
    forged = vc.issue(impostor, clinician(), valid_from=T0 - DAY, valid_until=T0 + DAY,
                      status=StatusEntry(a.list_url, 1), credential_id=vc.new_credential_id())
    with pytest.raises(UnknownIssuerKey, match="not one did:web:hospital-a.example publishes"):
        check(forged, a)
    # B signs as B but writes A as the issuer.
    relabelled = {k: v for k, v in vc.issue(b.issuer, clinician(), valid_from=T0 - DAY, valid_until=T0 + DAY,
                                             status=StatusEntry(a.list_url, 1), credential_id=vc.new_credential_id()).items()}
    relabelled["issuer"] = {"id": a.issuer.did, "name": "Hospital A"}
    with pytest.raises(WrongIssuer, match="made by a key of did:web:hospital-b.example"):
        check(relabelled, a)


def test_a_key_the_issuer_retired_before_signing_is_refused():
    h = hospital()
    document = issued(h, valid_from=T0)
    retired = attrs.evolve(h.keys, keys=(NodeKey(h.issuer.key.public, T0 - 100 * DAY, T0 - DAY),))
    with pytest.raises(UnknownIssuerKey, match="not valid"):
        vc.verify(document, issuers={h.issuer.did: retired}, now=T0 + 1,
                  status_lists={h.list_url: h.status_list()})
    old_but_valid_then = attrs.evolve(h.keys, keys=(NodeKey(h.issuer.key.public, T0 - 100 * DAY, T0 + 1),))
    assert vc.verify(document, issuers={h.issuer.did: old_but_valid_then}, now=T0 + 5,
                     status_lists={h.list_url: h.status_list()}).role == "physician"


@pytest.mark.parametrize("suite", [("DataIntegrityProof", "eddsa-rdfc-2022"), ("DataIntegrityProof", "ecdsa-jcs-2019"),
                                   ("Ed25519Signature2020", None), ("DataIntegrityProof", None)])
def test_a_wrong_cryptosuite_is_refused(suite):
    h = hospital()
    document = json.loads(json.dumps(issued(h)))
    document["proof"]["type"], document["proof"]["cryptosuite"] = suite
    if suite[1] is None:
        del document["proof"]["cryptosuite"]
    with pytest.raises(WrongCryptosuite):
        check(document, h)


def _drop(*path):
    def change(d):
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return change


@pytest.mark.parametrize("change, message", [
    (lambda d: d.clear(), "Verifiable Credential 2.0"),
    (lambda d: d.update({"@context": ["https://www.w3.org/2018/credentials/v1"]}), "@context"),
    (lambda d: d.update(type=["VerifiableCredential"]), "ClinicianCredential"),
    (lambda d: d.update(type="ClinicianCredential"), "type"),
    (_drop("validUntil"), "validUntil"),
    (_drop("validFrom"), "validFrom"),
    (lambda d: d.update(validUntil="next year"), "date and time"),
    (lambda d: d.update(validUntil="2026-13-01T00:00:00Z"), "not a valid date"),
    (lambda d: d.update(validFrom="2026-01-01T00:00:00"), "time zone"),
    (_drop("issuer"), "no issuer"),
    (lambda d: d.update(issuer="https://hospital-a.example"), "did:web"),
    (lambda d: d.update(issuer={"id": "did:web:hospital-a.example:users:x"}), "did:web"),
    (lambda d: d.update(issuer={"id": "did:web:Hospital-A.example"}), "does not name a node"),
    (_drop("proof"), "no proof"),
    (lambda d: d.update(proof=[d["proof"]]), "proof sets"),
    (lambda d: d["proof"].update(proofValue="not-base58"), "proofValue"),
    (lambda d: d["proof"].update(proofValue=base58btc_encode(bytes(63))), "64 bytes"),
    (lambda d: d["proof"].update(proofPurpose="authentication"), "purpose"),
    (_drop("proof", "verificationMethod"), "verification method"),
    (lambda d: d["proof"].update(verificationMethod="did:web:hospital-a.example#key-1"), "Multikey"),
    (lambda d: d["proof"].update(created="yesterday"), "proof.created"),
    (lambda d: d.update(credentialSubject=[d["credentialSubject"]]), "credentialSubject"),
    (lambda d: d.update(credentialSubject="x"), "credentialSubject"),
])
def test_malformed_documents_are_refused_with_the_reason(change, message):
    h = hospital()
    document = json.loads(json.dumps(issued(h)))
    change(document)
    with pytest.raises(MalformedCredential, match=message):
        check(document, h)


@pytest.mark.parametrize("subject_change, message", [
    ({"id": "did:example:123"}, "did:key"),
    ({"id": "did:key:z6MkrJVna"}, "Ed25519 did:key"),
    ({"role": "wizard"}, "role"),
    ({"specialty": {"code": "207RE0101", "name": "x"}}, "NUCC"),
    ({"specialty": "Endocrinology"}, "NUCC"),
    ({"npi": "1234567890"}, "check digit"),
    ({"name": 7}, "name"),
    ({"name": "Dr A\u202eelgooG"}, "printable"),
    ({"specialty": {"code": ENDO, "name": ""}}, "specialty.name"),
])
def test_claims_are_checked_after_the_proof(subject_change, message):
    """A hospital signing nonsense (or an old version's vocabulary) is refused, not shown."""
    h = hospital()
    document = issued(h, profile="full")
    unsigned = {k: v for k, v in document.items() if k != "proof"}
    unsigned["credentialSubject"] = {**unsigned["credentialSubject"], **subject_change}
    resigned = add_proof(unsigned, h.issuer.key, verification_method=h.issuer.verification_method, created=T0 - DAY)
    with pytest.raises(MalformedCredential, match=message):
        check(resigned, h)


@pytest.mark.parametrize("status_change, message", [
    ({"type": "StatusList2021Entry"}, "BitstringStatusListEntry"),
    ({"statusPurpose": "suspension"}, "revocation"),
    ({"statusListIndex": 5}, "base-10 string"),
    ({"statusListIndex": "05"}, "base-10 string"),
    ({"statusListIndex": "-1"}, "base-10 string"),
    ({"statusSize": 2}, "statusSize 1"),
    ({"statusListCredential": "ftp://hospital-a.example/list"}, "http"),
])
def test_bad_status_entries_are_refused(status_change, message):
    h = hospital()
    document = issued(h)
    unsigned = {k: v for k, v in document.items() if k != "proof"}
    unsigned["credentialStatus"] = {**unsigned["credentialStatus"], **status_change}
    resigned = add_proof(unsigned, h.issuer.key, verification_method=h.issuer.verification_method, created=T0 - DAY)
    with pytest.raises(MalformedCredential, match=message):
        check(resigned, h)


def test_a_status_list_elsewhere_than_the_issuing_node_is_never_fetched():
    h = hospital()
    document = vc.issue(h.issuer, clinician(), valid_from=T0 - DAY, valid_until=T0 + DAY,
                        status=StatusEntry("https://10.0.0.1/internal", 3), credential_id=vc.new_credential_id())
    with pytest.raises(StatusUnavailable, match="not on the issuing node"):
        vc.verify(document, issuers={h.issuer.did: h.keys}, now=T0, status_lists={})
    plain = vc.issue(h.issuer, clinician(), valid_from=T0 - DAY, valid_until=T0 + DAY,
                     status=StatusEntry("http://hospital-a.example/v1/clinicians/status/1", 3), credential_id=vc.new_credential_id())
    with pytest.raises(StatusUnavailable, match="not on the issuing node"):
        vc.verify(plain, issuers={h.issuer.did: h.keys}, now=T0, status_lists={})


def test_the_verifier_says_what_to_fetch_and_is_called_again():
    h = hospital()
    document = issued(h)
    with pytest.raises(IssuerKeysNeeded) as need_keys:
        vc.verify(document, issuers={}, now=T0, status_lists={})
    assert need_keys.value.issuer == "did:web:hospital-a.example"
    with pytest.raises(vc.StatusListNeeded) as need_list:
        vc.verify(document, issuers={h.issuer.did: h.keys}, now=T0, status_lists={})
    assert need_list.value.url == "https://hospital-a.example/v1/clinicians/status/1"
    assert vc.verify(document, issuers={h.issuer.did: h.keys}, now=T0,
                     status_lists={need_list.value.url: h.status_list()}).role == "physician"


# -- the status list ------------------------------------------------------------------------


def test_bit_order_is_left_most_first():
    bits = Bitstring.empty().with_bit(0).with_bit(9).with_bit(MIN_BITS - 1)
    assert bits.data[:2] == b"\x80\x40" and bits.data[-1] == 0x01
    assert [bits.get(i) for i in (0, 1, 9, MIN_BITS - 1)] == [True, False, True, True]
    assert not bits.with_bit(9, False).get(9)
    with pytest.raises(IndexError):
        bits.get(MIN_BITS)


def test_the_specifications_example_list_decodes_to_131072_zero_bits():
    bits = Bitstring.decode("uH4sIAAAAAAAAA-3BMQEAAADCoPVPbQwfoAAAAAAAAAAAAAAAAAAAAIC3AYbSVKsAQAAA")
    assert bits.size == MIN_BITS and not any(bits.data)


def test_encoding_is_deterministic_small_and_round_trips():
    bits = Bitstring.empty().with_bit(94567)
    text = bits.encode()
    assert text == bits.encode() and text.startswith("uH4sI") and len(text) < 200
    assert Bitstring.decode(text) == bits


@given(st.sets(st.integers(0, MIN_BITS - 1), max_size=50))
def test_any_set_of_revocations_round_trips(revoked):
    bits = Bitstring.empty()
    for index in revoked:
        bits = bits.with_bit(index)
    decoded = Bitstring.decode(bits.encode())
    set_bits = {8 * i + j for i, byte in enumerate(decoded.data) if byte for j in range(8) if decoded.get(8 * i + j)}
    assert set_bits == revoked


def _encoded(data: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("text, message", [
    (_encoded(gzip.compress(bytes(1024))), "fewer than the minimum"),
    (_encoded(gzip.compress(bytes(2**20 + 1))), "more than"),               # a decompression bomb
    (_encoded(gzip.compress(bytes(MIN_BITS // 8))[:-6]), "truncated"),
    (_encoded(gzip.compress(bytes(MIN_BITS // 8)) + b"x"), "followed"),
    (_encoded(b"not gzip at all"), "not GZIP"),
    ("zH4sIAAAA", "base64url multibase"),
    (None, "base64url multibase"),
])
def test_bad_lists_are_unusable(text, message):
    with pytest.raises(StatusUnavailable, match=message):
        Bitstring.decode(text)


def test_too_short_lists_are_never_made():
    with pytest.raises(ValueError):
        Bitstring.empty(MIN_BITS - 8)


def test_a_list_credential_is_checked_before_its_bits_are_believed():
    a, b = hospital(), hospital("hospital-b.example", "Hospital B")
    entry = StatusEntry(a.list_url, 3)
    good = a.status_list()
    assert not verify_status_list(good, a.keys, entry, now=T0).get(3)
    with pytest.raises(StatusUnavailable, match="expired"):
        verify_status_list(good, a.keys, entry, now=T0 + 2 * DAY)
    with pytest.raises(StatusUnavailable, match="not valid yet"):
        verify_status_list(good, a.keys, entry, now=T0 - DAY)
    stale_b = status_list_credential(b.issuer, a.list_url, Bitstring.empty(), valid_from=T0, valid_until=T0 + DAY)
    with pytest.raises(WrongIssuer):
        verify_status_list(stale_b, a.keys, entry, now=T0)
    elsewhere = status_list_credential(a.issuer, a.list_url.replace("/1", "/2"), Bitstring.empty(),
                                       valid_from=T0, valid_until=T0 + DAY)
    with pytest.raises(StatusUnavailable, match="not the"):
        verify_status_list(elsewhere, a.keys, entry, now=T0)
    suspension = status_list_credential(a.issuer, a.list_url, Bitstring.empty(), valid_from=T0,
                                        valid_until=T0 + DAY, purpose="suspension")
    with pytest.raises(StatusUnavailable, match="not for revocation"):
        verify_status_list(suspension, a.keys, entry, now=T0)
    with pytest.raises(StatusUnavailable, match="outside"):
        verify_status_list(good, a.keys, StatusEntry(a.list_url, MIN_BITS), now=T0)
    unrevoked = json.loads(json.dumps(a.status_list(revoked=(3,))))
    unrevoked["credentialSubject"]["encodedList"] = Bitstring.empty().encode()  # a node stripping a revocation
    with pytest.raises(BadProof):
        verify_status_list(unrevoked, a.keys, entry, now=T0)
    with pytest.raises(StatusUnavailable, match="malformed"):
        verify_status_list({"proof": []}, a.keys, entry, now=T0)


def test_a_list_on_the_credentials_own_verification_path():
    h = hospital()
    document = issued(h)
    with pytest.raises(StatusUnavailable, match="expired"):
        check(document, h, status_list=h.status_list(now=T0 - 3 * DAY))


def test_random_index_draws_free_indexes():
    draws = iter([5, 5, 9])
    assert random_index({5}, MIN_BITS, lambda n: next(draws)) == 9
    with pytest.raises(ValueError, match="new status list"):
        random_index({1}, MIN_BITS, lambda n: 1, tries=3)


# -- codes and identifiers --------------------------------------------------------------------


@pytest.mark.parametrize("npi", ["1234567893", "1245319599", "2000000002", "1000000004", "1999999992"])
def test_valid_npis(npi):
    assert vc.npi_valid(npi)


@pytest.mark.parametrize("npi", [
    "1234567890", "1234567894", "1245319598",       # wrong check digit
    "3234567893", "0234567893", "9234567893",       # first digit neither 1 nor 2
    "123456789", "12345678930", "", "12345678a3",   # not ten digits
    " 1234567893", "1234567893\n", "１２３４５６７８９３",  # padding, full-width digits
    1234567893, None,
])
def test_invalid_npis(npi):
    assert not vc.npi_valid(npi)


def _luhn_with_constant_24(first_nine: str) -> int:
    """CMS's other statement of the same rule: Luhn over the nine digits, plus 24."""
    total = 24
    for i, c in enumerate(reversed(first_nine)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


@given(st.from_regex(r"[12][0-9]{8}", fullmatch=True))
def test_the_check_digit_agrees_with_the_constant_24_statement(first_nine):
    assert vc.npi_check_digit(first_nine) == _luhn_with_constant_24(first_nine)


@pytest.mark.parametrize("code, ok", [
    ("207RE0101X", True), ("207Q00000X", True), ("363L00000X", True), ("2084P0800X", True), ("101YM0800X", True),
    ("207re0101x", False), ("207RE0101", False), ("207RE0101XX", False), ("A07RE0101X", False),
    ("207RE0101Y", False), ("", False), (None, False),
])
def test_nucc_taxonomy_format(code, ok):
    assert vc.nucc_valid(code) is ok


@pytest.mark.parametrize("node_id, did", [
    ("hospital-a.example", "did:web:hospital-a.example"),
    ("127.0.0.1:8470", "did:web:127.0.0.1%3A8470"),
    ("[::1]:8470", "did:web:%5B%3A%3A1%5D%3A8470"),
])
def test_did_web_names_nodes_both_ways(node_id, did):
    assert did_web(node_id) == did and node_of_did(did) == node_id


def test_the_did_document_lists_every_key_for_assertions():
    h = hospital()
    doc = did_document("hospital-a.example", h.keys.keys)
    method = doc["verificationMethod"][0]
    assert method["id"] == h.issuer.verification_method and method["type"] == "Multikey"
    assert doc["assertionMethod"] == [method["id"]]


@pytest.mark.parametrize("changes, message", [
    ({"role": "doctor"}, "role must be one of"),
    ({"specialty": "Endocrinology"}, "NUCC"),
    ({"npi": "1234567890"}, "not a valid NPI"),
    ({"name": ""}, "name"),
    ({"name": "Dr\nX"}, "name"),
    ({"specialty_name": "x" * 101}, "specialty"),
    ({"public_key": b"short"}, "32-byte"),
])
def test_a_hospital_cannot_vouch_for_a_malformed_clinician(changes, message):
    with pytest.raises(vc.BadClinician, match=message):
        clinician(**changes)


def test_issuing_refuses_unknown_profiles_and_endless_validity():
    h = hospital()
    with pytest.raises(vc.BadClinician, match="profile"):
        issued(h, profile="everything")
    with pytest.raises(vc.BadClinician, match="at most"):
        issued(h, valid_from=T0, valid_until=T0 + 2 * 365 * DAY)
    with pytest.raises(vc.BadClinician, match="at most"):
        issued(h, valid_from=T0, valid_until=T0)


# -- across nodes: the issuer's published keys, rotation, revocation, expiry ---------------------


def test_issue_verify_revoke_and_expire_across_three_nodes(tmp_path):
    """Hospital A issues; nodes B (trust on first use) and C (A's first key pinned) verify
    against A's ``/.well-known/rxfed`` keys, across a key rotation of A's."""
    from rxfed.crypto import fingerprint
    from rxfed.node.config import create_node_keys, current_key, load_node_keys, rotate_node_key, rotation_statements
    from rxfed.protocol.federation import NodeDocument

    def well_known() -> dict:
        keys = load_node_keys(tmp_path)
        return {"node_id": "hospital-a.example", "name": "Hospital A", "protocol_versions": ["1"],
                "keys": [k.to_public_json() for k in keys], "rotations": rotation_statements(keys, "hospital-a.example")}

    def issuer() -> Issuer:
        return Issuer("hospital-a.example", "Hospital A", current_key(load_node_keys(tmp_path)).key)

    first = create_node_keys(tmp_path, now=T0 - 100 * DAY)
    list_url = "https://hospital-a.example/v1/clinicians/status/1"
    before = vc.issue(issuer(), clinician(), valid_from=T0 - 10 * DAY, valid_until=T0 + 30 * DAY,
                      status=StatusEntry(list_url, 11), credential_id=vc.new_credential_id())
    b_anchors = NodeDocument.from_json(well_known()).keys  # B meets A before the rotation
    rotate_node_key(tmp_path, overlap=20 * DAY, now=T0 - 5 * DAY)
    after = vc.issue(issuer(), clinician(), valid_from=T0 - 4 * DAY, valid_until=T0 + 30 * DAY,
                     status=StatusEntry(list_url, 12), credential_id=vc.new_credential_id())
    # A key ended by the rotation cannot make new credentials that anyone accepts.
    late = vc.issue(Issuer("hospital-a.example", "Hospital A", first.key), clinician(), valid_from=T0 + 16 * DAY,
                    valid_until=T0 + 30 * DAY, status=StatusEntry(list_url, 13), credential_id=vc.new_credential_id())

    published = NodeDocument.from_json(well_known())
    pinned = next(k for k in published.keys if fingerprint(k.public_key) == fingerprint(first.key.public))
    verifiers = {"B": IssuerKeys.from_node_document(published.trusting(b_anchors)),
                 "C": IssuerKeys.from_node_document(published.trusting((attrs.evolve(pinned, valid_until=None),)))}

    def lists(now, revoked=()):
        bits = Bitstring.empty()
        for i in revoked:
            bits = bits.with_bit(i)
        return {list_url: status_list_credential(issuer(), list_url, bits, valid_from=now - 60, valid_until=now + DAY)}

    for name, keys in verifiers.items():
        for document in (before, after):
            got = vc.verify(document, issuers={keys.issuer: keys}, now=T0, status_lists=lists(T0))
            assert got.issuer_node == "hospital-a.example", name
        with pytest.raises(UnknownIssuerKey):
            vc.verify(late, issuers={keys.issuer: keys}, now=T0 + 17 * DAY, status_lists=lists(T0 + 17 * DAY))
        with pytest.raises(CredentialRevoked):
            vc.verify(before, issuers={keys.issuer: keys}, now=T0, status_lists=lists(T0, revoked=(11,)))
        assert vc.verify(after, issuers={keys.issuer: keys}, now=T0, status_lists=lists(T0, revoked=(11,)))
        with pytest.raises(CredentialExpired):
            vc.verify(after, issuers={keys.issuer: keys}, now=T0 + 31 * DAY, status_lists=lists(T0 + 31 * DAY))


def test_a_proof_without_a_creation_time_is_refused():
    """The issuer key's validity is checked at ``created``; without it a retired key could sign."""
    h = hospital()
    document = issued(h)
    unsigned = {k: v for k, v in document.items() if k != "proof"}
    proof = json.loads(json.dumps(document["proof"]))
    del proof["created"]
    config = proof_configuration(unsigned, {k: v for k, v in proof.items() if k not in ("proofValue", "@context")})
    proof["proofValue"] = base58btc_encode(h.issuer.key.sign(hash_data(jcs(unsigned), config)))
    with pytest.raises(MalformedCredential, match="when it was created"):
        check({**unsigned, "proof": proof}, h)


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*path, i))


_FUZZ_HOSPITAL = hospital()
_FUZZ_DOCUMENT = issued(_FUZZ_HOSPITAL)
_FUZZ_PATHS = list(_paths(_FUZZ_DOCUMENT))[1:]
_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.floats(allow_nan=False,
                         allow_infinity=False) | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=3), max_leaves=8)


@given(st.sampled_from(_FUZZ_PATHS), _ANY_JSON | st.just(...))
def test_any_change_to_a_credential_is_refused_with_a_credential_error(path, replacement):
    document = json.loads(json.dumps(_FUZZ_DOCUMENT))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if replacement is ...:
        if path == ("proof", "@context"):
            return  # the configuration takes the document's @context anyway: what is signed is unchanged
        del parent[path[-1]]
    elif parent[path[-1]] == replacement:
        return
    else:
        parent[path[-1]] = replacement
    try:
        check(document, _FUZZ_HOSPITAL)
    except (vc.CredentialError, JcsError):
        return
    raise AssertionError(f"accepted after changing {path!r}")


@given(st.binary(max_size=300))
def test_garbage_documents_raise_only_parse_errors(data):
    try:
        load_document(data)
    except JcsError:
        pass


def test_the_published_list_has_its_ttl_and_headers():
    from rxfed.protocol.status_list import LIST_TTL, LIST_VALIDITY, publication_headers

    h = hospital()
    published = h.status_list()
    assert published["credentialSubject"]["ttl"] == LIST_TTL * 1000 < LIST_VALIDITY * 1000
    default = status_list_credential(h.issuer, h.list_url, Bitstring.empty(), valid_from=T0)
    assert default["validUntil"] == "2026-05-29T20:26:40Z"  # a day after T0
    assert publication_headers() == {"Content-Type": "application/vc", "Cache-Control": "public, max-age=3600"}


def _sign_as(h: Hospital, *, created: int, valid_from: int, valid_until: int) -> dict:
    """A credential signed by the hospital's key with dates of the signer's choosing (what a
    holder of the key, or of a key it has retired, can make without issue()'s checks)."""
    document = {k: v for k, v in issued(h).items() if k != "proof"}
    document = {**document, "validFrom": vc.format_time(valid_from), "validUntil": vc.format_time(valid_until)}
    return add_proof(document, h.issuer.key, verification_method=h.issuer.verification_method, created=created)


def test_a_retired_key_cannot_backdate_a_credential_that_is_valid_for_years():
    """The key stopped being valid a year ago. Whoever kept it signs a proof 'created' while
    it was valid, for a credential valid for ten more years: refused, since a credential is
    valid at most MAX_VALIDITY from when its proof was made (spec/crypto.md §12.1)."""
    h = hospital()
    successor = Hospital(attrs.evolve(h.issuer, key=SigningKeyPair.generate()), h.list_url)
    retired = attrs.evolve(h.keys, keys=(NodeKey(h.issuer.key.public, T0 - 900 * DAY, T0 - 365 * DAY),
                                         NodeKey(successor.issuer.key.public, T0 - 365 * DAY, None)))
    lists = {h.list_url: successor.status_list()}
    backdated = _sign_as(h, created=T0 - 400 * DAY, valid_from=T0 - 400 * DAY, valid_until=T0 + 3650 * DAY)
    with pytest.raises(MalformedCredential, match="at most 400 days"):
        vc.verify(backdated, issuers={h.issuer.did: retired}, now=T0, status_lists=lists)
    # validFrom moved close to now, the proof still dated from the key's time: refused too
    moved = _sign_as(h, created=T0 - 400 * DAY, valid_from=T0 - DAY, valid_until=T0 + 300 * DAY)
    with pytest.raises(MalformedCredential, match="created"):
        vc.verify(moved, issuers={h.issuer.did: retired}, now=T0, status_lists=lists)
    # what issue() makes (created = validFrom, within 400 days) still verifies
    fine = _sign_as(h, created=T0 - DAY, valid_from=T0 - DAY, valid_until=T0 + 30 * DAY)
    assert check(fine, h).role == "physician"


def test_a_retired_key_cannot_sign_a_status_list_valid_for_years():
    """The same bound for status lists: a list whose proof is dated inside a retired key's
    validity and that stays valid for years (hiding later revocations) is refused; a list is
    valid at most MAX_LIST_VALIDITY, from its proof's creation."""
    h = hospital()
    successor = Hospital(attrs.evolve(h.issuer, key=SigningKeyPair.generate()), h.list_url)
    retired = attrs.evolve(h.keys, keys=(NodeKey(h.issuer.key.public, T0 - 900 * DAY, T0 - 365 * DAY),
                                         NodeKey(successor.issuer.key.public, T0 - 365 * DAY, None)))
    entry = StatusEntry(h.list_url, 3)
    forever = status_list_credential(h.issuer, h.list_url, Bitstring.empty(), valid_from=T0 - 400 * DAY,
                                     valid_until=T0 + 3650 * DAY)
    with pytest.raises(StatusUnavailable, match="at most 7 days"):
        verify_status_list(forever, retired, entry, now=T0)
    document = {k: v for k, v in forever.items() if k != "proof"}
    document["validFrom"], document["validUntil"] = vc.format_time(T0 - DAY), vc.format_time(T0 + DAY)
    moved = add_proof(document, h.issuer.key, verification_method=h.issuer.verification_method, created=T0 - 400 * DAY)
    with pytest.raises(StatusUnavailable, match="created at its validFrom"):
        verify_status_list(moved, retired, entry, now=T0)
    assert not verify_status_list(successor.status_list(), retired, entry, now=T0).get(3)
