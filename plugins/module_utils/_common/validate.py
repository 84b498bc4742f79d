# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks for the identifiers a user gives: VMID, VM uuid, secret name, keyslot id.

Each function returns the value in its one canonical form or raises
InputError. The format parsers reuse them and additionally require that the
stored value already is in canonical form.
"""

from __future__ import annotations

import re

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError

VMID_MIN = 100
VMID_MAX = 999_999_999

# Decimal without sign, whitespace or leading zero: "0100" is refused, not
# read as 100, so a VMID has exactly one spelling everywhere.
_VMID_TEXT = re.compile(r"[1-9][0-9]*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED_SUFFIXES = (".tmp", ".lock")
_KEYSLOT_ID = re.compile(r"[0-9a-f]{32}")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def vmid(value: object) -> int:
    """Return the VMID as int; accepts an int or a plain decimal string."""
    if isinstance(value, str) and _VMID_TEXT.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise InputError(
            f"VMID must be an integer from {VMID_MIN} to {VMID_MAX} (digits only, no leading zero), "
            f"found {_show(value)}; give the VMID as shown by 'qm list'"
        )
    if not VMID_MIN <= number <= VMID_MAX:
        raise InputError(
            f"VMID must be from {VMID_MIN} to {VMID_MAX}, found {number}; give the VMID as shown by 'qm list'"
        )
    return number


def vm_uuid(value: object) -> str:
    """Return the VM uuid in lowercase 8-4-4-4-12 form."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InputError(
            "VM uuid must be in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits), "
            f"found {_show(value)}; use the uuid from the VM's smbios1 setting"
        )
    return value.lower()


def secret_name(value: object) -> str:
    """Return the secret name; it becomes the file name ``<name>.sealed``."""
    if not isinstance(value, str) or not _SECRET_NAME.fullmatch(value):
        raise InputError(
            "secret name must be 1 to 128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit, "
            f"found {_show(value)}; rename the secret"
        )
    if value.lower().endswith(_RESERVED_SUFFIXES):
        raise InputError(
            f"secret name must not end in {' or '.join(_RESERVED_SUFFIXES)} (reserved for temporary and lock files), "
            f"found {_show(value)}; rename the secret"
        )
    return value


def node_name(value: object) -> str:
    """A node name (Proxmox node / inventory host): also a file name in the store."""
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise InputError(
            "node name must be 1 to 253 characters of A-Z a-z 0-9 . _ - starting with a letter or digit, "
            f"found {_show(value)}"
        )
    return value


def keyslot_id(value: object) -> str:
    """Return the keyslot id: 32 lowercase hex characters (16 random bytes)."""
    if not isinstance(value, str) or not _KEYSLOT_ID.fullmatch(value):
        raise InputError(
            f"keyslot id must be 32 lowercase hex characters, found {_show(value)}; copy it from the VM's keyslot.json"
        )
    return value
