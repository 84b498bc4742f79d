# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's attestation proof (module_utils/_attest) against real swtpms with EK certificates.

One named test per attack; each asserts the typed error, the link it names, and
that the node's TPM was left as it was (persistent objects and NV indices). The
EK chain tests need cryptography's X.509 verifier (42+): under Debian 12's
cryptography 38 they skip, saying so; chains are never verified on nodes.
"""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import dataclasses
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import ek_trust
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import Proof, Trust, parse_evidence
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.quote import verify_quote
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import FIXED_TPM, parse_tpm2b_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    ActivationError,
    AttestationError,
    EkChainError,
    EkMismatchError,
    EkPinError,
    KeyAttributesError,
    QuoteError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import x509_verification
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.attest import Attestor
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode
from rig.attest import (  # noqa: F401 pylint: disable=unused-import
    PCRS,
    PROOF_LINKS_CA,
    answer,
    ek_ca,
    ek_tpm,
    ek_tpm_pair,
    evidence,
    now,
    other_ek_ca,
    prove,
    tpm_handles,
)
from rig.swtpm import Swtpm

pytestmark = pytest.mark.swtpm

needs_verifier = pytest.mark.skipif(
    x509_verification is None,
    reason="this cryptography has no X.509 path verifier with extension policies (Debian's 38 and 43): EK chains "
    "are verified on the controller",
)
ALL_LINKS_CA = list(PROOF_LINKS_CA)


def refused(exc_info, link: str) -> str:
    """The error names the link first, in plain words."""
    err = exc_info.value
    assert isinstance(err, AttestationError)
    assert err.link == link
    assert str(err).startswith(f"{link}: FAILED: ")
    return str(err)


def with_public(doc: dict, field: str, mutate) -> dict:
    """A copy of the evidence with one TPM2B_PUBLIC changed by mutate(tpm2_pytss TPMT_PUBLIC)."""
    from tpm2_pytss import TPM2B_PUBLIC

    pub, _size = TPM2B_PUBLIC.unmarshal(doc[field])
    mutate(pub.publicArea)
    return {**doc, field: bytes(pub.marshal())}


def run_until_refused(tcti: str, trust: Trust, doc: dict, answer_tcti: str = ""):
    """Run the proof on doc; returns (Proof, exc_info) so a test can look at the links too."""
    proof = Proof(parse_evidence(doc, "pve1"), trust, now())
    with pytest.raises(AttestationError) as exc_info:
        proof.check_identity()
        challenge = proof.challenge(PCRS)
        proof.check_answers(challenge, answer(answer_tcti or tcti, challenge.request()))
    return proof, exc_info


# -- the chain ---------------------------------------------------------------------------------------------
@needs_verifier
def test_trusted_chain_enrolls(ek_tpm, ek_ca):
    proof = prove(ek_tpm.tcti, Trust("ca", ca_dir=str(ek_ca.trust_dir)))
    assert [link.name for link in proof.links] == ALL_LINKS_CA
    assert all(link.passed for link in proof.links)
    record = proof.record()
    assert record["trust"] == "ca" and len(record["ek_chain"]) == 3  # EK certificate, intermediate, root
    assert record["srk_name"] == evidence(ek_tpm.tcti)["srk_name"].hex()
    assert proof.quote.selection == str(PCRS)


@needs_verifier
def test_certificate_from_another_ca_refused(ek_tpm, ek_ca, other_ek_ca):
    doc = evidence(ek_tpm.tcti)
    before = tpm_handles(ek_tpm.tcti)
    proof, exc_info = run_until_refused(ek_tpm.tcti, Trust("ca", ca_dir=str(other_ek_ca.trust_dir)), doc)
    message = refused(exc_info, "EK certificate chain")
    assert isinstance(exc_info.value, EkChainError)
    assert "does not chain to a root in" in message and str(other_ek_ca.trust_dir) in message
    assert [(link.name, link.passed) for link in proof.links] == [("EK certificate chain", False)]
    assert tpm_handles(ek_tpm.tcti) == before


@needs_verifier
def test_tpm_manufactured_by_another_ca_refused(other_ek_ca, ek_ca):
    with Swtpm(manufacture=other_ek_ca.manufacture) as tpm:
        with TpmNode(tpm.tcti) as node:
            node.provision()
        _proof, exc_info = run_until_refused(tpm.tcti, Trust("ca", ca_dir=str(ek_ca.trust_dir)), evidence(tpm.tcti))
    assert isinstance(exc_info.value, EkChainError)


@needs_verifier
def test_missing_ek_certificate_refused_naming_the_pin_route(swtpm, ek_ca):
    with TpmNode(swtpm.tcti) as node:
        node.provision()
    _proof, exc_info = run_until_refused(swtpm.tcti, Trust("ca", ca_dir=str(ek_ca.trust_dir)), evidence(swtpm.tcti))
    message = refused(exc_info, "EK certificate chain")
    assert "holds no EK certificate" in message and "ironclaw_ek_trust=pin" in message


@needs_verifier
def test_certificate_whose_key_is_not_the_ek_refused(ek_tpm, ek_ca):
    """A validly signed certificate of another key (here: swtpm_localca's placeholder) presented with this EK."""
    doc = {**evidence(ek_tpm.tcti), "ek_certificate": ek_ca.placeholder_cert_der}
    proof, exc_info = run_until_refused(ek_tpm.tcti, Trust("ca", ca_dir=str(ek_ca.trust_dir)), doc)
    refused(exc_info, "EK public matches its certificate")
    assert isinstance(exc_info.value, EkMismatchError)
    assert [(link.name, link.passed) for link in proof.links] == [
        ("EK certificate chain", True),
        ("EK public matches its certificate", False),
    ]


@needs_verifier
def test_genuine_certificate_with_another_tpms_ek_refused(ek_tpm_pair, ek_ca):
    """TPM B's genuine certificate and EK presented for node A: the chain and the key match, but A's TPM cannot
    activate a credential made for B's EK (the SRK activation link)."""
    a, b = ek_tpm_pair
    doc_a, doc_b = evidence(a.tcti), evidence(b.tcti)
    doc = {**doc_a, "ek_certificate": doc_b["ek_certificate"], "ek_public": doc_b["ek_public"]}
    before = tpm_handles(a.tcti)
    proof, exc_info = run_until_refused(a.tcti, Trust("ca", ca_dir=str(ek_ca.trust_dir)), doc)
    refused(exc_info, "SRK activation")
    assert isinstance(exc_info.value, ActivationError)
    assert tpm_handles(a.tcti) == before


# -- pin and tofu ------------------------------------------------------------------------------------------
def test_no_pin_refused_with_the_value_to_pin_then_enrolled_by_pin(ek_tpm):
    doc = evidence(ek_tpm.tcti)
    _proof, exc_info = run_until_refused(ek_tpm.tcti, Trust("pin"), doc)
    message = refused(exc_info, "EK pin")
    pin = ek_trust.ek_pin(parse_tpm2b_public(doc["ek_public"], "EK"))
    assert f"ironclaw_ek_pin: '{pin}'" in message
    proof = prove(ek_tpm.tcti, Trust("pin", pin=pin))
    assert [link.name for link in proof.links][0] == "EK pin" and all(link.passed for link in proof.links)
    assert proof.record()["ek_public_sha256"] == pin


def test_wrong_pin_refused(ek_tpm_pair):
    a, b = ek_tpm_pair
    pin_b = ek_trust.ek_pin(parse_tpm2b_public(evidence(b.tcti)["ek_public"], "EK"))
    _proof, exc_info = run_until_refused(a.tcti, Trust("pin", pin=pin_b), evidence(a.tcti))
    message = refused(exc_info, "EK pin")
    assert isinstance(exc_info.value, EkPinError) and pin_b in message


def test_tofu_is_recorded_as_tofu(ek_tpm):
    proof = prove(ek_tpm.tcti, Trust("tofu"))
    assert proof.record()["trust"] == "tofu" and proof.record()["ek_chain"] == []
    assert "unchecked" in proof.links[0].detail


# -- the SRK and the AK ------------------------------------------------------------------------------------
def test_software_key_posing_as_srk_fails_activation(ek_tpm):
    """A software P-256 key dressed as the SRK (same attributes, so the attribute link passes): the TPM cannot
    activate a credential bound to its name."""
    nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()

    def software_key(area):
        area.unique.ecc.x = nums.x.to_bytes(32, "big")
        area.unique.ecc.y = nums.y.to_bytes(32, "big")

    doc = with_public(evidence(ek_tpm.tcti), "srk_public", software_key)
    before = tpm_handles(ek_tpm.tcti)
    proof, exc_info = run_until_refused(ek_tpm.tcti, Trust("tofu"), doc)
    message = refused(exc_info, "SRK activation")
    assert "not resident in the TPM holding this EK" in message
    assert ("SRK attributes", True) in [(link.name, link.passed) for link in proof.links]
    assert tpm_handles(ek_tpm.tcti) == before


def test_srk_from_another_tpm_fails_activation(ek_tpm_pair):
    a, b = ek_tpm_pair
    doc = {**evidence(a.tcti), "srk_public": evidence(b.tcti)["srk_public"]}
    before = tpm_handles(a.tcti)
    _proof, exc_info = run_until_refused(a.tcti, Trust("tofu"), doc)
    refused(exc_info, "SRK activation")
    assert tpm_handles(a.tcti) == before


def test_another_tpm_answering_for_the_node_fails_activation(ek_tpm_pair):
    """Evidence from A, answers from B (a machine answering under A's name, with or without an AK of its own)."""
    a, b = ek_tpm_pair
    _proof, exc_info = run_until_refused(a.tcti, Trust("tofu"), evidence(a.tcti), answer_tcti=b.tcti)
    refused(exc_info, "SRK activation")
    evidence(b.tcti)
    _proof, exc_info = run_until_refused(a.tcti, Trust("tofu"), evidence(a.tcti), answer_tcti=b.tcti)
    refused(exc_info, "SRK activation")


@pytest.mark.parametrize("field,label", [("srk_public", "SRK"), ("ak_public", "AK")])
def test_key_without_fixedtpm_refused(ek_tpm, field, label):
    def clear_fixed_tpm(area):
        area.objectAttributes &= ~FIXED_TPM

    doc = with_public(evidence(ek_tpm.tcti), field, clear_fixed_tpm)
    proof, exc_info = run_until_refused(ek_tpm.tcti, Trust("tofu"), doc)
    message = refused(exc_info, f"{label} attributes")
    assert isinstance(exc_info.value, KeyAttributesError) and "fixedTPM" in message
    assert not any(link.name.endswith("activation") for link in proof.links)  # refused before any credential


# -- quotes ------------------------------------------------------------------------------------------------
def quote_of(tcti: str, nonce: bytes, selection: PcrSelection = PCRS):
    with TpmNode(tcti) as node, Attestor(node, with_certificate=False) as attestor:
        return attestor.quote(nonce, selection)


def ak_of(tcti: str):
    return parse_tpm2b_public(evidence(tcti)["ak_public"], "AK")


def test_quote_verifies(ek_tpm):
    ak = ak_of(ek_tpm.tcti)
    q = quote_of(ek_tpm.tcti, b"N" * 32)
    info = verify_quote(ak, q.attest, q.signature, b"N" * 32, PCRS, q.pcr_values, "pve1")
    assert info.nonce == b"N" * 32 and len(info.pcr_digest) == 32


def test_quote_with_stale_nonce_refused(ek_tpm):
    ak = ak_of(ek_tpm.tcti)
    old = quote_of(ek_tpm.tcti, b"old nonce".ljust(32, b"."))
    with pytest.raises(QuoteError) as exc_info:
        verify_quote(ak, old.attest, old.signature, b"new nonce".ljust(32, b"."), PCRS, old.pcr_values, "pve1")
    assert "stale or replayed" in refused(exc_info, "quote")


def test_quote_over_altered_pcr_values_refused(ek_tpm):
    ak = ak_of(ek_tpm.tcti)
    q = quote_of(ek_tpm.tcti, b"N" * 32)
    altered = {**q.pcr_values, "sha256:7": bytes(31) + b"\x01"}
    with pytest.raises(QuoteError) as exc_info:
        verify_quote(ak, q.attest, q.signature, b"N" * 32, PCRS, altered, "pve1")
    assert "do not hash to the digest" in refused(exc_info, "quote")


def test_quote_over_another_selection_refused(ek_tpm):
    ak = ak_of(ek_tpm.tcti)
    q = quote_of(ek_tpm.tcti, b"N" * 32, PcrSelection.parse("sha256:0"))
    with pytest.raises(QuoteError):
        verify_quote(ak, q.attest, q.signature, b"N" * 32, PCRS, q.pcr_values, "pve1")


def test_quote_signed_by_another_tpms_ak_refused(ek_tpm_pair):
    a, b = ek_tpm_pair
    ak_a = ak_of(a.tcti)
    ak_of(b.tcti)  # B gets its own AK
    q = quote_of(b.tcti, b"N" * 32)
    with pytest.raises(QuoteError) as exc_info:
        verify_quote(ak_a, q.attest, q.signature, b"N" * 32, PCRS, q.pcr_values, "pve1")
    assert "not signed by the AK its record holds" in refused(exc_info, "quote")


def test_tampered_quote_byte_refused(ek_tpm):
    ak = ak_of(ek_tpm.tcti)
    q = quote_of(ek_tpm.tcti, b"N" * 32)
    attest = bytearray(q.attest)
    attest[-1] ^= 1  # the last byte of the PCR digest
    with pytest.raises(QuoteError):
        verify_quote(ak, bytes(attest), q.signature, b"N" * 32, PCRS, q.pcr_values, "pve1")


def test_evidence_with_trailing_bytes_refused(ek_tpm):
    from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError

    doc = evidence(ek_tpm.tcti)
    doc = {**doc, "srk_public": struct.pack(">H", len(doc["srk_public"]) - 2 + 1) + doc["srk_public"][2:] + b"\x00"}
    doc2 = {**evidence(ek_tpm.tcti), "ak_public": evidence(ek_tpm.tcti)["ak_public"] + b"\x00"}
    for bad in (doc, doc2):
        with pytest.raises(FormatError):
            parse_evidence(bad, "pve1")
    assert dataclasses.is_dataclass(parse_evidence(evidence(ek_tpm.tcti), "pve1"))
