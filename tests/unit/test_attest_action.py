# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_attest's action end to end against real swtpms: the node's module is run in process
(attest_states.run_attest_state, what ironclaw_node state=attested runs), everything else is the action's own code.
"""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import base64
import json

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import run_attest_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.ek_trust import ek_pin
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import parse_tpm2b_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    ThresholdError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import NODE_PAYLOAD_TYPE, NodeRecord
from rig.attest import PROOF_LINKS_CA, ek_ca, ek_tpm, ek_tpm_pair, other_ek_ca  # noqa: F401 pylint: disable=unused-import
from rig.evidence import attestation

pytest.importorskip("ansible", reason="the action plugin runs on the controller (venv)")

from ansible_collections.ironclaw.sealed.plugins.action import ironclaw_attest  # noqa: E402

pytestmark = pytest.mark.swtpm
KEY = Ed25519PrivateKey.generate()


class Run:
    """The action with its node calls answered by run_attest_state on the swtpm at tcti."""

    def __init__(self, tcti: str, state_dir, **args):
        self.node_results: list[dict] = []
        self.action = ironclaw_attest.ActionModule.__new__(ironclaw_attest.ActionModule)
        self.action._vars = {"inventory_hostname": "pve1"}
        self.action.run_module = self._node
        controller_dir = state_dir / "controller"
        if not controller_dir.exists():
            now = clock(None)
            root = trust_root.new_root([KEY], 1, issued_at=now, expires=now.replace(year=now.year + 1))
            TrustKeyStore(str(controller_dir)).save_root(root, dsse.envelope_to_bytes(root))
        self.args = dict(
            ironclaw_attest.argument_spec().defaults(),
            state_dir=str(state_dir),
            lock_timeout=5.0,
            controller_dir=str(controller_dir),
        )
        self.args.update(args)
        self.tcti = tcti

    def _node(self, name: str, module_args: dict) -> dict:
        assert name == "ironclaw.sealed.ironclaw_node"
        params = {"pcrs": None, "nonce": None, "credentials": None, "ek_type": None, **module_args}
        params["tcti"] = self.tcti
        result = run_attest_state(params, check_mode=False)
        self.node_results.append(result)
        return result

    def __call__(self) -> dict:
        return self.action.run_action(self.args)

    def srk_name(self) -> str:
        return self.evidence()["srk_name"]

    def evidence(self) -> dict:
        """The node's public evidence (ironclaw_node state=attested without a challenge)."""
        return run_attest_state(
            {
                "backend": "tpm2",
                "tcti": self.tcti,
                "state_dir": self.args["state_dir"],
                "lock_timeout": 5.0,
                "state": "attested",
                "pcrs": None,
                "nonce": None,
                "credentials": None,
                "ek_type": None,
            },
            check_mode=False,
        )["attestation"]


