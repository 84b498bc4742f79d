# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One interface over the two node backends; the backend is always chosen explicitly."""

from __future__ import annotations

import dataclasses
import glob
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular, write_atomic
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import (
    SoftwareSealed,
    Tpm2Sealed,
    parse_keyslot,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.verify import check_approval
from ansible_collections.ironclaw.sealed.plugins.module_utils._software import keyslot as sw_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._software.node import SoftwareNode

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
        return self.node.bump_epoch(self._rewrap)

    def _rewrap(self, old_kek: bytes, old: int, new_kek: bytes, new: int) -> None:
        for path in sorted(glob.glob(os.path.join(self.node.state_dir, "[0-9]*", "keyslot.json"))):
            keyslot = parse_keyslot(read_regular(path, "keyslot"), path)
            if keyslot.backend != "software" or keyslot.sealed.kek_version == new:
                continue
            binding = sw_keyslot.binding_of(keyslot)
            vrk = sw_keyslot.unwrap_vrk(old_kek, keyslot.sealed.wrapped, binding)
            sealed = SoftwareSealed(kek_version=new, wrapped=sw_keyslot.wrap_vrk(new_kek, vrk, binding))
            write_atomic(path, dataclasses.replace(keyslot, sealed=sealed).to_bytes())


def open_backend(backend: str, *, tcti: str | None, state_dir: str):
    if backend == "tpm2":
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import resolve_tcti  # noqa: PLC0415
        from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode  # noqa: PLC0415

        return TpmBackend(TpmNode(resolve_tcti(tcti)))
    if backend == "software":
        return SoftwareBackend(SoftwareNode(state_dir))
    raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
