"""Group message crypto: sender keys, sealed messages, franking commitments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair
from rxfed.crypto.groups import (
    MAX_EPOCH,
    MESSAGE_OVERHEAD,
    SEALED_SENDER_KEY_SIZE,
    SenderKey,
    check_commitment,
    commitment,
    new_franking_key,
    open_message,
    open_sender_key,
    seal_message,
    seal_sender_key,
)
from rxfed.crypto.records import bucket_size

AD = b'{"community":"c","epoch":1,"sender":"s"}'


def test_sender_key_round_trip_and_secret_not_in_repr():
    key = SenderKey.generate(7)
    assert SenderKey.from_bytes(key.to_bytes()) == key
    assert key.to_bytes()[:4] == b"\0\0\0\x07"
    assert key.key.hex() not in repr(key) and "key=" not in repr(key)
    assert SenderKey.generate(7).key != key.key


@pytest.mark.parametrize("epoch", [0, -1, MAX_EPOCH + 1])
def test_sender_key_epoch_range(epoch):
    with pytest.raises(ValueError):
        SenderKey.generate(epoch)


@pytest.mark.parametrize("data", [b"", b"\0" * 35, b"\0\0\0\x01" + b"k" * 33, b"\0\0\0\0" + b"k" * 32])
def test_malformed_sender_key_bytes(data):
    with pytest.raises(DecryptionFailed):
        SenderKey.from_bytes(data)


@settings(max_examples=50)
@given(st.binary(max_size=5000), st.binary(max_size=64))
def test_message_round_trip_and_length_is_bucket_plus_overhead(plaintext, ad):
    key = SenderKey.generate(1)
    sealed = seal_message(key, ad, plaintext)
    assert len(sealed) == bucket_size(len(plaintext)) + MESSAGE_OVERHEAD
    assert open_message(key, ad, sealed) == plaintext


@pytest.mark.parametrize("change", ["key", "ad", "tag", "nonce", "truncate"])
def test_message_fails_closed(change):
    key = SenderKey.generate(1)
    sealed = seal_message(key, AD, b"hello")
    other_key, ad = key, AD
    if change == "key":
        other_key = SenderKey.generate(1)
    elif change == "ad":
        ad = AD.replace(b'"epoch":1', b'"epoch":2')
    elif change == "tag":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    elif change == "nonce":
        sealed = bytes([sealed[0] ^ 1]) + sealed[1:]
    else:
        sealed = sealed[:30]
    with pytest.raises(DecryptionFailed):
        open_message(other_key, ad, sealed)


def test_franking_commitment_binds_key_and_message():
    kf = new_franking_key()
    c = commitment(kf, b"take your meds")
    assert len(kf) == len(c) == 32
    assert check_commitment(kf, b"take your meds", c)
    assert not check_commitment(kf, b"stop your meds", c)
    assert not check_commitment(new_franking_key(), b"take your meds", c)
    # HMAC zero-pads short keys: a key with trailing zeros cut off must not pass.
    zero_tail = kf[:31] + b"\0"
    assert not check_commitment(zero_tail[:31], b"take your meds", commitment(zero_tail, b"take your meds"))
    with pytest.raises(ValueError):
        commitment(b"short", b"x")


def test_sender_key_distribution():
    sender, recipient = SigningKeyPair.generate(), BoxKeyPair.generate()
    key = SenderKey.generate(3)
    sealed = seal_sender_key(sender, recipient.public, b"ctx", key)
    assert len(sealed) == SEALED_SENDER_KEY_SIZE
    assert open_sender_key(sender.public, recipient, b"ctx", sealed) == key


@pytest.mark.parametrize("wrong", ["context", "sender", "box", "tamper"])
def test_sender_key_distribution_is_authenticated_and_bound(wrong):
    sender, recipient = SigningKeyPair.generate(), BoxKeyPair.generate()
    sealed = seal_sender_key(sender, recipient.public, b"ctx", SenderKey.generate(3))
    sender_public, box, context = sender.public, recipient, b"ctx"
    if wrong == "context":
        context = b"ctx2"
    elif wrong == "sender":
        sender_public = SigningKeyPair.generate().public
    elif wrong == "box":
        box = BoxKeyPair.generate()
    else:
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        open_sender_key(sender_public, box, context, sealed)


def test_history_link_chains_fixed_size_hashes():
    from rxfed.crypto.groups import HISTORY_START, history_link

    one = history_link(HISTORY_START, b"\1" * 32)
    assert len(one) == 32 and one != history_link(HISTORY_START, b"\2" * 32)
    assert history_link(one, b"\2" * 32) != history_link(history_link(HISTORY_START, b"\2" * 32), b"\1" * 32)
    with pytest.raises(ValueError):
        history_link(HISTORY_START, b"short")


def test_sealed_box_with_a_given_ephemeral_key_is_libsodiums():
    """For test vectors: the same bytes crypto_box_seal makes with that ephemeral key, so
    crypto_box_seal_open opens them."""
    from rxfed.crypto.keys import seal_to

    recipient, ephemeral = BoxKeyPair.generate(), BoxKeyPair.generate()
    sealed = seal_to(recipient.public, b"sender key", ephemeral=ephemeral)
    assert sealed == seal_to(recipient.public, b"sender key", ephemeral=ephemeral)
    assert sealed[:32] == ephemeral.public and len(sealed) == len(seal_to(recipient.public, b"sender key"))
    assert recipient.open_sealed(sealed) == b"sender key"
