# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One interface over the two node backends; the backend is always chosen explicitly."""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import SoftwareSealed, Tpm2Sealed
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import (
    name_of_public_area,
    parse_policy_key_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.verify import check_approval, check_grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._software import keyslot as sw_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._software import transfer as sw_transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._software.node import SoftwareNode, software_node_name

BACKENDS = ("tpm2", "software")


class _Backend:
    """Shared parts: facts and provisioning delegate to the node object."""

    def __init__(self, node):
        self.node = node
        self.backend = node.backend

    def close(self) -> None:
        self.node.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def facts(self, pcrs=None):
        return self.node.facts(pcrs)

    def plan_provision(self) -> list[str]:
        return self.node.plan_provision()

    def provision(self) -> list[str]:
        return self.node.provision()

    def check_keyslot_node(self, keyslot) -> None:
        node_name = self.identity()[0]
        if keyslot.backend != self.backend:
            raise InputError(
                f"VM {keyslot.vmid}'s keyslot uses backend {keyslot.backend}, but backend {self.backend} was asked for"
            )
        if keyslot.node_name != node_name:
            raise PolicyError(
                f"VM {keyslot.vmid}'s keyslot is bound to node {keyslot.node_name.hex()[:16]}…, but this node is "
                f"{node_name.hex()[:16]}…: it was sealed on (or copied from) another node"
            )

    def check_approval(self, keyslot, approval, epoch=None):
        node_name, nv_name = self.identity()
        return check_approval(
            approval,
            vmid=keyslot.vmid,
            vm_uuid=keyslot.vm_uuid,
            key_public=keyslot.policy_key_public,
            key_name=keyslot.policy_key_name,
            node_name=node_name,
            epoch_nv_name=nv_name,
            epoch=epoch,
        )

    def check_grant(self, keyslot, grant) -> None:
        """The grant lets this VM's keyslot leave this node, at its current epoch, for the node it names."""
        node_name, nv_name = self.identity()
        check_grant(
            grant,
            vmid=keyslot.vmid,
            vm_uuid=keyslot.vm_uuid,
            key_public=keyslot.policy_key_public,
            key_name=keyslot.policy_key_name,
            source_name=node_name,
            epoch_nv_name=nv_name,
        )
        if self.target_name(grant.target_public) != grant.target_name:
            raise PolicyError(
                f"the grant names target {grant.target_name.hex()[:16]}…, but the public key it carries belongs to "
                f"{self.target_name(grant.target_public).hex()[:16]}… (altered grant or wrong node record)"
            )
        if grant.target_name == node_name:
            raise InputError("the grant's target is this node itself: a VM cannot migrate to the node it is on")

    def check_bundle_target(self, bundle) -> None:
        node_name = self.identity()[0]
        if bundle.backend != self.backend:
            raise InputError(
                f"the bundle carries a {bundle.backend} keyslot, but this node uses backend {self.backend}: "
                "source and target must use the same backend"
            )
        if bundle.target_name != node_name:
            raise PolicyError(
                f"the bundle was made for node {bundle.target_name.hex()[:16]}…, but this node is "
                f"{node_name.hex()[:16]}…: only the node it was exported to can import it"
            )
        key_name = parse_policy_key_public(bundle.policy_key_public, "bundle policy key")[1]
        if key_name != bundle.policy_key_name:
            raise PolicyError("the bundle's policy key does not have the name it claims (altered bundle)")


def transfer_binding(keyslot, source_name: bytes, target_name: bytes) -> dict:
    return {
        "vmid": keyslot.vmid,
        "vm_uuid": keyslot.vm_uuid,
        "keyslot_id": keyslot.keyslot_id,
        "source": source_name.hex(),
        "target": target_name.hex(),
    }


class TpmBackend(_Backend):
    def identity(self) -> tuple[bytes, bytes]:
        return self.node.name(self.node.srk()), self.node.name(self.node.epoch_nv())

    def epoch(self) -> int:
        return self.node.epoch()

    def seal(self, vrk: bytes, *, keyslot_id: str, vmid: int, vm_uuid: str, policy_key_name: bytes, migratable: bool):
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.keyslot import seal_vrk  # noqa: PLC0415

        auth_policy = pd.authorize(policy_key_name, pd.policy_ref_for(vm_uuid))
        public, private = seal_vrk(self.node, vrk, auth_policy, migratable)
        return Tpm2Sealed(public=public, private=private)

    def unseal(self, keyslot, approval) -> bytes:
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.keyslot import (  # noqa: PLC0415
            auth_policy,
            unseal_vrk,
        )

        self.check_keyslot_node(keyslot)
        # epoch=None: the TPM's PolicyNV compares it, which spares an NV read on the good path.
        selection = self.check_approval(keyslot, approval, epoch=None)
        if auth_policy(keyslot.sealed.public) != pd.authorize(
            keyslot.policy_key_name, pd.policy_ref_for(keyslot.vm_uuid)
        ):
            raise PolicyError(
                f"VM {keyslot.vmid}'s keyslot.json names a policy key (or VM) that its TPM object was not sealed to: "
                "keyslot.json was altered; restore an intact copy"
            )
        return unseal_vrk(
            self.node,
            public=keyslot.sealed.public,
            private=keyslot.sealed.private,
            key_public=keyslot.policy_key_public,
            key_name=keyslot.policy_key_name,
            policy_ref=pd.policy_ref_for(keyslot.vm_uuid),
            approved_policy=approval.approved_policy,
            signature_r=approval.signature_r,
            signature_s=approval.signature_s,
            epoch=approval.epoch,
            pcr_selection=selection,
            pcr_digest=approval.pcrs.digest if approval.pcrs else None,
        )

    def bump_epoch(self) -> int:
        return self.node.bump_epoch()

    def revoke(self, revoked_dirs=()) -> tuple[int, list[dict]]:
        """Bump the epoch: every approval signed for this node dies. The TPM reads no keyslot to do it."""
        return self.node.bump_epoch(), []

    @staticmethod
    def target_name(target_public: bytes) -> bytes:
        """TPM name of the target SRK's TPM2B_PUBLIC."""
        if len(target_public) < 4 or int.from_bytes(target_public[:2], "big") != len(target_public) - 2:
            raise InputError("the target's SRK public area is not a TPM2B_PUBLIC (wrong node record?)")
        return name_of_public_area(target_public[2:])

    def export_keyslot(self, keyslot, grant) -> dict:
        """TPM2_Duplicate to the target SRK under the grant; the VRK never leaves a TPM in the clear."""
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.duplicate import duplicate_to  # noqa: PLC0415

        duplicate, seed = duplicate_to(
            self.node,
            public=keyslot.sealed.public,
            private=keyslot.sealed.private,
            key_public=keyslot.policy_key_public,
            key_name=keyslot.policy_key_name,
            policy_ref=pd.policy_ref_for(keyslot.vm_uuid),
            target_srk_public=grant.target_public,
            approved_policy=grant.approved_policy,
            signature_r=grant.signature_r,
            signature_s=grant.signature_s,
            epoch=grant.epoch,
        )
        return {"public": keyslot.sealed.public, "duplicate": duplicate, "seed": seed}

    def import_keyslot(self, bundle) -> Tpm2Sealed:
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.duplicate import import_here  # noqa: PLC0415
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.keyslot import auth_policy  # noqa: PLC0415

        public = bundle.keyslot["public"]
        if auth_policy(public) != pd.authorize(bundle.policy_key_name, pd.policy_ref_for(bundle.vm_uuid)):
            raise PolicyError(
                f"the bundle's keyslot object is not sealed to VM {bundle.vmid}'s policy key and uuid (altered bundle)"
            )
        private = import_here(
            self.node, public=public, duplicate=bundle.keyslot["duplicate"], seed=bundle.keyslot["seed"]
        )
        return Tpm2Sealed(public=public, private=private)


class SoftwareBackend(_Backend):
    def identity(self) -> tuple[bytes, bytes]:
        return self.node.identity()

    def epoch(self) -> int:
        return self.node.epoch()

    def seal(self, vrk: bytes, *, keyslot_id: str, vmid: int, vm_uuid: str, policy_key_name: bytes, migratable: bool):
        node_name = self.identity()[0]
        version = self.node.epoch()
        binding = {
            "vmid": vmid,
            "vm_uuid": vm_uuid,
            "keyslot_id": keyslot_id,
            "policy_key_name": policy_key_name,
            "migratable": migratable,
            "node_name": node_name,
        }
        wrapped = sw_keyslot.wrap_vrk(self.node.kek(version), vrk, binding)
        return SoftwareSealed(kek_version=version, wrapped=wrapped)

    def unseal(self, keyslot, approval) -> bytes:
        self.check_keyslot_node(keyslot)
        self.check_approval(keyslot, approval, epoch=self.node.epoch())
        kek = self.node.kek(keyslot.sealed.kek_version)
        return sw_keyslot.unwrap_vrk(kek, keyslot.sealed.wrapped, sw_keyslot.binding_of(keyslot))

    def bump_epoch(self) -> int:
        return self.revoke()[0]

    def revoke(self, revoked_dirs=()) -> tuple[int, list[dict]]:
        """Bump the KEK version: the keyslots on disk are rewrapped (but those in `revoked_dirs`), the old KEK
        erased. Returns the new epoch and the keyslots that could not be rewrapped (now unusable)."""
        unusable = []

        def rewrap(old_kek: bytes, old: int, new_kek: bytes, new: int) -> None:
            unusable.extend(sw_keyslot.rewrap_all(self.node.state_dir, old_kek, old, new_kek, new, revoked_dirs))

        return self.node.bump_epoch(rewrap), unusable

    @staticmethod
    def target_name(target_public: bytes) -> bytes:
        if len(target_public) != 32:
            raise InputError("the target's enrollment key is not an X25519 public key (wrong node record?)")
        return software_node_name(target_public)

    def export_keyslot(self, keyslot, grant) -> dict:
        """The VRK wrapped to the target's X25519 enrollment key, bound to VM, keyslot and both nodes."""
        epoch = self.node.epoch()
        if grant.epoch != epoch:
            raise PolicyError(
                f"the duplication grant is for source epoch {grant.epoch} but this node is at epoch {epoch}: "
                "it was revoked; sign a new grant"
            )
        kek = self.node.kek(keyslot.sealed.kek_version)
        vrk = sw_keyslot.unwrap_vrk(kek, keyslot.sealed.wrapped, sw_keyslot.binding_of(keyslot))
        binding = transfer_binding(keyslot, keyslot.node_name, grant.target_name)
        ephemeral, wrapped = sw_transfer.wrap_for_target(vrk, grant.target_public, binding)
        return {"ephemeral_public": ephemeral, "wrapped": wrapped}

    def import_keyslot(self, bundle) -> SoftwareSealed:
        private = read_regular(os.path.join(self.node.dir, "enrollment.key"), "enrollment key", 32)
        binding = transfer_binding(bundle, bundle.source_name, bundle.target_name)
        vrk = sw_transfer.unwrap_at_target(
            private, bundle.keyslot["ephemeral_public"], bundle.keyslot["wrapped"], binding
        )
        return self.seal(
            vrk,
            keyslot_id=bundle.keyslot_id,
            vmid=bundle.vmid,
            vm_uuid=bundle.vm_uuid,
            policy_key_name=bundle.policy_key_name,
            migratable=True,
        )


def open_backend(backend: str, *, tcti: str | None, state_dir: str):
    if backend == "tpm2":
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import resolve_tcti  # noqa: PLC0415
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode  # noqa: PLC0415

        return TpmBackend(TpmNode(resolve_tcti(tcti)))
    if backend == "software":
        return SoftwareBackend(SoftwareNode(state_dir))
    raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
