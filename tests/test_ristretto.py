"""The ristretto255 group of rxfed/crypto/ristretto.py against the RFCs' test vectors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxfed.crypto.ristretto import (
    IDENTITY,
    ExponentKey,
    GroupHasher,
    InvalidElement,
    Tagger,
    base_exponentiate,
    element_from_uniform,
    expand_message_xmd,
    hash_to_group,
    is_element,
    random_scalar,
    scalar_from_uniform,
    tag,
)

#: RFC 9496 Appendix A.1: the encodings of 0 to 15 times the generator.
SMALL_MULTIPLES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
    "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
    "f64746d3c92b13050ed8d80236a7f0007c3b3f962f5ba793d19a601ebb1df403",
    "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
    "903293d8f2287ebe10e2374dc1a53e0bc887e592699f02d077d5263cdd55601c",
    "02622ace8f7303a31cafc63f8fc48fdc16e1c8c8d234b2f0d6685282a9076031",
    "20706fd788b2720a1ed2a5dad4952b01f413bcf0e7564de8cdc816689e2db95f",
    "bce83f8ba5dd2fa572864c24ba1810f9522bc6004afe95877ac73241cafdab42",
    "e4549ee16b9aa03099ca208c67adafcafa4c3f3e4e5303de6026e3ca8ff84460",
    "aa52e000df2e16f55fb1032fc33bc42742dad6bd5a8fc0be0167436c5948501f",
    "46376b80f409b29dc2b5f6f0c52591990896e5716f41477cd30085ab7f10301e",
    "e0c418f7c8d9c4cdd7395b93ea124f3ad99021bb681dfc3302a9d99a2e53e64e",
]

#: RFC 9496 Appendix A.2: encodings every implementation must refuse.
BAD_ENCODINGS = [
    # non-canonical field encodings
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    # negative field elements
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
    "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
    "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
    "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
    "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
    "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
    # non-square x^2
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
    "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
    "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
    "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
    "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
    "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
    # negative xy value
    "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "a45fdc55c76448c049a1ab33f17023edfb2be3581e9c7aade8a6125215e04220",
    "d483fe813c6ba647ebbfd3ec41adca1c6130c2beeee9d9bf065c8d151c5f396e",
    "8a2e1d30050198c65a54483123960ccc38aef6848e1ec8f5f780e8523769ba32",
    "32888462f8b486c68ad7dd9610be5192bbeaf3b443951ac1a8118419d9fa097b",
    "227142501b9d4355ccba290404bde41575b037693cef1f438c47f8fbf35d1165",
    "5c37cc491da847cfeb9281d407efc41e15144c876e0170b499a96a22ed31e01e",
    "445425117cb8c90edcbc7c1cc0e74f747f2c1efa5630a967c64f287792a48a4b",
    # s = -1, which gives y = 0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

#: RFC 9496 Appendix A.3: element derivation. The inputs are SHA-512 of these labels.
DERIVATION_LABELS = [
    "Ristretto is traditionally a short shot of espresso coffee",
    "made with the normal amount of ground coffee but extracted with",
    "about half the amount of water in the same amount of time",
    "by using a finer grind.",
    "This produces a concentrated shot of coffee per volume.",
    "Just pulling a normal shot short will produce a weaker shot",
    "and is not a Ristretto as some believe.",
]
DERIVATION = [
    ("5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1"
     "4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
     "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"),
    ("f116b34b8f17ceb56e8732a60d913dd10cce47a6d53bee9204be8b44f6678b27"
     "0102a56902e2488c46120e9276cfe54638286b9e4b3cdb470b542d46c2068d38",
     "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b"),
    ("8422e1bbdaab52938b81fd602effb6f89110e1e57208ad12d9ad767e2e25510c"
     "27140775f9337088b982d83d7fcf0b2fa1edffe51952cbe7365e95c86eaf325c",
     "006ccd2a9e6867e6a2c5cea83d3302cc9de128dd2a9a57dd8ee7b9d7ffe02826"),
    ("ac22415129b61427bf464e17baee8db65940c233b98afce8d17c57beeb7876c2"
     "150d15af1cb1fb824bbd14955f2b57d08d388aab431a391cfc33d5bafb5dbbaf",
     "f8f0c87cf237953c5890aec3998169005dae3eca1fbb04548c635953c817f92a"),
    ("165d697a1ef3d5cf3c38565beefcf88c0f282b8e7dbd28544c483432f1cec767"
     "5debea8ebb4e5fe7d6f6e5db15f15587ac4d4d4a1de7191e0c1ca6664abcc413",
     "ae81e7dedf20a497e10c304a765c1767a42d6e06029758d2d7e8ef7cc4c41179"),
    ("a836e6c9a9ca9f1e8d486273ad56a78c70cf18f0ce10abb1c7172ddd605d7fd2"
     "979854f47ae1ccf204a33102095b4200e5befc0465accc263175485f0e17ea5c",
     "e2705652ff9f5e44d3e841bf1c251cf7dddb77d140870d1ab2ed64f1a9ce8628"),
    ("2cdc11eaeb95daf01189417cdddbf95952993aa9cb9c640eb5058d09702c7462"
     "2c9965a697a3b345ec24ee56335b556e677b30e6f90ac77d781064f866a3c982",
     "80bd07262511cdde4863f8a7434cef696750681cb9510eea557088f76d9e5065"),
]
#: RFC 9496 Appendix A.3: four inputs (non-canonical field elements among them) that map to one element.
CONVERGENT = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff1200000000000000000000000000000000000000000000000000000000000000",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0000000000000000000000000000000000000000000000000000000000000080ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "00000000000000000000000000000000000000000000000000000000000000001200000000000000000000000000000000000000000000000000000000000080",
]
CONVERGENT_ELEMENT = "304282791023b73128d277bdcb5c7746ef2eac08dde9f2983379cb8e5ef0517f"

#: RFC 9380 Appendix K.3: expand_message_xmd(SHA-512).
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (b"abcdef0123456789", 0x20, "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"),
    (b"q128_" + b"q" * 128, 0x20, "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3"),
    (b"a512_" + b"a" * 512, 0x20, "57b5f7e766d5be68a6bfe1768e3c2b7f1228b3e4b3134956dd73a59b954c66f4"),
    (b"", 0x80, "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
                "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
                "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
                "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961"),
]

#: RFC 9497 Appendix A.1.1 (OPRF, ristretto255-SHA512): BlindedElement = Blind * HashToGroup(Input),
#: HashToGroup being RFC 9380's ristretto255_XMD:SHA-512_R255MAP_RO_ with this DST, and
#: EvaluationElement = skSm * BlindedElement.
OPRF_DST = b"HashToGroup-OPRFV1-\x00-ristretto255-SHA512"
OPRF_BLIND = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"
OPRF_KEY = "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"
OPRF_VECTORS = [
    ("00", "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
     "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e"),
    ("5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a", "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
     "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25"),
]


def _scalar(i: int) -> bytes:
    return i.to_bytes(32, "little")


def test_small_multiples_of_the_generator():
    for i, encoding in enumerate(SMALL_MULTIPLES[1:], 1):
        assert base_exponentiate(_scalar(i)).hex() == encoding
        assert is_element(bytes.fromhex(encoding))
    # The identity is a valid encoding, but never an element a session takes or makes.
    assert SMALL_MULTIPLES[0] == IDENTITY.hex() and not is_element(IDENTITY)
    with pytest.raises(ValueError):
        base_exponentiate(_scalar(0))


def test_exponentiation_matches_small_multiples():
    generator = bytes.fromhex(SMALL_MULTIPLES[1])
    for i in range(2, 16):
        assert ExponentKey(_scalar(i)).exponentiate(generator).hex() == SMALL_MULTIPLES[i]


@pytest.mark.parametrize("encoding", BAD_ENCODINGS)
def test_bad_encodings_are_refused(encoding):
    data = bytes.fromhex(encoding)
    assert not is_element(data)
    with pytest.raises(InvalidElement):
        ExponentKey(_scalar(7)).exponentiate(data)


def test_identity_and_wrong_lengths_are_refused():
    key = ExponentKey(_scalar(7))
    for data in (IDENTITY, b"", bytes.fromhex(SMALL_MULTIPLES[1])[:31], bytes.fromhex(SMALL_MULTIPLES[1]) + b"\0"):
        assert not is_element(data)
        with pytest.raises(InvalidElement):
            key.exponentiate(data)
    with pytest.raises(InvalidElement):
        key.exponentiate("e2f2ae0a")  # type: ignore[arg-type]


def test_element_derivation_vectors():
    for label, (uniform, element) in zip(DERIVATION_LABELS, DERIVATION):
        assert hashlib.sha512(label.encode()).hexdigest() == uniform
        assert element_from_uniform(bytes.fromhex(uniform)).hex() == element
    for uniform in CONVERGENT:
        assert element_from_uniform(bytes.fromhex(uniform)).hex() == CONVERGENT_ELEMENT
    with pytest.raises(ValueError):
        element_from_uniform(bytes(63))


@pytest.mark.parametrize("msg, length, expected", XMD_VECTORS)
def test_expand_message_xmd_sha512_vectors(msg, length, expected):
    assert expand_message_xmd(msg, XMD_DST, length).hex() == expected


def test_expand_message_xmd_oversize_dst_and_lengths():
    long_dst = b"x" * 300
    assert expand_message_xmd(b"m", long_dst, 64) == expand_message_xmd(
        b"m", hashlib.sha512(b"H2C-OVERSIZE-DST-" + long_dst).digest(), 64)
    assert GroupHasher(long_dst)(b"m") == hash_to_group(b"m", long_dst)
    for bad in (0, 255 * 64 + 1):
        with pytest.raises(ValueError):
            expand_message_xmd(b"", XMD_DST, bad)


@pytest.mark.parametrize("input_hex, blinded, evaluated", OPRF_VECTORS)
def test_hash_to_group_matches_rfc9497(input_hex, blinded, evaluated):
    point = hash_to_group(bytes.fromhex(input_hex), OPRF_DST)
    assert ExponentKey(bytes.fromhex(OPRF_BLIND)).exponentiate(point).hex() == blinded
    # libsodium's ristretto255 multiplication takes the scalar as it is (no clamping).
    assert ExponentKey(bytes.fromhex(OPRF_KEY)).exponentiate(bytes.fromhex(blinded)).hex() == evaluated


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=40), st.binary(max_size=40))
def test_group_hasher_is_hash_to_group_of_prefix_and_element(element, prefix, dst):
    dst = dst or b"d"
    assert GroupHasher(dst, prefix)(element) == hash_to_group(prefix + element, dst)


def test_exponentiation_commutes_and_keys_are_fresh():
    a, b = ExponentKey.generate(), ExponentKey.generate()
    assert a != b and a.scalar != b.scalar
    point = hash_to_group(b"G40", b"test")
    assert a.exponentiate(b.exponentiate(point)) == b.exponentiate(a.exponentiate(point))
    assert a.exponentiate(point) != b.exponentiate(point)
    assert ExponentKey(_scalar(1)).exponentiate(point) == point
    assert a.public == a.exponentiate(bytes.fromhex(SMALL_MULTIPLES[1]))
    assert a.exponentiate_many([point, point]) == [a.exponentiate(point)] * 2


def test_exponent_key_keeps_its_scalar_out_of_repr_and_refuses_zero():
    key = ExponentKey.generate()
    assert key.scalar.hex() not in repr(key) and "scalar" not in repr(key)
    for bad in (bytes(32), b"\x01" * 31, "01" * 32):
        with pytest.raises(ValueError):
            ExponentKey(bad)  # type: ignore[arg-type]


def test_scalars_are_reduced_and_never_zero():
    order = 2**252 + 27742317777372353535851937790883648493
    assert scalar_from_uniform((order + 5).to_bytes(64, "little")) == _scalar(5)
    draws = iter([bytes(64), (order * 3).to_bytes(64, "little"), b"\x09" + bytes(63)])
    assert random_scalar(lambda n: next(draws)) == _scalar(9)
    with pytest.raises(ValueError):
        scalar_from_uniform(bytes(32))


def test_tags_are_keyed_truncated_and_personalised():
    point = hash_to_group(b"x", b"test")
    key = bytes(range(32))
    assert Tagger(key, size=12, person=b"p")(point) == tag(key, point, size=12, person=b"p")
    assert len(tag(key, point, size=12, person=b"p")) == 12
    assert tag(key, point, size=12, person=b"p") != tag(bytes(32), point, size=12, person=b"p")
    assert tag(key, point, size=12, person=b"p") != tag(key, point, size=12, person=b"q")


def test_importing_leaves_no_file_in_the_temporary_directory(tmp_path):
    """rbcl writes its bundled libsodium to a temporary file at import; it is removed."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = "import tempfile, rxfed.crypto.ristretto as r; assert tempfile.gettempdir() == %r; print(r.hash_to_group(b'x', b'y').hex())"
    out = subprocess.run([sys.executable, "-c", code % str(tmp_path)], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == hash_to_group(b"x", b"y").hex()
    assert list(tmp_path.iterdir()) == []
    assert tempfile.gettempdir() != str(tmp_path)


def test_a_node_loads_rbcl_only_when_it_runs_a_psi_session():
    """rbcl (its own libsodium, and doctest, pdb and unittest through its dependencies) is
    loaded at the first group operation, not when the node's matching code is imported: an
    idle node does not carry it (the idle-RSS target)."""
    code = ("import sys, rxfed.node.app, rxfed.node.matching, rxfed_plugins.matching, rxfed.protocol.psi\n"
            "assert 'rbcl' not in sys.modules, 'imported at start'\n"
            "import rxfed.crypto.ristretto as r; r.hash_to_group(b'x', b'y')\n"
            "assert 'rbcl' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
