"""What the TPM itself enforces on a keyslot's duplication, whatever the Python checks say.

- A duplication grant binds the source TPM (PolicySecret of the source SRK): a grant signed for node C at
  epoch e does not let node A duplicate its (old) copy of the keyslot when A is at epoch e too.
- A new migratable keyslot has encryptedDuplication: the TPM refuses to duplicate it to no parent or
  without an inner wrapper, even under a policy the VM's policy key signed.

The attacks call the TPM layer directly (duplicate_to, or the raw commands), never check_grant.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import ec
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import grant_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import (
    parse_policy_key_public,
    policy_key_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    _sign_policy,
    sign_approval,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat, templates
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import keyslot as tpm_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.duplicate import duplicate_to, import_here
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.keyslot import _signature
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

pytest.importorskip("tpm2_pytss")
pytestmark = pytest.mark.swtpm

VMID = 100
UUID = "11111111-2222-4333-8444-555555555555"
REF = pd.policy_ref_for(UUID)
TPM_RH_NULL_NAME = (0x40000007).to_bytes(4, "big")  # the name of a permanent handle is the handle


@pytest.fixture
def nodes(swtpm_pair, swtpm):
    """Three enrolled TPMs at the same epoch: a (holds a copy of the keyslot), b (the target), c."""
    a, b, c = (TpmNode(t.tcti) for t in (*swtpm_pair, swtpm))
    for n in (a, b, c):
        n.provision()
    top = max(n.epoch() for n in (a, b, c))
    for n in (a, b, c):
        while n.epoch() < top:
            n.bump_epoch()
    yield a, b, c
    for n in (a, b, c):
        n.close()


class Slot:
    """A VM's keyslot sealed on one TPM, and the VM's policy key."""

    def __init__(self, node: TpmNode, *, migratable: bool = True, encrypted_duplication: bool | None = None):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_public = policy_key_public(self.key.public_key())
        self.key_name = parse_policy_key_public(self.key_public)[1]
        self.vrk = os.urandom(32)
        auth_policy = pd.authorize(self.key_name, REF)
        if encrypted_duplication is None:  # as the collection seals it
            self.public, self.private = tpm_keyslot.seal_vrk(node, self.vrk, auth_policy, migratable)
        else:  # a keyslot sealed before encryptedDuplication, or with it forced
            t = node.t
            template = templates.keyslot_public(auth_policy, migratable)
            attrs = template.publicArea.objectAttributes & ~t.TPMA_OBJECT.ENCRYPTEDDUPLICATION
            if encrypted_duplication:
                attrs |= t.TPMA_OBJECT.ENCRYPTEDDUPLICATION
            template.publicArea.objectAttributes = attrs
            sensitive = t.TPM2B_SENSITIVE_CREATE(
                sensitive=t.TPMS_SENSITIVE_CREATE(data=t.TPM2B_SENSITIVE_DATA(self.vrk))
            )
            private, public, *_created = node.ctx.create(node.srk(), sensitive, template)
            self.public, self.private = public.marshal(), private.marshal()

    def unseal_on(self, node: TpmNode, private: bytes | None = None) -> bytes:
        epoch = node.epoch()
        approval = sign_approval(
            self.key,
            vmid=VMID,
            vm_uuid=UUID,
            node_name=node.name(node.srk()),
            epoch_nv_name=node.name(node.epoch_nv()),
            epoch=epoch,
        )
        return tpm_keyslot.unseal_vrk(
            node,
            public=self.public,
            private=self.private if private is None else private,
            key_public=self.key_public,
            key_name=self.key_name,
            policy_ref=REF,
            approved_policy=approval.approved_policy,
            signature_r=approval.signature_r,
            signature_s=approval.signature_s,
            epoch=epoch,
        )

    def duplicate_on(self, node: TpmNode, grant, target: TpmNode) -> tuple[bytes, bytes]:
        """The TPM layer's duplication, without check_grant (what root on `node` can call)."""
        return duplicate_to(
            node,
            public=self.public,
            private=self.private,
            key_public=self.key_public,
            key_name=self.key_name,
            policy_ref=REF,
            target_srk_public=srk_public(target),
            approved_policy=grant.approved_policy,
            signature_r=grant.signature_r,
            signature_s=grant.signature_s,
            epoch=grant.epoch,
        )


def srk_public(node: TpmNode) -> bytes:
    return node.ctx.read_public(node.srk())[0].marshal()


