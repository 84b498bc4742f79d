# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Known answers for the manifest signatures: RFC 8032 Ed25519 and DSSE v1 PAE."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidSignature,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse

# RFC 8032 section 7.1, TEST 1 to TEST 3: (secret key, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
        "4a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032, ids=["test1", "test2", "test3"])
def test_rfc8032_ed25519(secret, public, message, signature):
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert dsse.raw_public(key) == bytes.fromhex(public)
    assert key.sign(bytes.fromhex(message)) == bytes.fromhex(signature)
    verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    verifier.verify(bytes.fromhex(signature), bytes.fromhex(message))
    with pytest.raises(InvalidSignature):
        verifier.verify(bytes.fromhex(signature), bytes.fromhex(message) + b"\x00")


def test_keyid_is_sha256_of_raw_public_key():
    public = bytes.fromhex(RFC8032[0][1])
    assert dsse.keyid_of(public) == hashlib.sha256(public).hexdigest()
    assert len(dsse.keyid_of(public)) == 64


def test_dsse_pae_spec_vector():
    assert (
        dsse.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_dsse_pae_counts_bytes_not_characters():
    # "application/" is 12 bytes, "é" and "ü" two each in UTF-8, "€" three.
    assert dsse.pae("application/é", "ü€".encode()) == "DSSEv1 14 application/é 5 ü€".encode()


def test_dsse_pae_empty_payload():
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


def test_dsse_signature_is_ed25519_over_pae():
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032[0][0]))
    envelope = dsse.sign(b"hello world", "http://example.com/HelloWorld", [key])
    (signature,) = envelope.signatures
    assert signature.keyid == dsse.keyid_of(bytes.fromhex(RFC8032[0][1]))
    assert signature.sig == key.sign(b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")
