# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Re-approval after an epoch bump binds PCR values only from a verified quote (DESIGN §8).

plugin_utils/reapproval.py (the migration's revocation and decommission) against a real swtpm: the node half
(module_utils/_migration/node.py) quotes under the controller's nonce, in process as the ironclaw_migration module
runs it; the controller verifies each quote with the AK of the node's signed record before any approval is signed.
The authority rules are replaced by a recorder: what is tested is what reaches them.
"""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import os

import pytest
from test_attest_quoted_pcrs import SELECTION, record_for

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quoted_pcrs
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, QuoteError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._migration import node as node_half
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import PRE_ATTESTATION_FORMAT
from rig.attest import counted_ek_tpm, ek_ca, ek_tpm, ek_tpm_pair  # noqa: F401 pylint: disable=unused-import

pytestmark = pytest.mark.swtpm
VM = {"vmid": 101, "vm_uuid": "11111111-2222-4333-8444-555555555555"}


def node_quotes(tcti: str, tmp_path, selections, nonce_b64) -> dict:
    """What the node half's step inspected returns under `quote_nonce` (only the quotes)."""
    with open_backend("tpm2", tcti=tcti, state_dir=str(tmp_path)) as backend:
        return node_half.inspect(backend, str(tmp_path), [], selections=selections, quote_nonce=nonce_b64)["node"]


def test_node_half_quotes_each_selection_under_the_nonce(ek_tpm, tmp_path):
    record = record_for(ek_tpm.tcti)
    nonce = quoted_pcrs.new_nonce()
    quotes = node_quotes(ek_tpm.tcti, tmp_path, [SELECTION, "sha256:0"], canonical.b64encode(nonce))["quotes"]
    assert set(quotes) == {SELECTION, "sha256:0"}
    for selection, quote in quotes.items():
        bound = quoted_pcrs.quoted_binding(record, selection, nonce, {"quote": quote}, "pve1")
        assert bound["selection"] == selection


class _Rig:
    """The controller's trust root and the node's signed record; a node that answers with its TPM (or lies); a
    recorder in place of the authority rules."""

    def __init__(self, tcti: str, tmp_path, monkeypatch):
        pytest.importorskip("ansible", reason="the re-approval runs on the controller (venv)")
        from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )
        from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import (  # noqa: PLC0415
            dsse,
            trust_root,
        )
        from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock  # noqa: PLC0415
        from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import (  # noqa: PLC0415
            TrustKeyStore,
        )
        from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (  # noqa: PLC0415
            NODE_PAYLOAD_TYPE,
        )
        from ansible_collections.ironclaw.sealed.plugins.plugin_utils import reapproval  # noqa: PLC0415

        self.reapproval = reapproval
        self.tcti, self.tmp_path = tcti, tmp_path
        key, self.now = Ed25519PrivateKey.generate(), clock(None)
        root = trust_root.new_root([key], 1, issued_at=self.now, expires=self.now.replace(year=self.now.year + 1))
        self.controller_dir = str(tmp_path / "controller")
        TrustKeyStore(self.controller_dir).save_root(root, dsse.envelope_to_bytes(root))
        self.key = key

        def sign(record) -> dict:
            payload = record if isinstance(record, bytes) else record.to_bytes()
            return dsse.envelope_to_dict(dsse.sign(payload, NODE_PAYLOAD_TYPE, [key]))

        self.sign = sign
        self.record = sign(record_for(tcti))
        self.node_runs: list[str] = []
        self.signed: list[dict] = []
        self.alter = None  # (selection, quote) -> quote: what a lying node does to its answer
        monkeypatch.setattr(reapproval, "policy_decision", self._policy)

    def _policy(self, args: dict) -> dict:
        if args["state"] == "placed":
            placed = [{**vm, "pcrs": SELECTION, "vm_ctime": 1, "cluster": "default"} for vm in args["vms"]]
            return {"placed": placed, "refused": []}
        self.signed.append(args)
        return {"approval": {"vmid": args["vmid"], "pcrs": args["pcrs"]}}

    def node_call(self, step: str, **args) -> dict:
        self.node_runs.append(step)
        if step == "approved":
            return {"changed": True, "statements": {}}
        assert step == "inspected"
        found = node_quotes(self.tcti, self.tmp_path / "node", args.get("pcrs"), args.get("quote_nonce"))
        if self.alter is not None:
            found["quotes"] = {sel: self.alter(sel, quote) for sel, quote in found.get("quotes", {}).items()}
        return {"node": found}

    def reapprove(self, quoted=None, node_record="signed") -> dict:
        return self.reapproval.reapprove(
            self.node_call,
            controller_dir=self.controller_dir,
            node_name="pve1",
            facts={"backend": "tpm2"},
            survivors=[VM],
            chains={VM["vm_uuid"]: []},
            backend="tpm2",
            now=self.now,
            node_record=self.record if node_record == "signed" else node_record,
            quoted=quoted,
        )

    def files(self) -> dict:
        out = {}
        for base, _dirs, names in os.walk(self.controller_dir):
            for name in names:
                path = os.path.join(base, name)
                with open(path, "rb") as handle:
                    out[path] = handle.read()
        return out

    def assert_nothing_signed(self, before: dict) -> None:
        assert self.signed == [], "an approval was signed"
        assert "approved" not in self.node_runs, "the node was asked to install approvals"
        assert self.files() == before


@pytest.fixture
def rig(ek_tpm, tmp_path, monkeypatch):
    (tmp_path / "node").mkdir()
    return _Rig(ek_tpm.tcti, tmp_path, monkeypatch)


