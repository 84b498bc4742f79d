"""The TPM backend against real swtpm processes: each security property has a test that attacks it."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    BackendError,
    PolicyError,
    TpmError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_approval
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import keyslot as tpm_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

t = pytest.importorskip("tpm2_pytss")
pytestmark = pytest.mark.swtpm

VM = (100, "11111111-2222-3333-4444-555555555555")
OTHER_VM = (101, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")


@pytest.fixture
def keys(tmp_path):
    store = PolicyKeyStore(str(tmp_path / "controller"))
    store.create(*VM)
    store.create(*OTHER_VM)
    return store


def provisioned(tpm, tmp_path, name="a"):
    backend = open_backend("tpm2", tcti=tpm.tcti, state_dir=str(tmp_path / name))
    backend.provision()
    return backend


class Slot:
    """A keyslot sealed on a backend, with helpers to sign approvals for it."""

    def __init__(self, backend, keys, vm=VM, migratable=True):
        from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import Keyslot

        self.backend, self.keys, self.vm = backend, keys, vm
        self.vrk = os.urandom(32)
        key_public, key_name = keys.public(*vm)
        sealed = backend.seal(
            self.vrk, keyslot_id="0" * 32, vmid=vm[0], vm_uuid=vm[1], policy_key_name=key_name, migratable=migratable
        )
        self.keyslot = Keyslot(
            vmid=vm[0],
            vm_uuid=vm[1],
            keyslot_id="0" * 32,
            created="2026-01-01T00:00:00Z",
            migratable=migratable,
            node_name=backend.identity()[0],
            policy_key_name=key_name,
            policy_key_public=key_public,
            sealed=sealed,
        )

    def approval(self, for_backend=None, vm=None, signer_vm=None, epoch=None, pcrs=None, pcr_digest=None):
        facts = (for_backend or self.backend).facts()
        vm = vm or self.vm
        return sign_approval(
            self.keys.load(*(signer_vm or vm)),
            vmid=vm[0],
            vm_uuid=vm[1],
            node_name=facts.node_name,
            epoch_nv_name=facts.epoch_nv_name,
            epoch=facts.epoch if epoch is None else epoch,
            pcrs=pcrs,
            pcr_digest=pcr_digest,
        )

    def unseal(self, approval):
        return self.backend.unseal(self.keyslot, approval)

    def unseal_in_tpm_only(self, approval):
        """Skip the software pre-checks: what does the TPM itself enforce?"""
        ks = self.keyslot
        return tpm_keyslot.unseal_vrk(
            self.backend.node,
            public=ks.sealed.public,
            private=ks.sealed.private,
            key_public=ks.policy_key_public,
            key_name=ks.policy_key_name,
            policy_ref=pd.policy_ref_for(ks.vm_uuid),
            approved_policy=approval.approved_policy,
            signature_r=approval.signature_r,
            signature_s=approval.signature_s,
            epoch=approval.epoch,
        )


def transient_handles(node: TpmNode) -> list[int]:
    out = []
    for first in (t.TPM2_HT.TRANSIENT << 24, t.TPM2_HT.LOADED_SESSION << 24, t.TPM2_HT.SAVED_SESSION << 24):
        _more, data = node.ctx.get_capability(t.TPM2_CAP.HANDLES, first, 64)
        out += [h for h in data.data.handles if (h >> 24) == (first >> 24)]
    return out


def test_provision_is_idempotent_and_persistent(swtpm, tmp_path):
    with TpmNode(swtpm.tcti) as node:
        assert node.plan_provision()
        assert node.provision()
        assert node.plan_provision() == []
        assert node.provision() == []
        srk_name, epoch = node.name(node.srk()), node.epoch()
    swtpm.restart()  # a reboot keeps the persistent SRK and the NV counter
    with TpmNode(swtpm.tcti) as node:
        assert node.name(node.srk()) == srk_name
        assert node.epoch() == epoch == 1


def test_seal_and_unseal_round_trip(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        assert slot.unseal(slot.approval()) == slot.vrk
        assert transient_handles(backend.node) == []


def test_unseal_survives_a_reboot(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        approval = slot.approval()
    swtpm.restart()
    with open_backend("tpm2", tcti=swtpm.tcti, state_dir=str(tmp_path / "a")) as backend:
        slot.backend = backend
        assert slot.unseal(approval) == slot.vrk


def test_approval_for_another_vm_is_refused(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        other = slot.approval(vm=OTHER_VM)
        with pytest.raises(PolicyError, match="VM 101"):
            slot.unseal(other)
        # The TPM refuses it too: another policy key and another policyRef.
        with pytest.raises(TpmError):
            slot.unseal_in_tpm_only(other)
        assert transient_handles(backend.node) == []


def test_approval_signed_by_unknown_policy_key_is_refused(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        forged = slot.approval(signer_vm=OTHER_VM)  # right VM and node, wrong key
        with pytest.raises(PolicyError, match="unknown policy key"):
            slot.unseal(forged)


def test_old_approval_is_refused_after_epoch_bump(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        old = slot.approval()
        assert slot.unseal(old) == slot.vrk
        assert backend.bump_epoch() == old.epoch + 1
        with pytest.raises(PolicyError, match=rf"epoch {old.epoch} but this node is at epoch {old.epoch + 1}"):
            slot.unseal(old)
        assert slot.unseal(slot.approval()) == slot.vrk
        assert transient_handles(backend.node) == []


def test_approval_for_node_b_is_refused_on_node_a_at_equal_epochs(swtpm_pair, tmp_path, keys):
    """Epoch NV indices have the same name on every node and epochs collide: the SRK term tells nodes apart."""
    tpm_a, tpm_b = swtpm_pair
    with provisioned(tpm_a, tmp_path, "a") as node_a, provisioned(tpm_b, tmp_path, "b") as node_b:
        fa, fb = node_a.facts(), node_b.facts()
        assert fa.epoch == fb.epoch and fa.epoch_nv_name == fb.epoch_nv_name and fa.node_name != fb.node_name
        slot = Slot(node_a, keys)
        for_b = slot.approval(for_backend=node_b)
        with pytest.raises(PolicyError, match="bound to one node's SRK"):
            slot.unseal(for_b)
        with pytest.raises(TpmError):
            slot.unseal_in_tpm_only(for_b)
        assert slot.unseal(slot.approval()) == slot.vrk


def test_policy_secret_with_another_nodes_srk_is_refused(swtpm_pair, tmp_path):
    """An attacker on node A cannot satisfy PolicySecret(B's SRK) by loading B's SRK public."""
    tpm_a, tpm_b = swtpm_pair
    with TpmNode(tpm_a.tcti) as a, TpmNode(tpm_b.tcti) as b:
        a.provision()
        b.provision()
        b_public, _name, _q = b.ctx.read_public(b.srk())
        foreign = a.ctx.load_external(b_public, hierarchy=t.ESYS_TR.OWNER)
        sess = a.ctx.start_auth_session(
            t.ESYS_TR.NONE,
            t.ESYS_TR.NONE,
            t.TPM2_SE.POLICY,
            t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL),
            t.TPM2_ALG.SHA256,
        )
        try:
            a.ctx.policy_command_code(sess, t.TPM2_CC.Unseal)
            with pytest.raises(t.TSS2_Exception, match="authValue or authPolicy is not available"):
                compat.policy_secret(a.ctx, foreign, sess)
        finally:
            a.ctx.flush_context(sess)
            a.ctx.flush_context(foreign)


def test_pcr_bound_approval_is_refused_after_pcr_extend(swtpm, tmp_path, keys):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        sel = PcrSelection.parse("sha256:7")
        digest = sel.digest(backend.node.read_pcrs(sel))
        bound = slot.approval(pcrs=sel, pcr_digest=digest)
        assert slot.unseal(bound) == slot.vrk
        backend.node.ctx.pcr_extend(
            t.ESYS_TR.PCR7,
            t.TPML_DIGEST_VALUES([t.TPMT_HA(hashAlg=t.TPM2_ALG.SHA256, digest=t.TPMU_HA(sha256=b"\x01" * 32))]),
        )
        with pytest.raises(PolicyError, match="PCRs sha256:7 no longer hold"):
            slot.unseal(bound)
        # Refreshing the approval is enough: nothing is re-sealed.
        refreshed = slot.approval(pcrs=sel, pcr_digest=sel.digest(backend.node.read_pcrs(sel)))
        assert slot.unseal(refreshed) == slot.vrk
        assert transient_handles(backend.node) == []


def test_approval_with_tampered_signature_is_refused(swtpm, tmp_path, keys):
    import dataclasses

    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        good = slot.approval()
        bad = dataclasses.replace(good, signature_s=bytes([good.signature_s[0] ^ 1]) + good.signature_s[1:])
        with pytest.raises(PolicyError, match="signature"):
            slot.unseal(bad)
        with pytest.raises(TpmError, match="signature"):
            slot.unseal_in_tpm_only(bad)


def test_keyslot_with_swapped_policy_key_is_refused_by_the_tpm(swtpm, tmp_path, keys):
    """keyslot.json rewritten to trust the attacker's key, with the attacker's approval: the TPM says no."""
    import dataclasses

    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        attacker_public, attacker_name = keys.public(*OTHER_VM)
        slot.keyslot = dataclasses.replace(
            slot.keyslot, policy_key_public=attacker_public, policy_key_name=attacker_name
        )
        forged = sign_approval(
            keys.load(*OTHER_VM),
            vmid=VM[0],
            vm_uuid=VM[1],
            node_name=backend.facts().node_name,
            epoch_nv_name=backend.facts().epoch_nv_name,
            epoch=backend.facts().epoch,
        )
        with pytest.raises(PolicyError, match="keyslot.json was altered"):
            slot.unseal(forged)
        # PolicyAuthorize accepts the attacker's signature; Unseal then finds the session's policy is not
        # the object's authPolicy.
        with pytest.raises(TpmError, match="unsealing the VM root key: the TPM refused"):
            slot.unseal_in_tpm_only(forged)
        assert transient_handles(backend.node) == []


@pytest.mark.parametrize("migratable", [True, False])
def test_migratable_flag_controls_fixed_attributes(swtpm, tmp_path, keys, migratable):
    with provisioned(swtpm, tmp_path) as backend:
        slot = Slot(backend, keys, migratable=migratable)
        attrs = tpm_keyslot.object_attributes(slot.keyslot.sealed.public)
        fixed = int(t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT)
        assert (attrs & fixed == fixed) is (not migratable)
        assert attrs & fixed == (0 if migratable else fixed)
        assert not attrs & int(t.TPMA_OBJECT.USERWITHAUTH)  # only reachable through the signed policy
        assert slot.unseal(slot.approval()) == slot.vrk


def test_keyslot_from_another_tpm_is_refused(swtpm_pair, tmp_path, keys):
    tpm_a, tpm_b = swtpm_pair
    with provisioned(tpm_a, tmp_path, "a") as node_a, provisioned(tpm_b, tmp_path, "b") as node_b:
        slot = Slot(node_a, keys)
        slot.backend = node_b
        with pytest.raises(PolicyError, match="another node"):
            slot.unseal(slot.approval(for_backend=node_b))


def test_unreachable_tpm_names_the_tcti():
    tcti = "swtpm:host=127.0.0.1,port=9"
    with pytest.raises(TpmError, match="swtpm:host=127.0.0.1,port=9"):
        TpmNode(tcti)


def test_unprovisioned_tpm_says_enroll(swtpm):
    with TpmNode(swtpm.tcti) as node:
        facts = node.facts()
        assert not facts.provisioned and facts.missing == ["srk", "epoch counter"]
        with pytest.raises(BackendError, match="enroll"):
            node.srk()


def test_foreign_key_at_srk_handle_is_refused(swtpm):
    with TpmNode(swtpm.tcti) as node:
        handle = node.ctx.create_primary(None, "rsa2048:aes128cfb", t.ESYS_TR.OWNER)[0]
        node.ctx.evict_control(t.ESYS_TR.OWNER, handle, 0x81000001)
        node.ctx.flush_context(handle)
    with TpmNode(swtpm.tcti) as node:
        with pytest.raises(BackendError, match="not an ECC P-256 storage key"):
            node.provision()


def test_unseal_costs_a_fixed_small_number_of_tpm_commands(counted_swtpm, tmp_path, keys):
    with provisioned(counted_swtpm, tmp_path) as backend:
        slot = Slot(backend, keys)
        approval = slot.approval()
        counted_swtpm.counter.reset()
        assert slot.unseal(approval) == slot.vrk
        by_name = counted_swtpm.counter.by_name()
        assert by_name.get("Unseal") == 1
        assert by_name.get("StartAuthSession") == 1
        assert by_name.get("Load") == 1
        assert counted_swtpm.counter.total <= 16, by_name
