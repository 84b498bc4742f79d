# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One VM's sealed state on a node: `<state_dir>/<vmid>/` with keyslot, approval and blobs."""

from __future__ import annotations

import contextlib
import os
import stat

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import parse_approval
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import parse_blob
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import parse_keyslot

BLOB_SUFFIX = ".sealed"


class VmDir:
    def __init__(self, state_dir: str, vmid: int, vm_uuid: str):
        self.state_dir = state_dir
        self.vmid = validate.vmid(vmid)
        self.vm_uuid = validate.vm_uuid(vm_uuid)
        self.path = os.path.join(state_dir, str(self.vmid))
        self.keyslot_path = os.path.join(self.path, "keyslot.json")
        self.approval_path = os.path.join(self.path, "approval.json")

    def exists(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{self.path} is not a directory (a symlink?); refusing to use it")
        return True

    def ensure(self) -> None:
        ensure_dir(self.state_dir, 0o700)
        ensure_dir(self.path, 0o700)

    def blob_path(self, name: str) -> str:
        return os.path.join(self.path, validate.secret_name(name) + BLOB_SUFFIX)

    # -- reading ---------------------------------------------------------------
    def keyslot(self, required: bool = True):
        read = self.read_keyslot(required)
        return None if read is None else read[1]

    def read_keyslot(self, required: bool = True):
        """(the keyslot.json bytes, the keyslot parsed from those very bytes), or None when absent and not required."""
        try:
            data = read_regular(self.keyslot_path, f"VM {self.vmid} keyslot")
        except FileNotFoundError:
            if required:
                raise InputError(
                    f"VM {self.vmid} has no keyslot in {self.path}: nothing is sealed for it on this node"
                ) from None
            return None
        keyslot = parse_keyslot(data, f"VM {self.vmid} keyslot ({self.keyslot_path})")
        if keyslot.vmid != self.vmid or keyslot.vm_uuid != self.vm_uuid:
            raise InputError(
                f"the keyslot in {self.path} belongs to VM {keyslot.vmid} ({keyslot.vm_uuid}), not VM {self.vmid} "
                f"({self.vm_uuid}); VMIDs are reused: destroy the old VM's state before sealing for a new one"
            )
        return data, keyslot

    def approval(self, required: bool = True):
        try:
            data = read_regular(self.approval_path, f"VM {self.vmid} approval")
        except FileNotFoundError:
            if required:
                raise InputError(
                    f"VM {self.vmid} has no approval in {self.path}: the controller must sign one for this node "
                    "(ironclaw_policy state=approved, then ironclaw_seal state=approved)"
                ) from None
            return None
        return parse_approval(data, f"VM {self.vmid} approval ({self.approval_path})")

    def blob_names(self) -> list[str]:
        if not self.exists():
            return []
        names = []
        for entry in sorted(os.listdir(self.path)):
            if entry.endswith(BLOB_SUFFIX) and not entry.startswith("."):
                names.append(entry[: -len(BLOB_SUFFIX)])
        return names

    def read_blob(self, name: str):
        return self.read_blob_bytes(name)[1]

    def read_blob_bytes(self, name: str):
        """(the blob file's bytes, the blob parsed from those very bytes)."""
        what = f"blob '{name}' of VM {self.vmid}"
        data = read_regular(self.blob_path(name), what)
        return data, parse_blob(data, what)

    # -- writing ---------------------------------------------------------------
    def write(self, path: str, data: bytes) -> None:
        self.ensure()
        write_atomic(path, data, 0o600)


@contextlib.contextmanager
def vm_locks(params: dict, check_mode: bool = False):
    """Shared node lock (an epoch bump takes it exclusively) + exclusive lock on the VM.

    A check-mode run on a node with no state directory yet has nothing to race on, and must not create one.
    """
    if check_mode and not os.path.isdir(params["state_dir"]):
        yield
        return
    with locked(params["state_dir"], "node", params["lock_timeout"], shared=True):
        with locked(params["state_dir"], f"vm-{params['vmid']}", params["lock_timeout"]):
            yield