def grant(slot: Slot, source: TpmNode, target: TpmNode):
    return sign_grant(
        slot.key,
        vmid=VMID,
        vm_uuid=UUID,
        source_name=source.name(source.srk()),
        source_epoch_nv_name=source.name(source.epoch_nv()),
        epoch=source.epoch(),
        target_name=target.name(target.srk()),
        target_public=srk_public(target),
    )


def raw_duplicate(
    node: TpmNode,
    slot: Slot,
    approved: bytes,
    *,
    new_parent_name: bytes,
    parent=None,
    secret_handle=None,
    inner_key: bytes = b"",
    inner_sym=None,
):
    """Run a duplication policy session by hand and TPM2_Duplicate; returns the TPM's response.

    new_parent_name goes into PolicyDuplicationSelect, parent (an ESYS_TR, default TPM_RH_NULL) into
    TPM2_Duplicate, secret_handle (default: this node's SRK) into PolicySecret.
    """
    t = node.t
    r, s, _name = _sign_policy(slot.key, UUID, approved)
    key = node.ctx.load_external(t.TPM2B_PUBLIC.unmarshal(slot.key_public)[0], hierarchy=t.ESYS_TR.OWNER)
    ticket = node.ctx.verify_signature(key, pd.approval_hash(approved, REF), _signature(node, r, s))
    node.ctx.flush_context(key)
    pub = t.TPM2B_PUBLIC.unmarshal(slot.public)[0]
    obj = node.ctx.load(node.srk(), t.TPM2B_PRIVATE.unmarshal(slot.private)[0], pub)
    sess = node.ctx.start_auth_session(
        t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.POLICY, t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL), t.TPM2_ALG.SHA256
    )
    try:
        nv = node.epoch_nv()
        node.ctx.policy_duplication_select(sess, pub.get_name(), new_parent_name, False)
        compat.policy_secret(node.ctx, node.srk() if secret_handle is None else secret_handle, sess)
        node.ctx.policy_nv(nv, nv, sess, pd.epoch_operand(node.epoch()), 0, t.TPM2_EO.EQ)
        compat.policy_authorize(node.ctx, sess, approved, REF, slot.key_name, ticket)
        return node.ctx.duplicate(
            obj,
            t.ESYS_TR.NULL if parent is None else parent,
            inner_key,
            inner_sym or t.TPMT_SYM_DEF_OBJECT(algorithm=t.TPM2_ALG.NULL),
            session1=sess,
        )
    finally:
        for handle in (sess, obj):
            try:
                node.ctx.flush_context(handle)
            except t.TSS2_Exception:
                pass


def to_no_parent_policy(node: TpmNode) -> bytes:
    """A duplication policy naming TPM_RH_NULL as new parent (a grant the controller must never sign)."""
    d = pd.duplication_select(pd.ZERO_DIGEST, TPM_RH_NULL_NAME)
    d = pd.secret(d, node.name(node.srk()))
    return pd.nv(d, node.name(node.epoch_nv()), pd.epoch_operand(node.epoch()))


# -- source binding -----------------------------------------------------------------------------------


def test_grant_for_another_source_node_is_refused_by_the_tpm(nodes):
    a, b, c = nodes
    slot = Slot(a)  # e.g. an old copy of the VM's keyslot put back on a from a backup
    stolen = grant(slot, c, b)  # the VM's genuine grant: leave c for b, at c's epoch
    assert stolen.epoch == a.epoch()  # epochs collide across nodes
    epoch = a.epoch()
    with pytest.raises(TpmError, match="authorizing the duplication"):
        slot.duplicate_on(a, stolen, b)
    assert a.epoch() == epoch
    assert slot.unseal_on(a) == slot.vrk  # a's copy is untouched, just not exported


def test_source_binding_is_not_satisfied_by_the_other_nodes_srk_public(nodes):
    """Root on a loads c's SRK public and runs PolicySecret with it: the TPM has no authValue for it."""
    a, b, c = nodes
    slot = Slot(a)
    t = a.t
    approved = pd.duplicate_policy(b.name(b.srk()), c.name(c.srk()), a.name(a.epoch_nv()), a.epoch())
    c_srk = a.ctx.load_external(t.TPM2B_PUBLIC.unmarshal(srk_public(c))[0], hierarchy=t.ESYS_TR.OWNER)
    try:
        # The session stops at PolicySecret, before TPM2_Duplicate needs a parent (swtpm has 3 object slots).
        with pytest.raises(t.TSS2_Exception) as refused:
            raw_duplicate(a, slot, approved, new_parent_name=b.name(b.srk()), secret_handle=c_srk)
    finally:
        a.ctx.flush_context(c_srk)
    assert refused.value.error == t.TPM2_RC.AUTH_UNAVAILABLE, refused.value
    assert slot.unseal_on(a) == slot.vrk