def keys_of(value) -> set:
    if isinstance(value, dict):
        return set(value).union(*(keys_of(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_of(v) for v in value))
    return set()


def record_of(ev: dict, signer=KEY, node: str = "pve1") -> dict:
    """The node's record as the store holds it, from the node's evidence `ev` as enrollment recorded it: signed by
    the trust root (KEY) unless another signer is given."""
    doc = attestation(ev["srk_name"], ev["srk_public"], at="2026-12-01T10:00:00Z")
    ek = parse_tpm2b_public(base64.b64decode(ev["ek_public"]), "EK public")
    doc.update(ek_type=ev["ek_type"], ek_public_sha256=ek_pin(ek), ak_name=ev["ak_name"], ak_public=ev["ak_public"])
    record = NodeRecord(
        node=node,
        backend="tpm2",
        srk_name=ev["srk_name"],
        srk_public=ev["srk_public"],
        epoch_nv_index="0x01c10000",
        epoch_nv_name="000b" + "ee" * 32,
        enrolled_at="2026-12-01T10:00:00Z",
        attestation=doc,
    )
    return dsse.envelope_to_dict(dsse.sign(record.to_bytes(), NODE_PAYLOAD_TYPE, [signer]))


def payload_of(envelope: dict) -> dict:
    return canonical.loads(dsse.parse_envelope(envelope, "record").payload, "record")


def test_genuine_tpm_passes_every_link_in_order(ek_tpm, ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    run.args["node_record"] = record_of(run.evidence())
    result = run()
    assert not result.get("failed"), result
    assert [link["name"] for link in result["links"]] == [
        *PROOF_LINKS_CA,
        ironclaw_attest.RECORD_LINK,
    ]
    assert all(link["passed"] and link["line"].startswith(link["name"] + ": passed") for link in result["links"])
    assert result["record"]["srk_name"] == payload_of(run.args["node_record"])["srk_name"]


def test_secret_leak_activation_answers_absent_from_the_result(ek_tpm, ek_ca, tmp_path):
    """The node's activation answers are the challenge's secrets: none of them, in any encoding, leaves the action."""
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    run.args["node_record"] = record_of(run.evidence())
    result = run()
    answers = [a["secret"] for r in run.node_results if "activation" in r for a in r["activation"].values()]
    assert len(answers) == 2
    text = json.dumps(result)
    for answer in answers:
        raw = base64.b64decode(answer)
        for encoding in (answer, raw.hex(), base64.urlsafe_b64encode(raw).decode()):
            assert encoding not in text
    assert not keys_of(result) & {"secret", "secrets", "activation", "credentials", "id_object", "encrypted_secret"}


def test_replaced_tpm_fails_record_unchanged_naming_both_names(ek_tpm_pair, ek_ca, tmp_path):
    """The node's state dir kept, its TPM swapped for another genuine one: its certificate and keys check out, but its
    EK is not the recorded one, so no credential is made for it: the record link fails before any challenge."""
    enrolled, replacement = ek_tpm_pair
    enrolled_ev = Run(enrolled.tcti, tmp_path).evidence()
    old = enrolled_ev["srk_name"]
    run = Run(replacement.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir), node_record=record_of(enrolled_ev))
    new = run.srk_name()
    run.node_results.clear()
    result = run()
    assert result["failed"] and result["link"] == ironclaw_attest.RECORD_LINK
    assert result["error"] == "AttestationError"
    assert result["msg"].startswith(f"{ironclaw_attest.RECORD_LINK}: FAILED") and old in result["msg"]
    assert new in result["msg"]
    assert [link["passed"] for link in result["links"]] == [True] * 4 + [False]
    assert "record" not in result
    assert len(run.node_results) == 1  # no challenge was sent


# -- the challenge is made for the recorded EK, SRK and AK, not the node's fresh evidence ----------------------------
def test_swapped_tpm_claiming_the_enrolled_identity_fails_at_srk_activation(ek_tpm_pair, ek_ca, tmp_path):
    """A replacement TPM whose node reports the enrolled TPM's evidence (EK certificate and public, SRK and AK
    publics: all public): every evidence link passes, but the credential is wrapped to the recorded EK for the
    recorded SRK, which the replacement does not hold."""
    enrolled, replacement = ek_tpm_pair
    enrolled_ev = Run(enrolled.tcti, tmp_path).evidence()
    run = Run(replacement.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir), node_record=record_of(enrolled_ev))
    answer = run._node

    def lying_node(name, module_args):
        result = answer(name, module_args)
        if not module_args.get("credentials"):
            result["attestation"] = dict(enrolled_ev)
        return result

    run.action.run_module = lying_node
    result = run()
    assert result["failed"] and result["link"] == "SRK activation" and result["error"] == "ActivationError"
    assert result["msg"].startswith("SRK activation: FAILED") and enrolled_ev["srk_name"][:20] in result["msg"]
    assert [link["passed"] for link in result["links"]] == [True] * 4 + [False]
    assert "record" not in result


def test_srk_other_than_the_recorded_one_fails_at_srk_activation(ek_tpm_pair, ek_ca, tmp_path):
    """The record names another SRK (the TPM's owner hierarchy was cleared, or the record was made for another
    SRK): the node's own SRK activates a credential made for its own name, never the recorded one."""
    node, other = ek_tpm_pair
    run = Run(node.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    ev = run.evidence()
    other_ev = Run(other.tcti, tmp_path).evidence()
    run.args["node_record"] = record_of({**ev, "srk_name": other_ev["srk_name"], "srk_public": other_ev["srk_public"]})
    result = run()
    assert result["failed"] and result["link"] == "SRK activation" and result["error"] == "ActivationError"
    assert other_ev["srk_name"][:20] in result["msg"]
    assert "record" not in result


def test_ak_replaced_since_enrollment_fails_at_ak_activation(ek_tpm_pair, ek_ca, tmp_path):
    """The AK the record holds is not the one the node presents now (the persisted AK was replaced): quotes are
    verified with the recorded AK, so attest must not pass with another one."""
    node, other = ek_tpm_pair
    run = Run(node.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    ev = run.evidence()
    other_ev = Run(other.tcti, tmp_path).evidence()
    run.args["node_record"] = record_of({**ev, "ak_name": other_ev["ak_name"], "ak_public": other_ev["ak_public"]})
    result = run()
    assert result["failed"] and result["link"] == "AK activation" and result["error"] == "ActivationError"
    assert other_ev["ak_name"][:20] in result["msg"]
    assert "record" not in result


def test_missing_record_fails_the_last_link(ek_tpm, ek_ca, tmp_path):
    result = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir), node_record=None)()
    assert result["failed"] and result["link"] == ironclaw_attest.RECORD_LINK and "enroll" in result["msg"]


