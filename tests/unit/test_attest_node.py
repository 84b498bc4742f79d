# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's half of attestation against real swtpms with EK certificates (module_utils/_tpm/ek.py, attest.py).

Runs under the venv's tpm2-pytss and Debian's python3-tpm2-pytss 1.2 alike
(no chain verification here: that is the controller's, test_attest_proof.py).
"""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import secrets

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.credential import kdfa, make_credential
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import parse_tpm2b_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import ek
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.attest import AK_HANDLE, Attestor
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode
from rig.attest import (  # noqa: F401 pylint: disable=unused-import
    PCRS,
    answer,
    counted_ek_tpm,
    ek_ca,
    ek_tpm,
    ek_tpm_pair,
    evidence,
    tpm_handles,
)

pytestmark = pytest.mark.swtpm

# Measured on swtpm 0.7.1, libtss2 3.2.1, tpm2-pytss 3.0.0 and 1.2.0 (equal). More fails; fewer passes (then lower it).
CEILINGS = {
    # EK: GetCapability (EK indices), GetCapability (NV buffer size), NV_ReadPublic ×2, NV_Read (the 1016-byte
    # certificate), CreatePrimary; SRK lookup (ReadPublic ×2), AK lookup (ReadPublic, absent); AK creation:
    # StartAuthSession, PolicySecret, Create, StartAuthSession, PolicySecret, Load, EvictControl, FlushContext;
    # AK check (ReadPublic); FlushContext (EK)
    "evidence_first": 19,
    # the same without creating the AK: lookups (ReadPublic ×4)
    "evidence_again": 11,
    # SRK lookup (ReadPublic ×2), GetCapability (EK indices: no certificate read), CreatePrimary (EK);
    # per activation StartAuthSession, PolicySecret, ActivateCredential, FlushContext (swtpm answers the
    # first ActivateCredential after CreatePrimary so that tss2 sends it twice: 0x147 counted twice); AK lookup
    # (ReadPublic ×2); Quote, PCR_Read, FlushContext (EK)
    "answer": 18,
}


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_rig_manufactures_ek_certificates_in_both_ranges(ek_tpm, ek_ca):
    with TpmNode(ek_tpm.tcti) as node:
        defined = ek.defined_ek_indices(node.ctx)
    assert defined == {0x01C00002, 0x01C00016}  # swtpm 0.7: RSA-2048 low range, ECC P-384 high range
    issuer = x509.load_pem_x509_certificate(ek_ca.intermediate_pem).subject
    for ek_type in ("EK-RSA2048", "EK-HIGH-ECC384"):
        doc = evidence(ek_tpm.tcti, ek_type)
        cert = x509.load_der_x509_certificate(doc["ek_certificate"])
        assert cert.issuer == issuer
        # The EK created from its template is the certified key.
        assert spki(cert.public_key()) == spki(parse_tpm2b_public(doc["ek_public"], "EK").key())


def test_blank_tpm_has_no_ek_certificate_and_default_is_unchanged(swtpm):
    with TpmNode(swtpm.tcti) as node:
        assert ek.defined_ek_indices(node.ctx) == set()
        handle, info = ek.create_ek(node.ctx)
        node.ctx.flush_context(handle)
    assert info.certificate is None and info.ek_type == "EK-RSA2048"
    with TpmNode(swtpm.tcti) as node, pytest.raises(TpmError, match="no EK-HIGH-ECC384 certificate"):
        ek.create_ek(node.ctx, "EK-HIGH-ECC384")


def test_ek_indices_are_listed_once_not_probed(counted_ek_tpm):
    with TpmNode(counted_ek_tpm.tcti) as node:
        counted_ek_tpm.reset()
        handle, info = ek.create_ek(node.ctx)
        node.ctx.flush_context(handle)
    commands = counted_ek_tpm.by_name()
    assert info.cert_index == 0x01C00002
    # One listing (plus the NV buffer size); NV_ReadPublic only for the one certificate read.
    assert commands["GetCapability"] == 2
    assert commands["NV_ReadPublic"] == 2
    assert commands["CreatePrimary"] == 1


def test_ak_is_created_once_and_persisted(ek_tpm):
    first = evidence(ek_tpm.tcti)
    persistent, _nv = tpm_handles(ek_tpm.tcti)
    assert AK_HANDLE in persistent
    again = evidence(ek_tpm.tcti)
    assert again["ak_name"] == first["ak_name"]
    assert tpm_handles(ek_tpm.tcti)[0] == persistent


@pytest.mark.parametrize("ek_type", ["EK-RSA2048", "EK-ECC256"])
def test_controller_credential_activates_on_the_tpm(ek_tpm, ek_type):
    """make_credential (software, controller) against TPM2_ActivateCredential: RSA-OAEP and ECDH (KDFe) seeds.

    swtpm certifies no low-range ECC EK; EK-ECC256 is created from its default template without one."""
    doc = evidence(ek_tpm.tcti, ek_type)
    ek_public = parse_tpm2b_public(doc["ek_public"], "EK")
    request = {"nonce": b"n" * 32, "pcrs": str(PCRS), "credentials": {}}
    wanted = {}
    for target in ("srk", "ak"):
        wanted[target] = secrets.token_bytes(32)
        blob, seed = make_credential(ek_public, wanted[target], parse_tpm2b_public(doc[f"{target}_public"], "k").name)
        request["credentials"][target] = {"id_object": blob, "encrypted_secret": seed}
    answers = answer(ek_tpm.tcti, request, ek_type)
    assert {t: answers[t].get("secret") for t in wanted} == wanted


def test_kdfa_matches_tpm2_pytss():
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.internal.crypto import _kdfa

    key, name = bytes(range(32)), b"\x00\x0b" + bytes(32)
    for alg, hname, bits in ((TPM2_ALG.SHA256, "sha256", 128), (TPM2_ALG.SHA384, "sha384", 256)):
        assert kdfa(hname, key, b"STORAGE", name, b"", bits) == _kdfa(alg, key, b"STORAGE", name, b"", bits)
        assert kdfa(hname, key, b"INTEGRITY", b"", b"", 8 * 48) == _kdfa(alg, key, b"INTEGRITY", b"", b"", 8 * 48)


def test_srk_from_another_tpm_is_refused_by_the_tpm(ek_tpm_pair):
    """A credential for TPM B's SRK name cannot be activated on TPM A (TPM_RC_INTEGRITY): nothing changes on A."""
    a, b = ek_tpm_pair
    doc_a, doc_b = evidence(a.tcti), evidence(b.tcti)
    before = tpm_handles(a.tcti)
    blob, seed = make_credential(
        parse_tpm2b_public(doc_a["ek_public"], "EK"),
        secrets.token_bytes(32),
        parse_tpm2b_public(doc_b["srk_public"], "SRK").name,
    )
    request = {"nonce": b"n", "pcrs": str(PCRS), "credentials": {"srk": {"id_object": blob, "encrypted_secret": seed}}}
    answers = answer(a.tcti, request)
    assert "secret" not in answers["srk"]
    assert "refused" in answers["srk"]["error"]
    assert tpm_handles(a.tcti) == before


def test_software_key_loaded_into_the_genuine_tpm_cannot_activate(ek_tpm):
    """The cleverer fake SRK: a software P-256 key's public area with fixedTPM etc. loaded by LoadExternal into the
    genuine TPM. The TPM refuses ActivateCredential (no authValue for a public-only object), so the credential
    bound to that name never opens."""
    doc = evidence(ek_tpm.tcti)
    with TpmNode(ek_tpm.tcti) as node, Attestor(node) as attestor:
        t = node.t
        real = parse_tpm2b_public(doc["srk_public"], "SRK")
        fake, _size = t.TPM2B_PUBLIC.unmarshal(doc["srk_public"])
        nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
        fake.publicArea.unique.ecc.x = nums.x.to_bytes(32, "big")
        fake.publicArea.unique.ecc.y = nums.y.to_bytes(32, "big")
        fake_area = parse_tpm2b_public(bytes(fake.marshal()), "fake SRK")
        assert fake_area.attributes == real.attributes and fake_area.name != real.name
        loaded = node.ctx.load_external(in_public=fake, hierarchy=t.ESYS_TR.OWNER)
        ek_public = parse_tpm2b_public(doc["ek_public"], "EK")
        blob, seed = make_credential(ek_public, secrets.token_bytes(32), fake_area.name)
        id_object, _size = t.TPM2B_ID_OBJECT.unmarshal(blob)
        enc, _size = t.TPM2B_ENCRYPTED_SECRET.unmarshal(seed)
        session = attestor._endorsement_session()
        with pytest.raises(t.TSS2_Exception):
            node.ctx.activate_credential(
                activate_handle=loaded,
                key_handle=attestor.ek(),
                credential_blob=id_object,
                secret=enc,
                session1=t.ESYS_TR.PASSWORD,
                session2=session,
            )
        node.ctx.flush_context(loaded)


def test_enrollment_proof_tpm_command_ceilings(counted_ek_tpm):
    """The node's part of an enrollment proof: evidence (first run creates the AK), then the answers."""
    from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import Proof, Trust, parse_evidence
    from rig.attest import now

    counts = {}
    for step in ("evidence_first", "evidence_again"):
        counted_ek_tpm.reset()
        doc = evidence(counted_ek_tpm.tcti)
        counts[step] = counted_ek_tpm.commands()
    proof = Proof(parse_evidence(doc, "pve1"), Trust("tofu"), now())
    proof.check_identity()
    challenge = proof.challenge(PCRS)
    counted_ek_tpm.reset()
    answers = answer(counted_ek_tpm.tcti, challenge.request())
    counts["answer"] = counted_ek_tpm.commands()
    proof.check_answers(challenge, answers)
    assert [link.passed for link in proof.links] == [True] * len(proof.links)
    over = {k: (len(v), CEILINGS[k], v) for k, v in counts.items() if len(v) > CEILINGS[k]}
    assert not over, f"TPM commands above their ceilings: {over}"
    assert counts["answer"].count("Quote") == 1 and "NV_Read" not in counts["answer"]


# -- ironclaw_node state=attested / state=quoted -------------------------------------------------------------
def module_params(tcti: str, state_dir, **extra) -> dict:
    params = {"backend": "tpm2", "tcti": tcti, "state_dir": str(state_dir), "lock_timeout": 5.0, "pcrs": None}
    params.update(extra)
    return params


def test_attested_state_round_trip_with_the_controller(ek_tpm, tmp_path):
    """The module's base64 interface end to end: evidence, then answers the controller checks link by link."""
    import base64

    from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import run_attest_state
    from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import Proof, Trust, parse_evidence
    from rig.attest import now

    def unb64(text):
        return base64.b64decode(text) if text is not None else None

    planned = run_attest_state(module_params(ek_tpm.tcti, tmp_path, state="attested"), check_mode=True)
    assert planned["changed"] and "attestation" not in planned
    assert AK_HANDLE not in tpm_handles(ek_tpm.tcti)[0]  # check mode created nothing
    first = run_attest_state(module_params(ek_tpm.tcti, tmp_path, state="attested"), check_mode=False)
    assert first["changed"] and AK_HANDLE in tpm_handles(ek_tpm.tcti)[0]
    ev = first["attestation"]
    doc = {k: unb64(ev[k]) for k in ("ek_certificate", "ek_public", "srk_public", "ak_public")}
    doc["ek_type"] = ev["ek_type"]
    proof = Proof(parse_evidence(doc, "pve1"), Trust("tofu"), now())
    proof.check_identity()
    assert proof.evidence.srk.name.hex() == ev["srk_name"]
    challenge = proof.challenge(PCRS)
    req = challenge.request()
    creds = {
        t: {k: base64.b64encode(c[k]).decode() for k in ("id_object", "encrypted_secret")}
        for t, c in req["credentials"].items()
    }
    nonce = base64.b64encode(req["nonce"]).decode()
    params = module_params(ek_tpm.tcti, tmp_path, state="attested", credentials=creds, nonce=nonce, pcrs=str(PCRS))
    second = run_attest_state(params, check_mode=False)
    assert not second["changed"]
    answers = {t: {"secret": unb64(a["secret"])} for t, a in second["activation"].items()}
    q = second["quote"]
    answers["quote"] = {
        "attest": unb64(q["attest"]),
        "signature": unb64(q["signature"]),
        "pcr_values": {k: bytes.fromhex(v) for k, v in q["pcr_values"].items()},
    }
    proof.check_answers(challenge, answers)
    assert all(link.passed for link in proof.links) and len(proof.links) == 6  # tofu: one EK trust link


def test_quoted_state_needs_a_nonce_and_the_tpm2_backend(ek_tpm, tmp_path):
    from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import run_attest_state
    from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError

    with pytest.raises(InputError, match="needs nonce"):
        run_attest_state(module_params(ek_tpm.tcti, tmp_path, state="quoted"), check_mode=False)
    with pytest.raises(InputError, match="tpm2 backend"):
        run_attest_state(module_params(ek_tpm.tcti, tmp_path, state="quoted", backend="software"), check_mode=False)
    evidence(ek_tpm.tcti)
    params = module_params(ek_tpm.tcti, tmp_path, state="quoted", nonce="bm9uY2Vub25jZQ==", pcrs="sha256:7")
    quoted = run_attest_state(params, check_mode=False)
    assert set(quoted["quote"]["pcr_values"]) == {"sha256:7"} and "attestation" not in quoted
