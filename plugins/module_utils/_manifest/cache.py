# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node keeps to verify on its own (e.g. from a Proxmox pre-start hook): the trust roots it
accepted (`<state_dir>/trust/root-<version>.json`), each VM's newest verified manifest
(`<state_dir>/<vmid>/manifest.json`) and, outside the VM's directory, that manifest's place in the
chain (`<state_dir>/floors/<vm_uuid>.json`). All of them only ever move forward.

The floor record is what makes a rollback of the whole VM directory visible: restoring an old copy
of `<state_dir>/<vmid>/` brings back an old manifest.json that matches the old blobs, but not an
old floor record.

`<state_dir>/store-head.json` is the newest signed store head this node saw (A5): a store that
offers an older head, or a head that does not list the manifest it is verifying, is refused.
"""

from __future__ import annotations

import glob
import os

# The controller's head signature rule, reused: plain Python, so it runs on the node too.
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.head import verify_head
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    RollbackError,
    TruncationError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import MAX_VERSION, parse_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    ref_of,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.head import parse_head

MANIFEST_FILE = "manifest.json"
FLOORS_DIR = "floors"
HEAD_FILE = "store-head.json"
FLOOR_FORMAT = "ironclaw-floor/1"
_FLOOR_FIELDS = {"format": str, "vmid": int, "vm_uuid": str, "version": int, "digest": str}


def floor_to_bytes(vmid: int, vm_uuid: str, ref: ManifestRef) -> bytes:
    return canonical.dumps(
        {"format": FLOOR_FORMAT, "vmid": vmid, "vm_uuid": vm_uuid, "version": ref.version, "digest": ref.digest}
    )


def parse_floor(data: bytes, vm_uuid: str, what: str) -> ManifestRef:
    """A floor record, strictly; it must be the one of ``vm_uuid`` (its file name)."""
    doc = canonical.loads(data, what)
    canonical.require_format(doc, FLOOR_FORMAT, what)
    canonical.require_fields(doc, _FLOOR_FIELDS, what)
    canonical.checked(validate.vmid, doc["vmid"], what, "vmid")
    canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid")
    if doc["vm_uuid"] != vm_uuid:
        raise FormatError(f"{what}: it records VM uuid {doc['vm_uuid']}, not {vm_uuid}; the file was moved or altered")
    canonical.int_field(doc["version"], what, "version", 1, MAX_VERSION)
    canonical.hex_bytes(doc["digest"], f"{what}: field 'digest'", 32)
    return ManifestRef(doc["version"], doc["digest"])


class NodeCache:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.trust_dir = os.path.join(state_dir, "trust")
        self.floors_dir = os.path.join(state_dir, FLOORS_DIR)

    def roots(self) -> list:
        return [
            dsse.parse_envelope(read_regular(path, "cached trust root"), path)
            for path in sorted(glob.glob(os.path.join(self.trust_dir, "root-*.json")))
        ]

    def add_roots(self, envelopes) -> list[int]:
        """Write the roots this node does not have yet; returns their versions."""
        have = {root_version(env) for env in self.roots()}
        added = []
        for envelope in envelopes:
            version = root_version(envelope)
            if version in have:
                continue
            ensure_dir(self.state_dir, 0o700)
            ensure_dir(self.trust_dir, 0o700)
            write_atomic(os.path.join(self.trust_dir, f"root-{version:08d}.json"), dsse.envelope_to_bytes(envelope))
            added.append(version)
        return added

    # -- the store head -----------------------------------------------------------------
    @property
    def head_path(self) -> str:
        return os.path.join(self.state_dir, HEAD_FILE)

    def head(self):
        """The newest store head this node accepted (an envelope), or None."""
        try:
            data = read_regular(self.head_path, "cached store head")
        except FileNotFoundError:
            return None
        return dsse.parse_envelope(data, self.head_path)

    def check_head(self, envelope, root, vm_uuid: str, ref: ManifestRef):
        """The offered head, once signed by ``root``'s head keys, not older than the cached one and
        listing exactly ``ref`` as the VM's newest manifest; returns it (to ``save_head`` later)."""
        head = verify_head(envelope, root, "store head")
        cached = self.head()
        if cached is not None:
            seen = parse_head(cached.payload, self.head_path).version
            if head.version < seen:
                raise RollbackError(
                    f"store rolled back: its head is version {head.version}, but this node already saw version "
                    f"{seen}; the store host serves an old copy"
                )
        listed = head.view.vms.get(vm_uuid)
        if listed is None or (listed.version, listed.digest) != (ref.version, ref.digest):
            shown = "no such VM" if listed is None else f"version {listed.version}"
            raise TruncationError(
                f"store head version {head.version} lists {shown} for VM {vm_uuid}, but the manifest given is version "
                f"{ref.version}: the store was truncated or the manifest is not its newest"
            )
        return envelope

    def save_head(self, envelope) -> bool:
        """Keep a checked head if it is newer than the cached one; True if the file changed."""
        cached = self.head()
        if (
            cached is not None
            and parse_head(cached.payload, "head").version >= parse_head(envelope.payload, "head").version
        ):
            return False
        ensure_dir(self.state_dir, 0o700)
        write_atomic(self.head_path, dsse.envelope_to_bytes(envelope))
        return True

    def manifest_path(self, vmid: int) -> str:
        return os.path.join(self.state_dir, str(vmid), MANIFEST_FILE)

    def manifest(self, vmid: int):
        try:
            data = read_regular(self.manifest_path(vmid), f"VM {vmid} cached manifest")
        except FileNotFoundError:
            return None
        return dsse.parse_envelope(data, self.manifest_path(vmid))

    def floor_path(self, vm_uuid: str) -> str:
        return os.path.join(self.floors_dir, validate.vm_uuid(vm_uuid) + ".json")

    def floor(self, vm_uuid: str) -> ManifestRef | None:
        """The newest manifest this node verified for the VM, as recorded outside its directory; None if none."""
        vm_uuid = validate.vm_uuid(vm_uuid)
        path = self.floor_path(vm_uuid)
        what = f"floor record of VM {vm_uuid} ({path})"
        try:
            data = read_regular(path, what)
        except FileNotFoundError:
            return None
        return parse_floor(data, vm_uuid, what)

    def save_manifest(self, vmid: int, envelope) -> bool:
        """Cache a verified manifest and move the VM's floor record up to it; True if a file changed.

        The floor record never goes down, and never changes at the same version: both would mean
        the caller verified against the wrong floor, so they are refused rather than written.
        """
        manifest = parse_manifest(envelope.payload, "manifest to cache")
        if manifest.subject.vmid != vmid:
            raise InputError(f"the manifest to cache is for VM {manifest.subject.vmid}, not VM {vmid}")
        vm_uuid = manifest.subject.vm_uuid
        ref = ref_of(envelope, manifest)
        recorded = self.floor(vm_uuid)
        if recorded is not None and ref.version < recorded.version:
            raise VerificationError(
                f"rollback: refusing to cache manifest version {ref.version} of VM {vmid} ({vm_uuid}): "
                f"this node's floor record is at version {recorded.version}"
            )
        if recorded is not None and ref.version == recorded.version and ref.digest != recorded.digest:
            raise ForkError(
                f"fork: refusing to cache manifest version {ref.version} of VM {vmid} ({vm_uuid}): this node's floor "
                f"record holds another envelope at that version (sha256 {recorded.digest[:16]}…, this one "
                f"{ref.digest[:16]}…)"
            )
        changed = False
        data = dsse.envelope_to_bytes(envelope)
        cached = self.manifest(vmid)
        if cached is None or dsse.envelope_to_bytes(cached) != data:
            write_atomic(self.manifest_path(vmid), data)
            changed = True
        # After manifest.json: a crash in between leaves a floor that is lower, never higher, than the cache.
        if recorded is None or recorded.version < ref.version:
            ensure_dir(self.state_dir, 0o700)
            ensure_dir(self.floors_dir, 0o700)
            write_atomic(self.floor_path(vm_uuid), floor_to_bytes(vmid, vm_uuid, ref))
            changed = True
        return changed
