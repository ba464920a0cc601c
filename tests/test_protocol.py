"""The sans-I/O protocol core: canonical JSON and signed requests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.crypto import SigningKeyPair
from rxfed.errors import BadRequest, Unauthorized
from rxfed.protocol.auth import SignedRequest, sign_request
from rxfed.protocol.canonical import canonical, loads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_round_trip(value):
    assert canonical(loads(canonical(value))) == canonical(value)


@given(json_values)
def test_fast_canonical_equals_reference(value):
    from rxfed.protocol.canonical import reference_canonical

    assert canonical(value) == reference_canonical(value)


@given(st.dictionaries(st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0x1F700,
                                                       blacklist_categories=("Cs",)), max_size=3), st.integers(-1000, 1000), max_size=6))
def test_key_order_is_utf16(value):
    from rxfed.protocol.canonical import reference_canonical

    assert canonical(value) == reference_canonical(value)


def test_canonical_vectors():
    # RFC 8785 ordering is by UTF-16 code units; escapes as ECMAScript JSON.stringify.
    assert canonical({"b": 1, "a": [True, None, "x"], "\u20ac": 0, "\U0001f600": 0, "\ufb01": 0}) == (
        '{"a":[true,null,"x"],"b":1,"\u20ac":0,"\U0001f600":0,"\ufb01":0}'.encode())
    assert canonical("\n\t\x01\"\\/\u2028") == b'"\\n\\t\\u0001\\"\\\\/\xe2\x80\xa8"'


@pytest.mark.parametrize("bad", [1.5, float("nan"), 2**53, {1: 2}, b"bytes", "\ud800",
                                 # nested, where the check takes its fast path for exact types
                                 {"a": 2**53}, {"a": -(2**53)}, {"a": [1.5]}, [{"k": b"x"}], {"a": {"b": float("inf")}},
                                 {"a": {1: 2}}, ({"a": (None, {"b": {"c": 2**60}})},), {"a": {"b": "\udfff"}}])
def test_canonical_refuses(bad):
    with pytest.raises(BadRequest):
        canonical(bad)


@pytest.mark.parametrize("raw", [b'{"a":1,"a":2}', b"1.0", b"NaN", b"1e5", b"\xff", b"{", b"9007199254740992",
                                 b'\xef\xbb\xbf{}', b'{"a":{"b":1,"b":2}}', b'[{"a":-9007199254740992}]', b'{"a":-Infinity}',
                                 b'"\\ud800"'])
def test_strict_parser_refuses(raw):
    with pytest.raises(BadRequest):
        loads(raw)


class _Int(int):
    pass


class _Str(str):
    pass


def test_canonical_takes_subclasses_of_the_json_types_as_those_types():
    assert canonical({"a": _Int(3), _Str("b"): [_Str("x"), True]}) == b'{"a":3,"b":["x",true]}'
    with pytest.raises(BadRequest):
        canonical({"a": [_Int(2**53)]})


@given(method=st.text(max_size=8), target=st.text(max_size=30), destination=st.text(max_size=20),
       origin=st.none() | st.text(max_size=20), created=st.integers(-(2**53) + 1, 2**53 - 1) | st.booleans(),
       nonce=st.binary(min_size=16, max_size=16), digest=st.binary(min_size=32, max_size=32))
def test_signing_bytes_written_out_equal_the_canonical_object(method, target, destination, origin, created, nonce, digest):
    from rxfed.protocol.auth import _signing_object, signing_bytes
    from rxfed.protocol.canonical import reference_canonical

    fields = dict(method=method, target=target, destination=destination, origin=origin, key=b"k" * 32,
                  created=created, nonce=nonce, digest=digest)
    try:
        expected = reference_canonical(_signing_object(**fields))
    except (BadRequest, UnicodeEncodeError):  # a lone surrogate
        with pytest.raises(BadRequest):
            signing_bytes(**fields)
    else:
        assert signing_bytes(**fields) == expected


@pytest.mark.parametrize("created", [2**53, -(2**53), 2**64, 1.5])
def test_signing_bytes_refuse_a_time_without_a_canonical_form(created):
    from rxfed.protocol.auth import signing_bytes

    with pytest.raises(BadRequest):
        signing_bytes(method="POST", target="/", destination="d", origin=None, key=b"k" * 32, created=created,
                      nonce=b"n" * 16, digest=b"d" * 32)


def _signed(key, **kw):
    args = dict(method="POST", target="/v1/vault?x=1", destination="node.example:443", body=b"{}", now=1000)
    args.update(kw)
    return SignedRequest.from_headers(sign_request(key, **args))


def test_signed_request_verifies_every_field():
    key = SigningKeyPair.generate()
    good = dict(method="POST", target="/v1/vault?x=1", destination="node.example:443", body=b"{}", now=1000)
    _signed(key).verify(key.public, **good)
    for field, value in [("method", "PUT"), ("target", "/v1/vault?x=2"), ("destination", "other:443"),
                         ("body", b"{ }")]:
        with pytest.raises(Unauthorized, match="signature"):
            _signed(key).verify(key.public, **{**good, field: value})
    with pytest.raises(Unauthorized, match="window"):
        _signed(key).verify(key.public, **{**good, "now": 1000 + 301})
    with pytest.raises(Unauthorized, match="signature"):
        _signed(key).verify(SigningKeyPair.generate().public, **good)


def test_each_signature_has_a_fresh_nonce():
    key = SigningKeyPair.generate()
    assert _signed(key).nonce != _signed(key).nonce


_manifest_key = SigningKeyPair.generate()


@given(patient=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), epoch=st.integers(1, 4096),
       counter=st.integers(1, 2**31 - 1), issued=st.integers(0, 2**40),
       entries=st.dictionaries(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
                               st.tuples(st.integers(1, 1000), st.binary(min_size=32, max_size=32)), max_size=3))
def test_a_manifests_canonical_bytes_written_out_equal_canonical_json(patient, epoch, counter, issued, entries):
    import json

    from rxfed.protocol.canonical import reference_canonical
    from rxfed.protocol.vault import Manifest

    issued_manifest = Manifest.issue(_manifest_key, patient=patient, epoch=epoch, counter=counter, entries=entries,
                                     now=issued)
    expected = reference_canonical(issued_manifest.signed)
    assert issued_manifest.canonical_bytes() == expected == canonical(issued_manifest.signed)
    # as a node parses it from a client's body, whatever its key order and spacing
    wire = json.dumps({"sig": issued_manifest.signed["sig"], "body": dict(reversed(issued_manifest.signed["body"].items()))},
                      indent=1)
    parsed = Manifest.from_json(loads(wire), "m", _manifest_key.public)
    assert parsed.canonical_bytes() == expected