def test_old_grant_format_without_source_binding_is_refused(nodes):
    a, b, _c = nodes
    doc = grant(Slot(a), a, b).to_dict()
    with pytest.raises(FormatError, match="ironclaw-grant/1' is no longer accepted: .* bind the source"):
        grant_from_dict({**doc, "format": "ironclaw-grant/1"}, "grant")


# -- encryptedDuplication ---------------------------------------------------------------------------


def test_new_migratable_keyslot_has_encrypted_duplication_and_a_pinned_one_does_not_need_it(nodes):
    a, _b, _c = nodes
    t = a.t
    assert tpm_keyslot.object_attributes(Slot(a).public) & t.TPMA_OBJECT.ENCRYPTEDDUPLICATION
    pinned = tpm_keyslot.object_attributes(Slot(a, migratable=False).public)
    assert pinned & t.TPMA_OBJECT.FIXEDTPM and not pinned & t.TPMA_OBJECT.ENCRYPTEDDUPLICATION


def test_duplicating_a_new_keyslot_to_no_parent_is_refused_by_the_tpm(nodes):
    """Even a grant the policy key signed for TPM_RH_NULL (no outer wrapper) does not export the VRK."""
    a, _b, _c = nodes
    slot = Slot(a)
    epoch = a.epoch()
    with pytest.raises(a.t.TSS2_Exception) as refused:
        raw_duplicate(
            a,
            slot,
            to_no_parent_policy(a),
            new_parent_name=TPM_RH_NULL_NAME,
            inner_key=b"\x01" * 16,
            inner_sym=templates.inner_wrapper_symmetric(),
        )
    assert refused.value.error == a.t.TPM2_RC.HIERARCHY, refused.value
    assert a.epoch() == epoch
    assert slot.unseal_on(a) == slot.vrk


def test_duplicating_a_new_keyslot_without_an_inner_wrapper_is_refused_by_the_tpm(nodes):
    a, b, _c = nodes
    slot = Slot(a)
    t = a.t
    approved = pd.duplicate_policy(b.name(b.srk()), a.name(a.srk()), a.name(a.epoch_nv()), a.epoch())
    parent = a.ctx.load_external(t.TPM2B_PUBLIC.unmarshal(srk_public(b))[0], hierarchy=t.ESYS_TR.OWNER)
    try:
        with pytest.raises(t.TSS2_Exception) as refused:
            raw_duplicate(a, slot, approved, new_parent_name=b.name(b.srk()), parent=parent)
    finally:
        a.ctx.flush_context(parent)
    assert refused.value.error == t.TPM2_RC.SYMMETRIC, refused.value
    assert slot.unseal_on(a) == slot.vrk


def test_keyslot_without_encrypted_duplication_could_be_duplicated_to_no_parent(nodes):
    """Why the attribute matters: the same signed policy exports an older keyslot's VRK unwrapped."""
    a, _b, _c = nodes
    slot = Slot(a, encrypted_duplication=False)
    _key, duplicate, _seed = raw_duplicate(a, slot, to_no_parent_policy(a), new_parent_name=TPM_RH_NULL_NAME)
    assert slot.vrk in bytes(duplicate.marshal())  # TPMT_SENSITIVE in the clear


def test_keyslot_sealed_before_encrypted_duplication_still_migrates(nodes):
    a, b, _c = nodes
    slot = Slot(a, encrypted_duplication=False)
    duplicate, seed = slot.duplicate_on(a, grant(slot, a, b), b)
    private = import_here(b, public=slot.public, duplicate=duplicate, seed=seed)
    assert slot.unseal_on(b, private) == slot.vrk


def test_new_keyslot_migrates_with_an_inner_wrapper(nodes):
    a, b, _c = nodes
    slot = Slot(a)
    duplicate, seed = slot.duplicate_on(a, grant(slot, a, b), b)
    assert slot.vrk not in duplicate
    private = import_here(b, public=slot.public, duplicate=duplicate, seed=seed)
    assert slot.unseal_on(b, private) == slot.vrk
