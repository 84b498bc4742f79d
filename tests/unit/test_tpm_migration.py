"""Keyslot duplication between two real TPMs under a signed grant, and the refusals that protect it."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, PolicyError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    Prehashed,
    decode_dss_signature,
    ec,
    hashes,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import grant_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import (
    parse_policy_key_public,
    policy_key_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import sign_approval, sign_grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.verify import check_grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import keyslot as tpm_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.duplicate import duplicate_to, import_here
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

pytest.importorskip("tpm2_pytss")
pytestmark = pytest.mark.swtpm

UUID = "11111111-2222-4333-8444-555555555555"
REF = pd.policy_ref_for(UUID)


def signed(key, approved: bytes) -> tuple[bytes, bytes]:
    r, s = decode_dss_signature(key.sign(pd.approval_hash(approved, REF), ec.ECDSA(Prehashed(hashes.SHA256()))))
    return r.to_bytes(32, "big"), s.to_bytes(32, "big")


@pytest.fixture
def pair(swtpm_pair):
    a, b = (TpmNode(t.tcti) for t in swtpm_pair)
    for n in (a, b):
        n.provision()
    yield a, b
    a.close()
    b.close()


def seal_on(node: TpmNode, key, migratable=True):
    key_public = policy_key_public(key.public_key())
    key_name = parse_policy_key_public(key_public)[1]
    vrk = os.urandom(32)
    public, private = tpm_keyslot.seal_vrk(node, vrk, pd.authorize(key_name, REF), migratable)
    return vrk, public, private, key_public, key_name


def unseal_on(node: TpmNode, key, public, private, key_public, key_name):
    srk_name, nv_name, epoch = node.name(node.srk()), node.name(node.epoch_nv()), node.epoch()
    approval = sign_approval(key, vmid=100, vm_uuid=UUID, node_name=srk_name, epoch_nv_name=nv_name, epoch=epoch)
    return tpm_keyslot.unseal_vrk(
        node,
        public=public,
        private=private,
        key_public=key_public,
        key_name=key_name,
        policy_ref=REF,
        approved_policy=approval.approved_policy,
        signature_r=approval.signature_r,
        signature_s=approval.signature_s,
        epoch=epoch,
    )


def grant_for(a: TpmNode, key, target: TpmNode, epoch=None):
    return sign_grant(
        key,
        vmid=100,
        vm_uuid=UUID,
        source_name=a.name(a.srk()),
        source_epoch_nv_name=a.name(a.epoch_nv()),
        epoch=a.epoch() if epoch is None else epoch,
        target_name=target.name(target.srk()),
        target_public=target.ctx.read_public(target.srk())[0].marshal(),
    )


def export(a: TpmNode, key, slot, target: TpmNode, *, grant_target: TpmNode | None = None, epoch=None):
    _vrk, public, private, key_public, key_name = slot
    target_public = target.ctx.read_public(target.srk())[0].marshal()
    grant = grant_for(a, key, grant_target or target, epoch)
    check_grant(
        grant,
        vmid=100,
        vm_uuid=UUID,
        key_public=key_public,
        key_name=key_name,
        source_name=a.name(a.srk()),
        epoch_nv_name=a.name(a.epoch_nv()),
    )
    assert grant_from_dict(grant.to_dict(), "grant") == grant
    approved, r, s, epoch = grant.approved_policy, grant.signature_r, grant.signature_s, grant.epoch
    return duplicate_to(
        a,
        public=public,
        private=private,
        key_public=key_public,
        key_name=key_name,
        policy_ref=REF,
        target_srk_public=target_public,
        approved_policy=approved,
        signature_r=r,
        signature_s=s,
        epoch=epoch,
    )


def test_duplicate_policy_digest_matches_the_tpm(pair):
    a, b = pair
    t = a.t
    sess = a.ctx.start_auth_session(
        t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.TRIAL, t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL), t.TPM2_ALG.SHA256
    )
    try:
        nv = a.epoch_nv()
        a.ctx.policy_duplication_select(sess, b"", b.name(b.srk()), False)
        compat.policy_secret(a.ctx, a.srk(), sess)
        a.ctx.policy_nv(nv, nv, sess, pd.epoch_operand(a.epoch()), 0, t.TPM2_EO.EQ)
        expected = pd.duplicate_policy(b.name(b.srk()), a.name(a.srk()), a.name(nv), a.epoch())
        assert bytes(a.ctx.policy_get_digest(sess)) == expected
    finally:
        a.ctx.flush_context(sess)


def test_target_unseals_the_same_root_key(pair):
    a, b = pair
    key = ec.generate_private_key(ec.SECP256R1())
    slot = seal_on(a, key)
    duplicate, seed = export(a, key, slot, b)
    vrk, public, _private, key_public, key_name = slot
    new_private = import_here(b, public=public, duplicate=duplicate, seed=seed)
    assert unseal_on(b, key, public, new_private, key_public, key_name) == vrk


def test_duplication_to_a_target_the_grant_does_not_name_is_refused(pair, swtpm):
    a, b = pair
    with TpmNode(swtpm.tcti) as c:
        c.provision()
        key = ec.generate_private_key(ec.SECP256R1())
        slot = seal_on(a, key)
        with pytest.raises(TpmError):
            export(a, key, slot, c, grant_target=b)  # granted for b, attempted to c


def test_grant_for_another_vm_is_refused(pair):
    a, b = pair
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())  # another VM's policy key
    slot = seal_on(a, key)
    _vrk, public, private, key_public, key_name = slot
    approved = pd.duplicate_policy(b.name(b.srk()), a.name(a.srk()), a.name(a.epoch_nv()), a.epoch())
    r, s = signed(other, approved)
    with pytest.raises(TpmError):
        duplicate_to(
            a,
            public=public,
            private=private,
            key_public=policy_key_public(other.public_key()),
            key_name=parse_policy_key_public(policy_key_public(other.public_key()))[1],
            policy_ref=REF,
            target_srk_public=b.ctx.read_public(b.srk())[0].marshal(),
            approved_policy=approved,
            signature_r=r,
            signature_s=s,
            epoch=a.epoch(),
        )


def test_source_epoch_bump_revokes_an_unused_grant(pair):
    a, b = pair
    key = ec.generate_private_key(ec.SECP256R1())
    slot = seal_on(a, key)
    old_epoch = a.epoch()
    a.bump_epoch()
    with pytest.raises(PolicyError, match="revoked"):
        export(a, key, slot, b, epoch=old_epoch)


def test_non_migratable_keyslot_cannot_be_duplicated_and_stays_intact(pair):
    a, b = pair
    key = ec.generate_private_key(ec.SECP256R1())
    slot = seal_on(a, key, migratable=False)
    with pytest.raises(TpmError):
        export(a, key, slot, b)
    vrk, public, private, key_public, key_name = slot
    assert unseal_on(a, key, public, private, key_public, key_name) == vrk


def test_duplicate_imported_on_the_wrong_tpm_is_refused(pair, swtpm):
    a, b = pair
    with TpmNode(swtpm.tcti) as c:
        c.provision()
        key = ec.generate_private_key(ec.SECP256R1())
        slot = seal_on(a, key)
        duplicate, seed = export(a, key, slot, b)
        with pytest.raises(TpmError, match="importing"):
            import_here(c, public=slot[1], duplicate=duplicate, seed=seed)


def test_grant_for_another_source_node_is_refused_before_the_tpm(pair):
    a, b = pair
    key = ec.generate_private_key(ec.SECP256R1())
    slot = seal_on(a, key)
    grant = grant_for(b, key, a)  # lets the VM leave b, presented on a
    with pytest.raises(PolicyError, match="leave node"):
        check_grant(
            grant,
            vmid=100,
            vm_uuid=UUID,
            key_public=slot[3],
            key_name=slot[4],
            source_name=a.name(a.srk()),
            epoch_nv_name=a.name(a.epoch_nv()),
        )


def test_grant_format_is_strict(pair):
    a, b = pair
    doc = grant_for(a, ec.generate_private_key(ec.SECP256R1()), b).to_dict()
    for change, message in (
        ({"policy_ref": "ironclaw:vm:00000000-0000-4000-8000-000000000000"}, "policy_ref"),
        ({"extra": 1}, "extra"),
        ({"epoch": True}, "epoch"),
        ({"format": "ironclaw-grant/3"}, "ironclaw-grant/3"),
        ({"format": "ironclaw-grant/1"}, "no longer accepted: its duplication policy does not bind the source"),
        ({"target_public": ""}, "target_public"),
    ):
        with pytest.raises(FormatError, match=message):
            grant_from_dict({**doc, **change}, "grant")
