# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node holds for one VM, in the shape a manifest records it.

Only hashes, sizes and header fields are read; nothing is decrypted. Whether a
file belongs to the VM is not judged here: the signed manifest names the exact
SHA-256 of each file, and verification compares against it.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import parse_blob
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import parse_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import KEYSLOT_FILE
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import BLOB_SUFFIX, VmDir


def describe_vm(state_dir: str, vmid: int, vm_uuid: str) -> dict:
    """``{"keyslot": {name, sha256, keyslot_id} | None, "blobs": [{name, sha256, size, generation}]}``.

    A VM without a directory or keyslot has ``keyslot`` None. Symlinks, non-regular
    files and files that do not parse are refused with FormatError naming the file.
    """
    vm = VmDir(state_dir, vmid, vm_uuid)
    if not vm.exists():
        return {"keyslot": None, "blobs": []}
    keyslot = None
    try:
        data = read_regular(vm.keyslot_path, f"VM {vm.vmid} keyslot")
    except FileNotFoundError:
        pass
    else:
        parsed = parse_keyslot(data, f"VM {vm.vmid} keyslot ({vm.keyslot_path})")
        keyslot = {"name": KEYSLOT_FILE, "sha256": hashlib.sha256(data).hexdigest(), "keyslot_id": parsed.keyslot_id}
    blobs = []
    # blob_names() skips dot files (temporary files of an atomic write) and
    # anything not ending in .sealed, such as approval.json and manifest.json.
    for name in vm.blob_names():
        path = os.path.join(vm.path, name + BLOB_SUFFIX)
        try:
            validate.secret_name(name)
        except InputError as err:
            raise FormatError(f"{path}: not a sealed blob of this collection: {err}") from None
        what = f"blob '{name}' of VM {vm.vmid} ({path})"
        data = read_regular(path, what)
        blobs.append(
            {
                "name": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "generation": parse_blob(data, what).header.generation,
            }
        )
    return {"keyslot": keyslot, "blobs": blobs}
