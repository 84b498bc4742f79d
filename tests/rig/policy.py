"""The controller's side of a test or benchmark: approvals signed from a node's facts."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_approval


def approve(keys: PolicyKeyStore, vmid: int, vm_uuid: str, facts, **options):
    """An unseal approval of VM (vmid, vm_uuid) for the node whose facts are given, at its current epoch, signed by
    the VM's policy key in keys (as ironclaw_policy state=approved does). options: pcrs, pcr_digest."""
    return sign_approval(
        keys.load(vmid, vm_uuid),
        vmid=vmid,
        vm_uuid=vm_uuid,
        node_name=facts.node_name,
        epoch_nv_name=facts.epoch_nv_name,
        epoch=facts.epoch,
        **options,
    )
