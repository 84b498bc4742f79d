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
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import QuoteError
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
