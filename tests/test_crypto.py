"""The crypto recipes: sealed records, padding, key files, recovery codes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.crypto import DecryptionFailed, WrongPassphrase, b64d, b64e
from rxfed.crypto.keyfile import KdfCost, open_keyfile, seal_keyfile
from rxfed.crypto.records import MIN_BUCKET, VaultKeyring, bucket_size, open_record, pad, seal_record, unpad
from rxfed.crypto.recovery import RecoveryCode

AD = b'{"owner":"p","record":"r","version":1}'


def test_record_round_trip_and_fresh_key_per_seal():
    ring = VaultKeyring.generate()
    a, b = seal_record(ring, AD, b"hello"), seal_record(ring, AD, b"hello")
    assert a != b
    assert open_record(ring, AD, a) == open_record(ring, AD, b) == b"hello"


@pytest.mark.parametrize("mutate", [
    lambda s: s[:-1] + bytes([s[-1] ^ 1]),          # body tag
    lambda s: s[:40] + bytes([s[40] ^ 1]) + s[41:],  # wrapped key
    lambda s: s[:2] + (9).to_bytes(4, "big") + s[6:],  # unknown epoch
    lambda s: b"R2" + s[2:],
    lambda s: s[:50],
    lambda s: b"",
])
def test_tampered_record_fails(mutate):
    ring = VaultKeyring.generate()
    with pytest.raises(DecryptionFailed):
        open_record(ring, AD, mutate(seal_record(ring, AD, b"secret")))


def test_associated_data_binds_owner_id_and_version():
    ring = VaultKeyring.generate()
    sealed = seal_record(ring, AD, b"secret")
    with pytest.raises(DecryptionFailed):
        open_record(ring, AD.replace(b'"version":1', b'"version":2'), sealed)
    with pytest.raises(DecryptionFailed):
        open_record(VaultKeyring.generate(), AD, sealed)


def test_rotated_keyring_reads_old_and_new():
    ring = VaultKeyring.generate()
    old = seal_record(ring, AD, b"old")
    rotated = ring.rotated()
    new = seal_record(rotated, AD, b"new")
    assert open_record(rotated, AD, old) == b"old"
    with pytest.raises(DecryptionFailed):
        open_record(ring, AD, new)
    assert VaultKeyring.from_bytes(rotated.to_bytes()) == rotated


@given(st.binary(max_size=70_000))
def test_padding_round_trip_and_buckets(data):
    padded = pad(data)
    assert len(padded) == bucket_size(len(data)) > len(data)
    assert len(padded) >= MIN_BUCKET
    assert unpad(padded) == data


def test_bucket_sizes():
    assert [bucket_size(n) for n in (0, 255, 256, 1000, 65535, 65536, 200_000)] == [
        256, 256, 512, 1024, 65536, 131072, 262144]


def test_keyfile():
    cost = KdfCost.named("min")
    sealed = seal_keyfile(b"secrets", "pass phrase", cost)
    assert open_keyfile(sealed, "pass phrase") == b"secrets"
    with pytest.raises(WrongPassphrase):
        open_keyfile(sealed, "wrong")
    doc = json.loads(sealed)
    doc["kdf"]["opslimit"] += 1  # the cost is authenticated: no silent downgrade
    with pytest.raises(WrongPassphrase):
        open_keyfile(json.dumps(doc).encode(), "pass phrase")
    with pytest.raises(WrongPassphrase):
        open_keyfile(b"not json", "pass phrase")
    with pytest.raises(ValueError):
        seal_keyfile(b"x", "", cost)


def test_recovery_code():
    code = RecoveryCode.generate()
    text = str(code)
    assert len(code.secret) * 8 >= 128
    assert RecoveryCode.parse(text.lower().replace("-", " ")) == code
    typo = text[:5] + ("A" if text[5] != "A" else "B") + text[6:]
    with pytest.raises(ValueError, match="typo"):
        RecoveryCode.parse(typo)
    with pytest.raises(ValueError):
        RecoveryCode.parse("1234")
    keys = {code.bundle_key(), code.box_secret(), code.auth_key().seed}
    assert len(keys) == 3


@given(st.binary(max_size=100))
def test_b64_round_trip(data):
    assert b64d(b64e(data)) == data


@pytest.mark.parametrize("text", ["a", "ab=", "a+b/", "AB", "é", "AAA=", "AA==", "AAAA\n", " AAA", "AA AA",
                                  "AAB", "AAAAAB", "A*AA", "\x00AAA", "AAAAA"])
def test_b64_refuses_non_canonical(text):
    with pytest.raises(ValueError):
        b64d(text)


def _reference_b64d(text):
    """Unpadded base64url as its rules say: the alphabet, no padding, and the one text that
    re-encodes to itself (the decoder is written for speed; this one for reading)."""
    import base64
    import re

    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError(text)
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise ValueError(text)
    return data


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n\x00é"


@given(st.one_of(st.text(alphabet=_B64_CHARS, max_size=14),
                 st.binary(max_size=30).map(b64e).flatmap(
                     lambda t: st.tuples(st.integers(0, max(0, len(t) - 1)), st.sampled_from(_B64_CHARS)).map(
                         lambda m: t[:m[0]] + m[1] + t[m[0] + 1:] if t else m[1]))))
def test_b64_accepts_exactly_what_the_reference_accepts(text):
    try:
        expected = _reference_b64d(text)
    except ValueError:
        with pytest.raises(ValueError):
            b64d(text)
    else:
        assert b64d(text) == expected and b64e(expected) == text


def test_verify_signature_refuses_every_wrong_input():
    from rxfed.crypto import BadSignature, SigningKeyPair, verify_signature

    key, other = SigningKeyPair.generate(), SigningKeyPair.generate()
    sig = key.sign(b"message")
    assert verify_signature(key.public, b"message", sig) == b"message"
    assert verify_signature(key.public, bytearray(b"message"), sig) == b"message"
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    for args in [(other.public, b"message", sig), (key.public, b"messagE", sig), (key.public, b"message", flipped),
                 (key.public[:31], b"message", sig), (key.public + b"\0", b"message", sig),
                 (key.public, b"message", sig[:63]), (key.public, b"message", sig + b"\0"),
                 (bytearray(key.public), b"message", sig), (key.public, "message", sig), (None, b"message", sig),
                 (key.public, b"message", None), (b"\0" * 32, b"message", b"\0" * 64)]:
        with pytest.raises(BadSignature):
            verify_signature(*args)
