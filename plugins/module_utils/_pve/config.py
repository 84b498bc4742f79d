# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's Proxmox config as ``qm config`` (or the API) shows it, and the two property strings we read.

``qm config <vmid>`` prints one ``key: value`` line per option in sorted key
order (PVE/CLI/qm.pm); values that hold several fields are property strings,
comma-separated ``key=value`` items (PVE::JSONSchema::parse_property_string):

- ``smbios1: uuid=<uuid>[,base64=1][,manufacturer=...,product=...,...]``: the
  uuid is the VM's identity; with ``base64=1`` the text fields are base64;
- ``meta: creation-qemu=<version>,ctime=<unix time>``: written once, when the
  VM is created; ctime tells a re-created VM with a reused VMID apart.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import ProxmoxError

_LINE = re.compile(r"([a-z][a-z0-9_\-]*): ?(.*)")
_KEY = re.compile(r"[a-z][a-z0-9_\-]*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_QEMU_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+")
SMBIOS1_TEXT_FIELDS = ("version", "serial", "manufacturer", "product", "sku", "family")


@dataclasses.dataclass(frozen=True)
class Smbios1:
    uuid: str | None
    # The text fields, decoded when the value says base64=1.
    fields: dict
    base64: bool


@dataclasses.dataclass(frozen=True)
class Meta:
    ctime: int | None
    creation_qemu: str | None


def parse_qm_config(text: str, vmid: int) -> dict:
    """Options of ``qm config`` output; every non-empty line must be ``key: value``, each key once."""
    options = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if not match:
            raise ProxmoxError(
                f"qm config {vmid}: line {number} is not 'key: value': {line[:80]!r}; is qm the Proxmox VE one?"
            )
        key, value = match.groups()
        if key in options:
            raise ProxmoxError(f"qm config {vmid}: option {key!r} appears twice (lines before {number})")
        options[key] = value
    return options


def parse_api_config(data: object, vmid: int) -> dict:
    """Options of ``pvesh get /nodes/<node>/qemu/<vmid>/config`` JSON (the API's digest dropped)."""
    if not isinstance(data, dict):
        raise ProxmoxError(f"the API config of VM {vmid} is not a JSON object but {type(data).__name__}")
    options = {}
    for key, value in data.items():
        if key == "digest":
            continue
        if not isinstance(key, str) or not _KEY.fullmatch(key) or isinstance(value, (dict, list, bool)):
            raise ProxmoxError(f"the API config of VM {vmid} has an unexpected entry {key!r}: {value!r}"[:200])
        options[key] = str(value)
    return options


def parse_property_string(value: str, option: str) -> dict:
    """``k=v,k=v`` into a dict: every item has a key, each key once. Values keep any further '='."""
    items = {}
    for item in value.split(","):
        key, sep, text = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise ProxmoxError(f"{option}: {item[:60]!r} is not a key=value item (in {value[:120]!r})")
        if key in items:
            raise ProxmoxError(f"{option}: {key!r} appears twice (in {value[:120]!r})")
        items[key] = text
    return items


def parse_smbios1(value: str) -> Smbios1:
    items = parse_property_string(value, "smbios1")
    uuid = items.pop("uuid", None)
    if uuid is not None and not _UUID.fullmatch(uuid):
        raise ProxmoxError(f"smbios1: uuid {uuid[:60]!r} is not in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    flag = items.pop("base64", "0")
    if flag not in ("0", "1"):
        raise ProxmoxError(f"smbios1: base64 must be 0 or 1, found {flag[:20]!r}")
    encoded = flag == "1"
    fields = {}
    # Keys a newer Proxmox may add are kept as they are; only the identity matters here.
    for key, text in items.items():
        if encoded and key in SMBIOS1_TEXT_FIELDS:
            fields[key] = _decode_base64(key, text)
        else:
            fields[key] = text
    return Smbios1(uuid=uuid.lower() if uuid else None, fields=fields, base64=encoded)


def _decode_base64(key: str, text: str) -> str:
    if not _BASE64_TEXT.fullmatch(text):
        raise ProxmoxError(f"smbios1: {key} is marked base64 but {text[:60]!r} is not base64")
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        raise ProxmoxError(f"smbios1: {key} is marked base64 but {text[:60]!r} does not decode") from None


def parse_meta(value: str) -> Meta:
    items = parse_property_string(value, "meta")
    ctime = items.get("ctime")
    if ctime is not None and not re.fullmatch(r"[0-9]{1,12}", ctime):
        raise ProxmoxError(f"meta: ctime must be a Unix time (digits), found {ctime[:30]!r}")
    qemu = items.get("creation-qemu")
    if qemu is not None and not _QEMU_VERSION.fullmatch(qemu):
        raise ProxmoxError(f"meta: creation-qemu must be a version like 8.1.5, found {qemu[:30]!r}")
    return Meta(ctime=int(ctime) if ctime is not None else None, creation_qemu=qemu)
