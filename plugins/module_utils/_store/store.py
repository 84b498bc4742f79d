# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest store: signed trust roots, each VM's chain of signed manifests, node records.

Layout (directories 0700, files 0600)::

    <store>/trust/root-<version:08d>.json             trust-root envelopes, from version 1
    <store>/vms/<vm_uuid>/manifest-<version:08d>.json manifest envelopes, from version 1
    <store>/nodes/<node>.json                          node records (DSSE, signed by the trust root)
    <store>/receipts/                                  destruction receipts
    <store>/head.json                                  the signed store head (head.py), replaced on every change

Nothing is ever overwritten or deleted: a file is written to a temporary name
and hard-linked into place, which fails if the name exists. The newest
manifest of a VM is its floor; a tombstone ends the chain. Everything read is
checked again (names, versions, the hash chain), so a damaged store is
reported, naming the file, instead of being trusted. Every call that changes
the store is followed by a new signed head (the only file that is replaced),
signed on the controller; ``view`` is what a head is compared with.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    MANIFEST_PAYLOAD_TYPE,
    Manifest,
    check_node_name,
    parse_manifest,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    check_times,
    envelope_digest,
    ref_of,
    verify_signatures,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store import head as store_head
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (
    NODE_PAYLOAD_TYPE,
    parse_node_record,
)

MAX_NODE_RECORD = 64 * 1024
_ROOT_FILE = re.compile(r"root-([0-9]{8,})\.json")
_MANIFEST_FILE = re.compile(r"manifest-([0-9]{8,})\.json")


def _numbered(directory: str, pattern: re.Pattern, template: str) -> list[tuple[int, str]]:
    """``(version, path)`` for each versioned file, oldest first; the versions must run 1, 2, ... N."""
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.startswith("."):
            continue  # temporary files of an interrupted atomic write
        match = pattern.fullmatch(entry)
        if not match or template.format(int(match.group(1))) != entry:
            raise FormatError(
                f"store: unexpected file {os.path.join(directory, entry)}; the store holds only files it wrote "
                "itself: move this one out of the store"
            )
        found.append((int(match.group(1)), os.path.join(directory, entry)))
    found.sort()
    for expected, (version, path) in enumerate(found, start=1):
        if version != expected:
            missing = os.path.join(directory, template.format(expected))
            raise FormatError(
                f"store: {missing} is missing but {path} exists: the store was damaged; restore it from a backup"
            )
    return found


def _read_envelope(path: str, what: str) -> dsse.Envelope:
    return dsse.parse_envelope(read_regular(path, what), f"{what} {path}")


