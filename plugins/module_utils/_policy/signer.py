# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: per-VM ECDSA P-256 policy keys and the unseal approvals they sign.

Private keys live only under `<controller_dir>/policy-keys/` (0700 directory,
0600 files, PKCS#8 PEM) and never reach a node.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    Prehashed,
    decode_dss_signature,
    ec,
    hashes,
    serialization,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import Approval, PcrBinding
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import Grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import (
    parse_policy_key_public,
    policy_key_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

KEY_DIR = "policy-keys"


class PolicyKeyStore:
    def __init__(self, controller_dir: str):
        self.controller_dir = os.path.expanduser(controller_dir)
        self.dir = os.path.join(self.controller_dir, KEY_DIR)

    def path(self, vmid: int, vm_uuid: str) -> str:
        return os.path.join(self.dir, f"vm-{validate.vmid(vmid)}-{validate.vm_uuid(vm_uuid)}.pem")

    def exists(self, vmid: int, vm_uuid: str) -> bool:
        return os.path.lexists(self.path(vmid, vm_uuid))

    def tombstone_path(self, vmid: int, vm_uuid: str) -> str:
        return self.path(vmid, vm_uuid)[: -len(".pem")] + ".destroyed"

    def destroyed_at(self, vmid: int, vm_uuid: str) -> str | None:
        """When the VM's policy key was destroyed (it can then never be created again), or None."""
        try:
            return read_regular(self.tombstone_path(vmid, vm_uuid), "policy key tombstone", 256).decode().strip()
        except FileNotFoundError:
            return None

    def refuse_destroyed(self, vmid: int, vm_uuid: str) -> None:
        destroyed = self.destroyed_at(vmid, vm_uuid)
        if destroyed:
            raise PolicyError(
                f"VM {vmid} ({vm_uuid}) was decommissioned on {destroyed}: no policy key, approval or grant can "
                "ever be made for it again. A re-used VMID is a new VM with a new uuid"
            )

    def destroy(self, vmid: int, vm_uuid: str, now: str) -> bool:
        """Leave a tombstone, then unlink the key: no approval or grant can be signed for the VM again.

        Unlinking is not erasure on SSD or copy-on-write storage; keep the controller directory on
        storage you can trust, or encrypted.
        """
        tomb = self.tombstone_path(vmid, vm_uuid)
        changed = False
        if not os.path.lexists(tomb):
            ensure_dir(self.controller_dir, 0o700)
            ensure_dir(self.dir, 0o700)
            write_atomic(tomb, f"{now}\n".encode(), 0o600)
            changed = True
        path = self.path(vmid, vm_uuid)
        if os.path.lexists(path):
            with open(path, "r+b") as fh:  # best effort on storage that overwrites in place
                size = os.fstat(fh.fileno()).st_size
                fh.write(os.urandom(size))
                fh.flush()
                os.fsync(fh.fileno())
            os.unlink(path)
            changed = True
        return changed

    def create(self, vmid: int, vm_uuid: str) -> bool:
        """Create the VM's key unless it exists; True if this call created it.

        Two runs for one VM may get here at once: the file is created exclusively,
        never replaced, so both go on with the one key that a keyslot may trust.
        """
        self.refuse_destroyed(vmid, vm_uuid)
        ensure_dir(self.controller_dir, 0o700)
        ensure_dir(self.dir, 0o700)
        path = self.path(vmid, vm_uuid)
        if os.path.lexists(path):
            return False
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            write_atomic(path, pem, 0o600, exclusive=True)
        except FileExistsError:
            return False
        return True

    def load(self, vmid: int, vm_uuid: str) -> ec.EllipticCurvePrivateKey:
        path = self.path(vmid, vm_uuid)
        if not os.path.lexists(path):
            raise PolicyError(
                f"no policy key for VM {vmid} ({vm_uuid}) in {self.dir}: it was never created on this controller "
                "or the VM was decommissioned (then it can never be approved again)"
            )
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise PolicyError(
                f"policy key {path} must be a regular file owned by you with mode 0600 "
                f"(found mode {stat.S_IMODE(st.st_mode):04o}); fix it with chmod 600 before signing"
            )
        key = serialization.load_pem_private_key(read_regular(path, "policy key", 16384), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise PolicyError(f"policy key {path} is not an ECDSA P-256 key")
        return key

    def public(self, vmid: int, vm_uuid: str) -> tuple[bytes, bytes]:
        """(TPM2B_PUBLIC, TPM name) of the VM's policy key."""
        data = policy_key_public(self.load(vmid, vm_uuid).public_key())
        _key, name = parse_policy_key_public(data)
        return data, name


def sign_approval(
    key: ec.EllipticCurvePrivateKey,
    *,
    vmid: int,
    vm_uuid: str,
    node_name: bytes,
    epoch_nv_name: bytes,
    epoch: int,
    pcrs: PcrSelection | None = None,
    pcr_digest: bytes | None = None,
    issued_at: str | None = None,
) -> Approval:
    """Sign the unseal sub-policy for one VM on one node at one epoch (optionally at PCR values)."""
    if (pcrs is None) != (pcr_digest is None):
        raise InputError("a PCR selection needs its PCR digest (and the other way round)")
    approved = pd.unseal_policy(node_name, epoch_nv_name, epoch, pcrs, pcr_digest)
    r, s, key_name = _sign_policy(key, vm_uuid, approved)
    return Approval(
        vmid=validate.vmid(vmid),
        vm_uuid=validate.vm_uuid(vm_uuid),
        node_name=node_name,
        epoch=epoch,
        pcrs=PcrBinding(selection=str(pcrs), digest=pcr_digest) if pcrs is not None else None,
        approved_policy=approved,
        key_name=key_name,
        signature_r=r,
        signature_s=s,
        issued_at=issued_at or canonical.utc_timestamp(),
    )


def _sign_policy(key, vm_uuid: str, approved: bytes) -> tuple[bytes, bytes, bytes]:
    """ECDSA over aHash = SHA-256(approvedPolicy || "ironclaw:vm:<uuid>"); returns (r, s, key name)."""
    ref = pd.policy_ref_for(validate.vm_uuid(vm_uuid))
    r, s = decode_dss_signature(key.sign(pd.approval_hash(approved, ref), ec.ECDSA(Prehashed(hashes.SHA256()))))
    key_name = parse_policy_key_public(policy_key_public(key.public_key()))[1]
    return r.to_bytes(32, "big"), s.to_bytes(32, "big"), key_name


def sign_grant(
    key,
    *,
    vmid: int,
    vm_uuid: str,
    source_name: bytes,
    source_epoch_nv_name: bytes,
    epoch: int,
    target_name: bytes,
    target_public: bytes,
    issued_at: str | None = None,
) -> Grant:
    """Allow this VM's keyslot to be duplicated from the source's TPM (at its epoch) to exactly one target SRK.

    The policy names the source SRK (PolicySecret), so only the source's own TPM can use the grant.
    """
    approved = pd.duplicate_policy(target_name, source_name, source_epoch_nv_name, epoch)
    r, s, key_name = _sign_policy(key, vm_uuid, approved)
    return Grant(
        vmid=validate.vmid(vmid),
        vm_uuid=validate.vm_uuid(vm_uuid),
        source_name=source_name,
        epoch=epoch,
        target_name=target_name,
        target_public=target_public,
        approved_policy=approved,
        key_name=key_name,
        signature_r=r,
        signature_s=s,
        issued_at=issued_at or canonical.utc_timestamp(),
    )