def test_other_ca_fails_at_the_chain_and_stops_there(ek_tpm, other_ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(other_ek_ca.trust_dir))
    run.args["node_record"] = record_of(run.evidence())
    run.node_results.clear()
    result = run()
    assert result["failed"] and result["error"] == "EkChainError" and result["link"] == "EK certificate chain"
    assert [(link["name"], link["passed"]) for link in result["links"]] == [("EK certificate chain", False)]
    assert len(run.node_results) == 1  # no challenge was made for an untrusted EK


def test_pin_mode_prints_the_pin_then_passes(ek_tpm, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_trust="pin")
    run.args["node_record"] = record_of(run.evidence())
    refused = run()
    assert refused["failed"] and refused["error"] == "EkPinError"
    pin = refused["msg"].split("ironclaw_ek_pin: '", 1)[1].split("'", 1)[0]
    assert pin.startswith("sha256:") and len(pin) == 71
    run.args["ek_pin"] = pin
    passed = run()
    assert not passed.get("failed") and passed["links"][0]["name"] == "EK pin"


def test_software_backend_is_refused_before_any_node_call(tmp_path):
    run = Run("unused", tmp_path, ek_trust="tofu", backend="software")
    with pytest.raises(InputError, match="nothing to attest"):
        run()
    assert run.node_results == []


# -- the node record is verified here, not taken from the playbook (DESIGN §7 A4) --------------------------------
def test_forged_record_signed_by_another_key_is_refused_before_the_node_is_asked(ek_tpm, ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    run.args["node_record"] = record_of(run.evidence(), signer=Ed25519PrivateKey.generate())
    with pytest.raises(ThresholdError):
        run()
    assert run.node_results == []


def test_unsigned_record_dict_is_refused(ek_tpm, ek_ca, tmp_path):
    """What the playbook passed before: the record's payload as a plain dict. Anyone could write one."""
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    run.args["node_record"] = payload_of(record_of(run.evidence()))
    with pytest.raises(FormatError):
        run()
    assert run.node_results == []


def test_swapped_record_of_another_node_is_refused(ek_tpm, ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir))
    run.args["node_record"] = record_of(run.evidence(), node="pve2")
    with pytest.raises(VerificationError, match="swapped"):
        run()
    assert run.node_results == []


# -- enrollment (enroll=true): the evidence for the signed record ------------------------------------------------
def test_enroll_returns_the_evidence_without_the_record_link(ek_tpm, ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(ek_ca.trust_dir), enroll=True)
    result = run()
    assert not result.get("failed"), result
    assert [link["name"] for link in result["links"]] == list(PROOF_LINKS_CA)
    assert result["record"]["trust"] == "ca" and len(result["record"]["ek_chain"]) == 3
    assert result["record"]["srk_name"] == run.srk_name()


def test_enroll_refused_at_the_chain_prints_the_pin_and_how_to_set_it(ek_tpm, other_ek_ca, tmp_path):
    run = Run(ek_tpm.tcti, tmp_path, ek_ca_dir=str(other_ek_ca.trust_dir), enroll=True)
    refused = run()
    assert refused["failed"] and refused["error"] == "EkChainError" and "record" not in refused
    pin = refused["msg"].split("ironclaw_ek_pin: '", 1)[1].split("'", 1)[0]
    assert "ironclaw_ek_trust: pin" in refused["msg"]
    run = Run(ek_tpm.tcti, tmp_path, ek_trust="pin", ek_pin=pin, enroll=True)
    assert run()["record"]["trust"] == "pin"


def test_enroll_of_a_software_node_records_no_attestation(tmp_path):
    run = Run("unused", tmp_path, ek_trust="ca", backend="software", enroll=True)
    result = run()
    assert result["record"] is None and "no TPM to attest" in result["msg"]
    assert run.node_results == []