class Store:
    """One store directory; see the module docstring for its layout."""

    def __init__(self, path: str):
        self.path = os.path.expanduser(path)
        self.trust_dir = os.path.join(self.path, "trust")
        self.vms_dir = os.path.join(self.path, "vms")
        self.nodes_dir = os.path.join(self.path, "nodes")
        self.receipts_dir = os.path.join(self.path, "receipts")

    def init(self) -> bool:
        """Create the store's directories (0700); True if any was created."""
        changed = ensure_dir(self.path, 0o700)
        for directory in (self.trust_dir, self.vms_dir, self.nodes_dir, self.receipts_dir):
            changed = ensure_dir(directory, 0o700) or changed
        return changed

    def _write_new(self, directory: str, path: str, data: bytes) -> bool:
        """Write a file that must not exist yet; False if it already holds exactly ``data``."""
        self.init()
        ensure_dir(directory, 0o700)
        try:
            write_atomic(path, data, 0o600, exclusive=True)
        except FileExistsError:
            if read_regular(path, "store file") == data:
                return False
            raise ForkError(
                f"fork: {path} was written with other content at the same time; "
                "two different documents claim the same version"
            ) from None
        return True

    # -- trust roots -------------------------------------------------------------
    def root_envelopes(self) -> list[dsse.Envelope]:
        """Every stored trust-root envelope, version 1 first (signatures not checked here)."""
        envelopes = []
        for version, path in _numbered(self.trust_dir, _ROOT_FILE, "root-{:08d}.json"):
            envelope = _read_envelope(path, "store: trust root")
            if envelope.payload_type != trust_root.ROOT_PAYLOAD_TYPE:
                raise FormatError(f"store: {path} is not a trust root (payloadType {envelope.payload_type!r})")
            claimed = trust_root.parse_root_payload(envelope.payload, f"store: trust root {path}").version
            if claimed != version:
                raise FormatError(f"store: {path} holds trust root version {claimed}; the store was altered")
            envelopes.append(envelope)
        return envelopes

    def root(self, now: datetime) -> trust_root.TrustRoot:
        """The newest trust root, reached from version 1 through every rotation; unexpired at ``now``."""
        return trust_root.load_chain(self.root_envelopes(), now, f"store trust root ({self.trust_dir})")

    def put_root(self, envelope: dsse.Envelope, now: datetime) -> bool:
        """Store the first root (version 1) or the next one; the same root again changes nothing."""
        existing = self.root_envelopes()
        if envelope in existing:
            return False
        if existing:
            current = trust_root.verify_history(existing, f"store trust root ({self.trust_dir})")
            accepted = trust_root.update_root(current, envelope, now)
        else:
            accepted = trust_root.load_root(envelope, "new trust root", now)
            if accepted.version != 1:
                raise VerificationError(
                    f"the store has no trust root yet: the first one must be version 1, found version "
                    f"{accepted.version}; store the roots from version 1 on"
                )
        path = os.path.join(self.trust_dir, f"root-{accepted.version:08d}.json")
        return self._write_new(self.trust_dir, path, dsse.envelope_to_bytes(envelope))

    # -- manifests -----------------------------------------------------------------
    def _vm_dir(self, vm_uuid: str) -> str:
        return os.path.join(self.vms_dir, validate.vm_uuid(vm_uuid))

    def chain(self, vm_uuid: str) -> list[tuple[dsse.Envelope, Manifest]]:
        """The VM's stored envelopes with their manifests, version 1 first, the hash chain checked."""
        vm_uuid = validate.vm_uuid(vm_uuid)
        chain: list[tuple[dsse.Envelope, Manifest]] = []
        for version, path in _numbered(self._vm_dir(vm_uuid), _MANIFEST_FILE, "manifest-{:08d}.json"):
            envelope = _read_envelope(path, "store: manifest")
            if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
                raise FormatError(f"store: {path} is not a manifest (payloadType {envelope.payload_type!r})")
            manifest = parse_manifest(envelope.payload, f"store: manifest {path}")
            if manifest.version != version or manifest.subject.vm_uuid != vm_uuid:
                raise FormatError(
                    f"store: {path} holds version {manifest.version} of VM {manifest.subject.vm_uuid}; "
                    "the store was altered"
                )
            if chain:
                previous_envelope, previous = chain[-1]
                if previous.destroyed:
                    raise FormatError(f"store: {path} follows a tombstone; the store was altered")
                if manifest.prev != envelope_digest(previous_envelope):
                    raise FormatError(
                        f"store: {path} does not link to version {previous.version} (prev differs from its "
                        "digest); the store was altered"
                    )
            chain.append((envelope, manifest))
        return chain

    def latest(self, vm_uuid: str) -> tuple[dsse.Envelope, Manifest] | None:
        chain = self.chain(vm_uuid)
        return chain[-1] if chain else None

    def floor(self, vm_uuid: str) -> ManifestRef | None:
        """The newest stored version: nothing older is accepted again, a different one at it is a fork."""
        latest = self.latest(vm_uuid)
        return None if latest is None else ref_of(*latest)

    def history(self, vm_uuid: str) -> list[Manifest]:
        return [manifest for _envelope, manifest in self.chain(vm_uuid)]

    def vm_uuids(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.vms_dir))
        except FileNotFoundError:
            return []
        uuids = []
        for entry in entries:
            if entry.startswith("."):
                continue
            try:
                uuid = validate.vm_uuid(entry)
            except InputError:
                uuid = None
            if uuid != entry:
                raise FormatError(
                    f"store: unexpected entry {os.path.join(self.vms_dir, entry)}; move it out of the store"
                )
            uuids.append(uuid)
        return uuids

    def find(self, vmid: int) -> list[str]:
        """The vm_uuids whose manifests (any version) name ``vmid``: VMIDs get reused."""
        vmid = validate.vmid(vmid)
        return [uuid for uuid in self.vm_uuids() if any(m.subject.vmid == vmid for m in self.history(uuid))]

    def put_manifest(self, envelope: dsse.Envelope, now: datetime) -> bool:
        """Append the next version of a VM's chain; the very same envelope again changes nothing.

        The envelope must verify against the store's trust root (signatures,
        expiry), be exactly one version newer than the stored chain and link
        to its newest envelope. Nothing follows a tombstone.
        """
        manifest = verify_signatures(envelope, self.root(now), "manifest to store")
        check_times(manifest, now)
        vm_uuid = manifest.subject.vm_uuid
        chain = self.chain(vm_uuid)
        digest = envelope_digest(envelope)
        name = f"manifest version {manifest.version} of VM {manifest.subject.vmid} ({vm_uuid})"
        if manifest.version <= len(chain):
            stored_digest = envelope_digest(chain[manifest.version - 1][0])
            if stored_digest == digest:
                return False
            raise ForkError(
                f"fork: {name} differs from the stored version {manifest.version} (envelope sha256 {digest[:16]}…, "
                f"stored {stored_digest[:16]}…): two different manifests claim the same version; nothing was "
                "written; find out who signed the second one"
            )
        if chain and chain[-1][1].destroyed:
            raise VerificationError(
                f"decommissioned: VM {manifest.subject.vmid} ({vm_uuid}) was decommissioned (tombstone at version "
                f"{len(chain)}); its chain is closed and nothing was written"
            )
        if manifest.version != len(chain) + 1:
            raise VerificationError(
                f"version gap: the store holds {len(chain)} version(s) of VM {vm_uuid}, so the next manifest must "
                f"be version {len(chain) + 1}, found {manifest.version}; nothing was written"
            )
        expected_prev = envelope_digest(chain[-1][0]) if chain else None
        if manifest.prev != expected_prev:
            raise VerificationError(
                f"{name} does not extend the stored chain: its prev is {manifest.prev}, but the stored version "
                f"{len(chain)} has digest {expected_prev}; sign it on top of the stored latest version"
            )
        directory = self._vm_dir(vm_uuid)
        path = os.path.join(directory, f"manifest-{manifest.version:08d}.json")
        return self._write_new(directory, path, dsse.envelope_to_bytes(envelope))

    # -- destruction receipts --------------------------------------------------------
    def receipts(self, vm_uuid: str) -> list[dsse.Envelope]:
        """A VM's destruction receipts, oldest first (a re-run after a partial failure adds a final one)."""
        prefix = os.path.join(self.receipts_dir, f"{validate.vm_uuid(vm_uuid)}-")
        return [_read_envelope(path, "store: receipt") for path in sorted(glob.glob(prefix + "*.json"))]

    def put_receipt(self, vm_uuid: str, envelope: dsse.Envelope) -> bool:
        """Append a receipt (never replacing one); the same receipt again changes nothing."""
        existing = self.receipts(vm_uuid)
        if envelope in existing:
            return False
        path = os.path.join(self.receipts_dir, f"{validate.vm_uuid(vm_uuid)}-{len(existing) + 1:04d}.json")
        return self._write_new(self.receipts_dir, path, dsse.envelope_to_bytes(envelope))

    # -- node records --------------------------------------------------------------
    def list_nodes(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.nodes_dir))
        except FileNotFoundError:
            return []
        return [entry[: -len(".json")] for entry in entries if entry.endswith(".json") and not entry.startswith(".")]

    def _node_path(self, name: str) -> str:
        return os.path.join(self.nodes_dir, f"{check_node_name(name)}.json")

    def read_node(self, name: str) -> dict | None:
        """A node's record as stored (a JSON object); None if the node is not enrolled.

        Nothing in it is trusted here: the controller checks the signature and the node's name
        (_authority/node_record.py), and says so when it is an old unsigned record.
        """
        path = self._node_path(name)
        try:
            data = read_regular(path, f"node record of '{name}'", MAX_NODE_RECORD)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data.decode("utf-8"))
        except ValueError as err:
            raise FormatError(f"store: node record {path} is not valid JSON ({err}); enroll the node again") from None
        if not isinstance(doc, dict):
            raise FormatError(f"store: node record {path} is not a JSON object; enroll the node again")
        return doc

    def put_node(self, envelope: dsse.Envelope) -> bool:
        """Write (or replace, on a deliberate re-enrollment) a node's record; the same record again changes nothing.

        The record's signature was checked on the controller, which signed it; the name comes from the payload."""
        if envelope.payload_type != NODE_PAYLOAD_TYPE:
            raise FormatError(f"node record to store: payloadType {envelope.payload_type!r} is not a node record")
        record = parse_node_record(envelope.payload, "node record to store")
        path = self._node_path(record.node)
        data = dsse.envelope_to_bytes(envelope)
        try:
            if read_regular(path, "store: node record", MAX_NODE_RECORD) == data:
                return False
        except FileNotFoundError:
            pass
        self.init()
        write_atomic(path, data, 0o600)
        return True

    # -- the head ---------------------------------------------------------------------
    def view(self) -> store_head.StoreView:
        """What this store holds, as a head lists it: each VM's newest manifest (chains checked), every other file."""
        vms = {}
        for uuid in self.vm_uuids():
            ref = self.floor(uuid)
            if ref is not None:
                vms[uuid] = ManifestRef(ref.version, ref.digest)
        files = {}
        for directory, pattern in (
            (self.nodes_dir, "*.json"),
            (self.receipts_dir, "*.json"),
            (self.trust_dir, "root-*.json"),
        ):
            for path in sorted(glob.glob(os.path.join(directory, pattern))):
                name = os.path.relpath(path, self.path)
                if not store_head.FILE_NAME.fullmatch(name):
                    raise FormatError(f"store: unexpected file {path}; move it out of the store")
                files[name] = hashlib.sha256(read_regular(path, "store file")).hexdigest()
        return store_head.StoreView(vms=vms, files=files)

    @property
    def head_path(self) -> str:
        return os.path.join(self.path, store_head.HEAD_FILE)

    def head(self) -> dsse.Envelope | None:
        """The store's signed head as stored (checked on the controller and on nodes); None if there is none."""
        try:
            data = read_regular(self.head_path, "store head")
        except FileNotFoundError:
            return None
        envelope = dsse.parse_envelope(data, f"store head {self.head_path}")
        if envelope.payload_type != store_head.HEAD_PAYLOAD_TYPE:
            raise FormatError(f"store: {self.head_path} is not a store head (payloadType {envelope.payload_type!r})")
        store_head.parse_head(envelope.payload, f"store head {self.head_path}")
        return envelope

    def put_head(self, envelope: dsse.Envelope) -> bool:
        """Replace the head by a newer one (signed and checked on the controller); the same head changes nothing."""
        new = store_head.parse_head(envelope.payload, "store head to write")
        current = self.head()
        if current == envelope:
            return False
        if current is not None:
            old = store_head.parse_head(current.payload, "stored head").version
            if new.version <= old:
                raise ForkError(
                    f"store head version {new.version} is not newer than the stored version {old}: another "
                    "controller changed the store meanwhile; re-run"
                )
        self.init()
        write_atomic(self.head_path, dsse.envelope_to_bytes(envelope), 0o600)
        return True
