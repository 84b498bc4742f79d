# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM 2.0 policy digests computed in software (TPM 2.0 Part 3, §23).

The controller signs approvals without a TPM, so it must compute exactly the
digest a node's policy session will hold. Unit tests compare every function
here with a real TPM trial session.
"""

from __future__ import annotations

import hashlib
import struct

from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

DIGEST_SIZE = 32
ZERO_DIGEST = b"\0" * DIGEST_SIZE

# TPM_CC values (TPM 2.0 Part 2, §6.5.2)
CC_POLICY_SECRET = 0x00000151
CC_POLICY_NV = 0x00000149
CC_POLICY_COMMAND_CODE = 0x0000016C
CC_POLICY_AUTHORIZE = 0x0000016A
CC_POLICY_PCR = 0x0000017F
CC_POLICY_DUPLICATION_SELECT = 0x00000188
CC_UNSEAL = 0x0000015E
CC_DUPLICATE = 0x0000014B

# TPM_EO_EQ (Part 2, §6.8)
EO_EQ = 0x0000

POLICY_REF_PREFIX = "ironclaw:vm:"


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _cc(code: int) -> bytes:
    return struct.pack(">I", code)


def policy_ref_for(vm_uuid: str) -> bytes:
    return (POLICY_REF_PREFIX + vm_uuid).encode("ascii")


def command_code(digest: bytes, code: int) -> bytes:
    return _h(digest, _cc(CC_POLICY_COMMAND_CODE), _cc(code))


def _policy_update(digest: bytes, code: int, name: bytes, ref: bytes) -> bytes:
    # PolicyUpdate() always hashes twice, the second time with the (maybe empty) policyRef.
    return _h(_h(digest, _cc(code), name), ref)


def secret(digest: bytes, auth_object_name: bytes, ref: bytes = b"") -> bytes:
    return _policy_update(digest, CC_POLICY_SECRET, auth_object_name, ref)


def nv(digest: bytes, nv_name: bytes, operand: bytes, offset: int = 0, operation: int = EO_EQ) -> bytes:
    args = _h(operand, struct.pack(">HH", offset, operation))
    return _h(digest, _cc(CC_POLICY_NV), args, nv_name)


def pcr(digest: bytes, selection: PcrSelection, pcr_digest: bytes) -> bytes:
    return _h(digest, _cc(CC_POLICY_PCR), selection.marshal(), pcr_digest)


def duplication_select(
    digest: bytes, new_parent_name: bytes, object_name: bytes = b"", include_object: bool = False
) -> bytes:
    parts = [digest, _cc(CC_POLICY_DUPLICATION_SELECT)]
    if include_object:
        parts.append(object_name)
    parts += [new_parent_name, b"\x01" if include_object else b"\x00"]
    return _h(*parts)


def authorize(key_name: bytes, ref: bytes) -> bytes:
    """authPolicy of an object whose policy is delegated to a signing key."""
    return _policy_update(ZERO_DIGEST, CC_POLICY_AUTHORIZE, key_name, ref)


def epoch_operand(epoch: int) -> bytes:
    return struct.pack(">Q", epoch)


def unseal_policy(
    srk_name: bytes,
    epoch_nv_name: bytes,
    epoch: int,
    pcr_selection: PcrSelection | None = None,
    pcr_digest: bytes | None = None,
) -> bytes:
    """The sub-policy an unseal approval signs: the order is part of the contract.

    PolicyCommandCode(Unseal) ∧ PolicySecret(node SRK) ∧ PolicyNV(epoch == e) [∧ PolicyPCR].
    """
    d = command_code(ZERO_DIGEST, CC_UNSEAL)
    d = secret(d, srk_name)
    d = nv(d, epoch_nv_name, epoch_operand(epoch))
    if pcr_selection is not None:
        d = pcr(d, pcr_selection, pcr_digest)
    return d


def duplicate_policy(target_srk_name: bytes, source_srk_name: bytes, epoch_nv_name: bytes, epoch: int) -> bytes:
    """The sub-policy a duplication grant signs: only to this target SRK, only from this source TPM at its epoch.

    PolicyDuplicationSelect(target SRK name) ∧ PolicySecret(source SRK) ∧ PolicyNV(source epoch == e).

    - PolicyDuplicationSelect limits the session to TPM2_Duplicate and fixes the new parent. The TPM
      refuses it after a PolicyCommandCode, so there is no PolicyCommandCode(Duplicate) term.
    - PolicySecret binds the grant to the source's TPM: epoch NV indices have the same name on every
      node and epochs collide, so without it a grant signed for node C at epoch e would let node A
      duplicate an old copy of the keyslot once A is at epoch e too. Only the TPM holding that SRK can
      satisfy it (another TPM can load C's SRK public, but has no authValue for it). Checked on swtpm
      0.7 (tpm2-pytss 3.0 and 1.2): PolicySecret is accepted after PolicyDuplicationSelect and the
      session then authorizes TPM2_Duplicate.
    - PolicyNV: a source epoch bump also revokes unused grants.
    """
    d = duplication_select(ZERO_DIGEST, target_srk_name)
    d = secret(d, source_srk_name)
    return nv(d, epoch_nv_name, epoch_operand(epoch))


def approval_hash(approved_policy: bytes, ref: bytes) -> bytes:
    """aHash that the policy key signs and TPM2_VerifySignature checks."""
    return _h(approved_policy, ref)
