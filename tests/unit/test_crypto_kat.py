# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Known-answer tests for the primitives: HKDF (RFC 5869), AES-KWP (RFC 5649), AES-256-GCM."""

from __future__ import annotations

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import aead, kwp
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256

h = bytes.fromhex

# RFC 5869 Appendix A, test cases 1-3 (SHA-256): ikm, salt, info, L, OKM.
HKDF_CASES = [
    pytest.param(
        h("0b" * 22),
        h("000102030405060708090a0b0c"),
        h("f0f1f2f3f4f5f6f7f8f9"),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="rfc5869-case1",
    ),
    pytest.param(
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="rfc5869-case2",
    ),
    pytest.param(
        h("0b" * 22),
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="rfc5869-case3-empty-salt-and-info",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), HKDF_CASES)
def test_hkdf_sha256_matches_rfc5869(ikm, salt, info, length, okm):
    assert hkdf_sha256(ikm, salt, info, length).hex() == okm


def test_hkdf_sha256_defaults_to_32_bytes_and_depends_on_every_input():
    base = hkdf_sha256(b"k" * 32, b"salt", b"info")
    assert len(base) == 32
    assert hkdf_sha256(b"K" * 32, b"salt", b"info") != base
    assert hkdf_sha256(b"k" * 32, b"Salt", b"info") != base
    assert hkdf_sha256(b"k" * 32, b"salt", b"Info") != base


# RFC 5649 section 6: both examples use the same 192-bit KEK.
RFC5649_KEK = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
KWP_CASES = [
    pytest.param(
        h("c37b7e6492584340bed12207808941155068f738"),
        "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
        id="rfc5649-20-octets",
    ),
    pytest.param(h("466f7250617369"), "afbeb0f07dfbf5419200f2ccb50bb24f", id="rfc5649-7-octets"),
]


@pytest.mark.parametrize(("key", "wrapped"), KWP_CASES)
def test_kwp_wrap_matches_rfc5649(key, wrapped):
    assert kwp.wrap(RFC5649_KEK, key).hex() == wrapped


@pytest.mark.parametrize(("key", "wrapped"), KWP_CASES)
def test_kwp_unwrap_matches_rfc5649(key, wrapped):
    assert kwp.unwrap(RFC5649_KEK, h(wrapped), "test key") == key


def test_kwp_round_trip_with_256_bit_kek_wraps_a_vrk_into_40_bytes():
    kek = bytes(range(32))
    vrk = bytes(range(100, 132))
    wrapped = kwp.wrap(kek, vrk)
    assert len(wrapped) == 40
    assert wrapped[8:] != vrk
    assert kwp.unwrap(kek, wrapped, "keyslot") == vrk


def test_kwp_unwrap_with_another_kek_is_refused():
    wrapped = kwp.wrap(b"\x01" * 32, b"\x02" * 32)
    with pytest.raises(VerificationError, match="keyslot failed to unwrap"):
        kwp.unwrap(b"\x03" * 32, wrapped, "keyslot")


@pytest.mark.parametrize("position", range(40))
def test_kwp_unwrap_refuses_any_changed_byte(position):
    kek = b"\x01" * 32
    wrapped = bytearray(kwp.wrap(kek, b"\x02" * 32))
    wrapped[position] ^= 0x01
    with pytest.raises(VerificationError):
        kwp.unwrap(kek, bytes(wrapped), "keyslot")


@pytest.mark.parametrize("length", [0, 8, 15, 17, 39, 41])
def test_kwp_unwrap_refuses_impossible_lengths_on_every_cryptography_version(length):
    # cryptography 38 raises ValueError for some of these; we always raise VerificationError.
    with pytest.raises(VerificationError, match=f"found {length} bytes"):
        kwp.unwrap(b"\x01" * 32, b"\x00" * length, "keyslot")


def test_kwp_refuses_a_kek_of_the_wrong_size():
    with pytest.raises(InputError, match="16, 24 or 32 bytes, found 20"):
        kwp.wrap(b"\x01" * 20, b"\x02" * 32)


# The GCM specification (McGrew and Viega), AES-256 test cases 13 to 16.
GCM_KEY = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
GCM_IV = h("cafebabefacedbaddecaf888")
GCM_PT = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
GCM_CT = h(
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
)
GCM_CASES = [
    pytest.param(bytes(32), bytes(12), b"", b"", "", "530f8afbc74536b9a963b4f1c4cb738b", id="gcm-case13"),
    pytest.param(
        bytes(32),
        bytes(12),
        bytes(16),
        b"",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
        id="gcm-case14",
    ),
    pytest.param(GCM_KEY, GCM_IV, GCM_PT, b"", GCM_CT.hex(), "b094dac5d93471bdec1a502270e3cc6c", id="gcm-case15"),
    pytest.param(
        GCM_KEY,
        GCM_IV,
        GCM_PT[:60],
        h("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        GCM_CT[:60].hex(),
        "76fc6ece0f4e1768cddf8853bb2d551b",
        id="gcm-case16-with-aad",
    ),
]


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), GCM_CASES)
def test_aes_gcm_seal_matches_the_gcm_specification(key, iv, pt, aad, ct, tag):
    assert aead.seal(key, iv, pt, aad).hex() == ct + tag


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), GCM_CASES)
def test_aes_gcm_open_matches_the_gcm_specification(key, iv, pt, aad, ct, tag):
    assert aead.open_(key, iv, h(ct + tag), aad, "vector") == pt


def test_aes_gcm_open_refuses_changed_aad():
    sealed = aead.seal(GCM_KEY, GCM_IV, GCM_PT[:60], b"header")
    with pytest.raises(VerificationError, match="^blob 'x' failed authentication: .*tampered"):
        aead.open_(GCM_KEY, GCM_IV, sealed, b"Header", "blob 'x'")


def test_aes_gcm_open_refuses_a_changed_tag_bit():
    sealed = bytearray(aead.seal(GCM_KEY, GCM_IV, GCM_PT[:60], b""))
    sealed[-1] ^= 0x80
    with pytest.raises(VerificationError, match="failed authentication"):
        aead.open_(GCM_KEY, GCM_IV, bytes(sealed), b"", "blob 'x'")


def test_aes_gcm_open_refuses_another_key():
    sealed = aead.seal(GCM_KEY, GCM_IV, GCM_PT, b"")
    with pytest.raises(VerificationError):
        aead.open_(bytes(32), GCM_IV, sealed, b"", "blob 'x'")


def test_aes_gcm_requires_aes_256_and_a_96_bit_nonce():
    with pytest.raises(InputError, match="32-byte key"):
        aead.seal(bytes(16), GCM_IV, b"", b"")
    with pytest.raises(InputError, match="12-byte nonce"):
        aead.seal(GCM_KEY, bytes(16), b"", b"")
