# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Node-side software checks of an unseal approval.

For the software backend these checks ARE the enforcement; for tpm2 they turn
the TPM's terse refusals into messages that say what differs, before any TPM
command, and the TPM enforces the same rules again.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    InvalidSignature,
    Prehashed,
    ec,
    encode_dss_signature,
    hashes,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import parse_policy_key_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection


def check_signature(key_public: bytes, approved_policy: bytes, policy_ref: bytes, r: bytes, s: bytes) -> None:
    key, _name = parse_policy_key_public(key_public)
    signature = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    try:
        key.verify(signature, pd.approval_hash(approved_policy, policy_ref), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature as exc:
        raise PolicyError(
            "the approval's signature is not valid for this VM's policy key (tampered or forged)"
        ) from exc


def check_approval(
    approval,
    *,
    vmid: int,
    vm_uuid: str,
    key_public: bytes,
    key_name: bytes,
    node_name: bytes,
    epoch_nv_name: bytes,
    epoch: int | None,
) -> PcrSelection | None:
    """Check an Approval against this VM, keyslot and node; return its PCR selection.

    `epoch` None skips the epoch comparison (tpm2: the TPM compares it and we
    avoid an NV read on the good path).
    """
    if approval.vmid != vmid or approval.vm_uuid != vm_uuid:
        raise PolicyError(f"the approval is for VM {approval.vmid} ({approval.vm_uuid}), not VM {vmid} ({vm_uuid})")
    if approval.key_name != key_name:
        raise PolicyError(
            f"the approval was signed by policy key {approval.key_name.hex()[:16]}…, but this keyslot trusts "
            f"{key_name.hex()[:16]}… (unknown policy key: was the VM's policy key replaced?)"
        )
    if approval.node_name != node_name:
        raise PolicyError(
            f"the approval is for node {approval.node_name.hex()[:16]}…, but this node is {node_name.hex()[:16]}…: "
            "approvals are bound to one node's SRK; sign one for this node"
        )
    if epoch is not None and approval.epoch != epoch:
        raise PolicyError(
            f"the approval is for epoch {approval.epoch} but this node is at epoch {epoch}: it was revoked; "
            "the controller must sign a new approval"
        )
    selection = PcrSelection.parse(approval.pcrs.selection) if approval.pcrs else None
    pcr_digest = approval.pcrs.digest if approval.pcrs else None
    expected = pd.unseal_policy(node_name, epoch_nv_name, approval.epoch, selection, pcr_digest)
    if approval.approved_policy != expected:
        raise PolicyError(
            "the approval's signed policy is not the unseal policy for this node, epoch and PCRs "
            "(made for another node, epoch-counter or template?)"
        )
    # The format already insists that policy_ref is "ironclaw:vm:<vm_uuid>".
    check_signature(
        key_public, approval.approved_policy, pd.policy_ref_for(vm_uuid), approval.signature_r, approval.signature_s
    )
    return selection


def check_grant(
    grant,
    *,
    vmid: int,
    vm_uuid: str,
    key_public: bytes,
    key_name: bytes,
    source_name: bytes,
    epoch_nv_name: bytes,
) -> None:
    """Check a duplication grant against this VM, its keyslot's policy key and this (source) node."""
    if grant.vmid != vmid or grant.vm_uuid != vm_uuid:
        raise PolicyError(f"the grant is for VM {grant.vmid} ({grant.vm_uuid}), not VM {vmid} ({vm_uuid})")
    if grant.key_name != key_name:
        raise PolicyError("the grant was signed by another policy key than this keyslot's (unknown policy key)")
    if grant.source_name != source_name:
        raise PolicyError(
            f"the grant lets the VM leave node {grant.source_name.hex()[:16]}…, not this node {source_name.hex()[:16]}…"
        )
    if grant.approved_policy != pd.duplicate_policy(grant.target_name, source_name, epoch_nv_name, grant.epoch):
        raise PolicyError(
            "the grant's signed policy is not a duplication from this node to its target at its epoch (altered?)"
        )
    check_signature(key_public, grant.approved_policy, pd.policy_ref_for(vm_uuid), grant.signature_r, grant.signature_s)
