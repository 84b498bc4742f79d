# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Approvals bind PCR values only from a quote verified with the AK of the node's signed record (DESIGN §8):
module_utils/_attest/quoted_pcrs.py against real swtpms, the node's half run in process as ironclaw_node
state=quoted runs it."""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import base64
import dataclasses

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import run_attest_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quoted_pcrs
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, QuoteError
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import NodeRecord
from rig.attest import ek_ca, ek_tpm, ek_tpm_pair, evidence  # noqa: F401 pylint: disable=unused-import
from rig.evidence import attestation

pytestmark = pytest.mark.swtpm
SELECTION = "sha256:0,7,16"


def record_for(tcti: str) -> NodeRecord:
    """The node's record as enrollment signs it: its SRK, and the AK the proof activated."""
    ev = evidence(tcti)
    srk_public = base64.b64encode(ev["srk_public"]).decode()
    evidence_doc = attestation(ev["srk_name"].hex(), srk_public)
    evidence_doc.update(ak_name=ev["ak_name"].hex(), ak_public=base64.b64encode(ev["ak_public"]).decode())
    return NodeRecord(
        node="pve1",
        backend="tpm2",
        srk_name=ev["srk_name"].hex(),
        srk_public=srk_public,
        epoch_nv_index="0x01c10000",
        epoch_nv_name="000b" + "ee" * 32,
        enrolled_at="2026-12-01T10:00:00Z",
        attestation=evidence_doc,
    )


def quote(tcti: str, tmp_path, nonce: bytes, selection: str = SELECTION) -> dict:
    """What ironclaw_node state=quoted returns."""
    params = {
        "backend": "tpm2",
        "tcti": tcti,
        "state_dir": str(tmp_path),
        "lock_timeout": 5.0,
        "credentials": None,
        "ek_type": None,
        **quoted_pcrs.quote_request(selection, nonce),
    }
    return run_attest_state(params, check_mode=False)


def test_quoted_values_bind(ek_tpm, tmp_path):
    record = record_for(ek_tpm.tcti)
    nonce = quoted_pcrs.new_nonce()
    bound = quoted_pcrs.quoted_binding(record, SELECTION, nonce, quote(ek_tpm.tcti, tmp_path, nonce), "pve1")
    assert bound["selection"] == SELECTION and len(bytes.fromhex(bound["digest"])) == 32
    assert set(bound["values"]) == {"sha256:0", "sha256:7", "sha256:16"}


def test_node_reporting_other_pcr_values_is_refused(ek_tpm, tmp_path):
    """The node lies about PCR 16 (what an approval would bind): the values do not hash to the quoted digest."""
    record = record_for(ek_tpm.tcti)
    nonce = quoted_pcrs.new_nonce()
    answer = quote(ek_tpm.tcti, tmp_path, nonce)
    answer["quote"]["pcr_values"]["sha256:16"] = "ab" * 32
    with pytest.raises(QuoteError, match="do not hash to the digest"):
        quoted_pcrs.quoted_binding(record, SELECTION, nonce, answer, "pve1")


def test_replayed_quote_with_an_old_nonce_is_refused(ek_tpm, tmp_path):
    record = record_for(ek_tpm.tcti)
    old = quote(ek_tpm.tcti, tmp_path, quoted_pcrs.new_nonce())
    with pytest.raises(QuoteError, match="another nonce"):
        quoted_pcrs.quoted_binding(record, SELECTION, quoted_pcrs.new_nonce(), old, "pve1")


def test_quote_from_another_tpm_is_refused(ek_tpm_pair, tmp_path):
    """Another machine answers for the node: its AK is not the one the node's signed record holds."""
    node, impostor = ek_tpm_pair
    record = record_for(node.tcti)
    nonce = quoted_pcrs.new_nonce()
    with pytest.raises(QuoteError):
        quoted_pcrs.quoted_binding(record, SELECTION, nonce, quote(impostor.tcti, tmp_path, nonce), "pve1")


def test_quote_of_another_selection_is_refused(ek_tpm, tmp_path):
    record = record_for(ek_tpm.tcti)
    nonce = quoted_pcrs.new_nonce()
    answer = quote(ek_tpm.tcti, tmp_path, nonce, "sha256:0")
    with pytest.raises(QuoteError):
        quoted_pcrs.quoted_binding(record, SELECTION, nonce, answer, "pve1")


