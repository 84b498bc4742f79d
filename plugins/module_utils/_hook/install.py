# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installing the pre-start hookscript on a node: the snippet file, the node record, the VM's hookscript option.

Each step looks before it changes anything and says whether it changed (or, in
check mode, would change) something.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, ProxmoxError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.node_record import (
    node_record_path,
    node_record_to_bytes,
)

SNIPPET_MODE = 0o755
NODE_RECORD_MODE = 0o600
MAX_SNIPPET = 8 * 1024 * 1024
_STORAGE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def volid_of(storage: str, file: str) -> str:
    """``<storage>:snippets/<file>``, the hookscript's name in a VM config."""
    if not isinstance(storage, str) or not _STORAGE.fullmatch(storage):
        raise InputError(f"storage must be a Proxmox storage name such as local, found {storage!r}")
    if not isinstance(file, str) or not _FILE.fullmatch(file):
        raise InputError(f"file must be a plain file name (A-Z a-z 0-9 . _ -, no '/'), found {file!r}")
    return f"{storage}:snippets/{file}"


def snippet_digest(path: str) -> str | None:
    """SHA-256 of the installed snippet, or None when there is none."""
    try:
        data = read_regular(path, "hookscript snippet", MAX_SNIPPET)
    except FileNotFoundError:
        return None
    return hashlib.sha256(data).hexdigest()


def ensure_snippet(path: str, content: bytes, check_mode: bool) -> bool:
    """Write the snippet (atomically, mode 0755) unless it already holds these bytes with that mode."""
    if snippet_digest(path) == hashlib.sha256(content).hexdigest():
        if stat.S_IMODE(os.lstat(path).st_mode) == SNIPPET_MODE:
            return False
    if not check_mode:
        ensure_dir(os.path.dirname(os.path.abspath(path)), 0o755)
        write_atomic(path, content, SNIPPET_MODE)
    return True


def remove_snippet(path: str, check_mode: bool) -> bool:
    if not os.path.lexists(path):
        return False
    if os.path.islink(path) or not os.path.isfile(path):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to remove it")
    if not check_mode:
        remove_file(path)
    return True


def ensure_node_record(state_dir: str, node_id: str, check_mode: bool) -> bool:
    """Write hook/node.json (atomically, mode 0600) unless it already holds this node id with that mode."""
    data = node_record_to_bytes(node_id)
    path = node_record_path(state_dir)
    try:
        current = read_regular(path, "hookscript node record")
    except FileNotFoundError:
        current = None
    if current == data and stat.S_IMODE(os.lstat(path).st_mode) == NODE_RECORD_MODE:
        return False
    if not check_mode:
        ensure_dir(state_dir, 0o700)
        ensure_dir(os.path.dirname(path), 0o700)
        write_atomic(path, data, NODE_RECORD_MODE)
    return True


def remove_node_record(state_dir: str, check_mode: bool) -> bool:
    path = node_record_path(state_dir)
    if not os.path.lexists(path):
        return False
    if not check_mode:
        remove_file(path)
    return True


def users_on_node(cli, volid: str) -> list[int]:
    """VMIDs of this node's VMs whose hookscript is `volid`."""
    return [
        guest.vmid
        for guest in cli.guests()
        if guest.type == "qemu" and guest.node == cli.node and cli.config(guest.vmid).get("hookscript") == volid
    ]


def attach(cli, vmid: int, volid: str, check_mode: bool) -> bool:
    """Make `volid` the VM's hookscript; a VM with another hookscript is refused, not overwritten."""
    current = cli.config(vmid).get("hookscript")
    if current == volid:
        return False
    if current:
        raise ProxmoxError(
            f"VM {vmid} already has the hookscript {current}, and Proxmox VE runs only one: nothing was changed. "
            f"Remove it (qm set {vmid} --delete hookscript), or call it from a script of your own and keep this "
            "check in front of it"
        )
    if not check_mode:
        cli.set_hookscript(vmid, volid)
    return True


def detach(cli, vmid: int, volid: str, check_mode: bool) -> bool:
    """Remove the VM's hookscript if it is `volid`; another VM's own hookscript is left alone."""
    if cli.config(vmid).get("hookscript") != volid:
        return False
    if not check_mode:
        cli.set_hookscript(vmid, None)
    return True