def test_reapproval_binds_the_quoted_values(rig):
    done = rig.reapprove()
    assert done["approved"] == 1
    (args,) = rig.signed
    assert args["pcrs"]["selection"] == SELECTION and len(args["pcrs"]["digest"]) == 64
    assert rig.node_runs == ["inspected", "approved"]  # one quoting run for every VM, then the install


def test_reapproval_takes_the_quote_of_the_bump_run(rig):
    """The quote made in the run that bumped the epoch serves: no extra node run."""
    nonce, args = rig.reapproval.quote_args([SELECTION])
    quotes = node_quotes(rig.tcti, rig.tmp_path / "node", args["pcrs"], args["quote_nonce"])["quotes"]
    done = rig.reapprove(quoted=(nonce, quotes))
    assert done["approved"] == 1 and rig.node_runs == ["approved"]


def test_altered_pcr_values_at_reapproval_sign_nothing(rig):
    """The node reports PCR values of its choosing next to a genuine quote: they do not hash to its digest."""

    def lie(_selection, quote):
        return {**quote, "pcr_values": {**quote["pcr_values"], "sha256:16": "ab" * 32}}

    rig.alter = lie
    before = rig.files()
    with pytest.raises(QuoteError, match="do not hash to the digest"):
        rig.reapprove()
    rig.assert_nothing_signed(before)


def test_altered_pcr_values_in_the_bump_run_sign_nothing(rig):
    nonce, args = rig.reapproval.quote_args([SELECTION])
    quotes = node_quotes(rig.tcti, rig.tmp_path / "node", args["pcrs"], args["quote_nonce"])["quotes"]
    quotes[SELECTION]["pcr_values"]["sha256:7"] = "cd" * 32
    before = rig.files()
    with pytest.raises(QuoteError):
        rig.reapprove(quoted=(nonce, quotes))
    rig.assert_nothing_signed(before)


def test_replayed_quote_at_reapproval_signs_nothing(rig):
    """The node answers with a quote it made earlier (another nonce): the controller's fresh nonce is not in it."""
    old = node_quotes(rig.tcti, rig.tmp_path / "node", [SELECTION], canonical.b64encode(quoted_pcrs.new_nonce()))

    def replay(selection, _quote):
        return old["quotes"][selection]

    rig.alter = replay
    before = rig.files()
    with pytest.raises(QuoteError, match="another nonce"):
        rig.reapprove()
    rig.assert_nothing_signed(before)


def test_replayed_quote_in_the_bump_run_signs_nothing(rig):
    """A bump run's quote offered with another nonce than the one drawn for that run."""
    _nonce, args = rig.reapproval.quote_args([SELECTION])
    quotes = node_quotes(rig.tcti, rig.tmp_path / "node", args["pcrs"], args["quote_nonce"])["quotes"]
    before = rig.files()
    with pytest.raises(QuoteError, match="another nonce"):
        rig.reapprove(quoted=(quoted_pcrs.new_nonce(), quotes))
    rig.assert_nothing_signed(before)


def test_quote_from_a_swapped_tpm_at_reapproval_signs_nothing(ek_tpm_pair, tmp_path, monkeypatch):
    """Another TPM answers for the node after the bump: its AK is not the one of the node's signed record."""
    node, impostor = ek_tpm_pair
    (tmp_path / "node").mkdir()
    rig = _Rig(node.tcti, tmp_path, monkeypatch)
    record_for(impostor.tcti)  # the impostor has an AK of its own
    rig.tcti = impostor.tcti
    before = rig.files()
    with pytest.raises(QuoteError):
        rig.reapprove()
    rig.assert_nothing_signed(before)


def test_unenrolled_node_reports_pcr_values_and_gets_nothing_signed(rig):
    """No signed record: no AK to verify a quote with, so no PCR value is bound (and nothing signed)."""
    before = rig.files()
    with pytest.raises(InputError, match="not enrolled"):
        rig.reapprove(node_record=None)
    rig.assert_nothing_signed(before)


def test_reapproval_quote_ceiling(counted_ek_tpm, tmp_path, monkeypatch):
    """TPM commands of the quoting run for re-approval: bounded, whatever the number of VMs."""
    (tmp_path / "node").mkdir()
    rig = _Rig(counted_ek_tpm.tcti, tmp_path, monkeypatch)
    counted_ek_tpm.reset()
    rig.reapprove()
    print("reapproval quote TPM commands:", counted_ek_tpm.total, counted_ek_tpm.commands())
    assert counted_ek_tpm.total <= 10, counted_ek_tpm.by_name()


# -- before anything changes: a node whose staying VMs bind PCRs needs a signed record with an AK ------------------
def test_pre_attestation_node_with_pcr_bound_survivors_is_refused_before_the_bump(rig, ek_tpm):
    """Migration (planned) and decommission (checked) refuse here: after the bump no PCR value could be bound."""
    doc = {**record_for(ek_tpm.tcti).to_dict(), "format": PRE_ATTESTATION_FORMAT}
    del doc["attestation"]
    old = rig.sign(canonical.dumps(doc))
    with pytest.raises(QuoteError, match="before attestation"):
        rig.reapproval.check_quotable(old, [SELECTION], rig.controller_dir, "pve1", rig.now)
    with pytest.raises(InputError, match="not enrolled"):
        rig.reapproval.check_quotable(None, [SELECTION], rig.controller_dir, "pve1", rig.now)
    rig.reapproval.check_quotable(old, [], rig.controller_dir, "pve1", rig.now)  # nothing bound, nothing to quote
    rig.reapproval.check_quotable(rig.record, [SELECTION], rig.controller_dir, "pve1", rig.now)