def test_unattested_record_binds_no_pcr_values(ek_tpm, tmp_path):
    """A record enrolled before attestation has no AK: no PCR value of that node is bound, whatever it reports."""
    record = dataclasses.replace(record_for(ek_tpm.tcti), attestation=None)
    nonce = quoted_pcrs.new_nonce()
    with pytest.raises(QuoteError, match="before attestation"):
        quoted_pcrs.quoted_binding(record, SELECTION, nonce, quote(ek_tpm.tcti, tmp_path, nonce), "pve1")


def test_no_quote_is_refused(ek_tpm):
    with pytest.raises(QuoteError, match="no quote"):
        quoted_pcrs.quoted_binding(record_for(ek_tpm.tcti), SELECTION, b"n" * 32, {}, "pve1")


# -- provision's approval takes its PCR binding from the quote (ironclaw_provision, step planned) -----------------
def _provision_pcrs(tcti: str, tmp_path, node_facts: dict):
    pytest.importorskip("ansible", reason="the action plugin runs on the controller (venv)")
    from ansible_collections.ironclaw.sealed.plugins.action import ironclaw_provision  # noqa: PLC0415
    from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )
    from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, trust_root  # noqa: PLC0415
    from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock  # noqa: PLC0415
    from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import (  # noqa: PLC0415
        TrustKeyStore,
    )
    from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (  # noqa: PLC0415
        NODE_PAYLOAD_TYPE,
    )

    key, now = Ed25519PrivateKey.generate(), clock(None)
    root = trust_root.new_root([key], 1, issued_at=now, expires=now.replace(year=now.year + 1))
    TrustKeyStore(str(tmp_path / "controller")).save_root(root, dsse.envelope_to_bytes(root))
    envelope = dsse.sign(record_for(tcti).to_bytes(), NODE_PAYLOAD_TYPE, [key])
    action = ironclaw_provision.ActionModule.__new__(ironclaw_provision.ActionModule)
    args = {"controller_dir": str(tmp_path / "controller"), "node_name": "pve1"}
    return action._quoted_pcrs(args, node_facts, {"node_record": dsse.envelope_to_dict(envelope)}, now)


def _pcr_quote(tcti: str, tmp_path) -> dict:
    record_for(tcti)  # enrollment made the AK before any quote
    nonce = quoted_pcrs.new_nonce()
    answer = quote(tcti, tmp_path, nonce)
    return {"selection": SELECTION, "nonce": base64.b64encode(nonce).decode(), "quote": answer["quote"]}


def test_provision_binds_the_quoted_values(ek_tpm, tmp_path):
    bound = _provision_pcrs(ek_tpm.tcti, tmp_path, {"pcr_quote": _pcr_quote(ek_tpm.tcti, tmp_path)})
    assert bound["selection"] == SELECTION and len(bound["digest"]) == 64


def test_provision_refuses_pcr_values_the_node_merely_reports(ek_tpm, tmp_path):
    """The node's facts carry a digest of its own choosing and no quote: nothing is bound to it."""
    reported = {"selection": SELECTION, "digest": "ab" * 32, "values": {}}
    with pytest.raises(InputError, match="with a quote only"):
        _provision_pcrs(ek_tpm.tcti, tmp_path, {"pcrs": reported})


def test_provision_refuses_a_quote_whose_values_were_altered(ek_tpm, tmp_path):
    quoted = _pcr_quote(ek_tpm.tcti, tmp_path)
    quoted["quote"]["pcr_values"]["sha256:16"] = "cd" * 32
    with pytest.raises(QuoteError):
        _provision_pcrs(ek_tpm.tcti, tmp_path, {"pcr_quote": quoted})


def test_approval_binding_refuses_reported_values_and_binds_none_without_either():
    """The rule itself (no TPM): PCR values a node reports without a quote are refused, naming the node; a result
    with neither a quote nor values binds none."""
    reported = {"pcrs": {"selection": SELECTION, "digest": "ab" * 32, "values": {}}}
    with pytest.raises(InputError, match="pve1's PCR values come with a quote only"):
        quoted_pcrs.approval_binding(reported, None, "pve1")
    assert quoted_pcrs.approval_binding({"backend": "tpm2"}, None, "pve1") is None
