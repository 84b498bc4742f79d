# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a keyslot object between TPMs: TPM2_Duplicate on the source under a signed grant, TPM2_Import
on the target. The VRK never leaves a TPM in the clear: the duplicate is encrypted to the target's SRK."""

from __future__ import annotations

import hashlib

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat, templates
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import tpm_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.keyslot import _flush, _signature, _unmarshal
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

INNER_KEY_LABEL = b"ironclaw:duplicate-inner-wrapper\0"


def inner_wrapper(t, public, target_name: bytes) -> tuple[bytes, object]:
    """(encryption key, symmetric algorithm) of the duplicate's inner wrapper; source and target agree on it.

    An object with encryptedDuplication (every migratable keyslot sealed since grant format 2) can only be
    duplicated with an inner wrapper and to a real parent: the TPM refuses TPM_RH_NULL as new parent and
    TPM_ALG_NULL as symmetric algorithm. The key is derived from public names (keyslot object, target SRK),
    so it needs no channel of its own and adds no secrecy: the VRK's secrecy rests on the outer wrapper,
    the seed encrypted to the target's SRK. Older keyslots without the attribute keep the plain duplicate.
    """
    if not public.publicArea.objectAttributes & t.TPMA_OBJECT.ENCRYPTEDDUPLICATION:
        return b"", t.TPMT_SYM_DEF_OBJECT(algorithm=t.TPM2_ALG.NULL)
    key = hashlib.sha256(INNER_KEY_LABEL + bytes(public.get_name()) + target_name).digest()[:16]
    return key, templates.inner_wrapper_symmetric()


def duplicate_to(
    node: TpmNode,
    *,
    public: bytes,
    private: bytes,
    key_public: bytes,
    key_name: bytes,
    policy_ref: bytes,
    target_srk_public: bytes,
    approved_policy: bytes,
    signature_r: bytes,
    signature_s: bytes,
    epoch: int,
) -> tuple[bytes, bytes]:
    """(duplicate TPM2B_PRIVATE, encrypted seed TPM2B_ENCRYPTED_SECRET) for the target SRK."""
    t = node.t
    srk, nv = node.srk(), node.epoch_nv()
    pub = _unmarshal(t, public, "TPM2B_PUBLIC", "keyslot public area")
    priv = _unmarshal(t, private, "TPM2B_PRIVATE", "keyslot private area")
    key_pub = _unmarshal(t, key_public, "TPM2B_PUBLIC", "policy key")
    target = _unmarshal(t, target_srk_public, "TPM2B_PUBLIC", "target SRK public area")
    target_name = bytes(target.get_name())
    key = obj = sess = None
    try:
        with tpm_errors(
            "checking the duplication grant's signature", "the grant was not signed by this VM's policy key"
        ):
            key = node.ctx.load_external(key_pub, hierarchy=t.ESYS_TR.OWNER)
            ticket = node.ctx.verify_signature(
                key, pd.approval_hash(approved_policy, policy_ref), _signature(node, signature_r, signature_s)
            )
        _flush(node, key)
        key = None
        with tpm_errors("loading the keyslot", "the keyslot was not sealed under this node's SRK"):
            obj = node.ctx.load(srk, priv, pub)
        with tpm_errors("loading the target's SRK public area"):
            parent = node.external(target)
        with tpm_errors("starting the duplication policy session"):
            sess = node.ctx.start_auth_session(
                t.ESYS_TR.NONE,
                t.ESYS_TR.NONE,
                t.TPM2_SE.POLICY,
                t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL),
                t.TPM2_ALG.SHA256,
            )
            # nameHash covers the object's name even when the digest leaves it out (includeObject NO),
            # so one grant serves any keyslot of the VM but the session is bound to this one.
            node.ctx.policy_duplication_select(sess, pub.get_name(), target_name, False)
            # The grant names this node's SRK: only this TPM has its authValue (pd.duplicate_policy).
            compat.policy_secret(node.ctx, srk, sess)
            # TPM2_Duplicate ends the session itself: no FlushContext on the good path.
            node.ctx.trsess_set_attributes(sess, 0, t.TPMA_SESSION.CONTINUESESSION)
        try:
            node.ctx.policy_nv(nv, nv, sess, pd.epoch_operand(epoch), 0, t.TPM2_EO.EQ)
        except t.TSS2_Exception as exc:
            raise PolicyError(
                f"the duplication grant is for source epoch {epoch} but this node is at epoch {node.epoch()}: "
                "it was revoked; sign a new grant"
            ) from exc
        with tpm_errors("authorizing the duplication", "the grant does not name this target or this VM"):
            compat.policy_authorize(node.ctx, sess, approved_policy, policy_ref, key_name, ticket)
        inner_key, inner_sym = inner_wrapper(t, pub, target_name)
        with tpm_errors("duplicating the keyslot", "is the keyslot migratable?"):
            _key, duplicate, seed = node.ctx.duplicate(obj, parent, inner_key, inner_sym, session1=sess)
        sess = None
    finally:
        # The target's SRK (parent) stays loaded for the next VM of the run; node.close() flushes it.
        _flush(node, key, sess, obj)
    return duplicate.marshal(), seed.marshal()


def import_here(node: TpmNode, *, public: bytes, duplicate: bytes, seed: bytes) -> bytes:
    """TPM2_Import a duplicate under this node's SRK; returns the new TPM2B_PRIVATE."""
    t = node.t
    pub = _unmarshal(t, public, "TPM2B_PUBLIC", "keyslot public area")
    dup = _unmarshal(t, duplicate, "TPM2B_PRIVATE", "duplicate")
    sym_seed = _unmarshal(t, seed, "TPM2B_ENCRYPTED_SECRET", "encrypted seed")
    srk = node.srk()
    inner_key, inner_sym = inner_wrapper(t, pub, node.name(srk))
    with tpm_errors("importing the keyslot", "the duplicate was made for another TPM's SRK, or was altered"):
        private = node.ctx.import_(srk, inner_key, pub, dup, sym_seed, inner_sym)
    return private.marshal()
