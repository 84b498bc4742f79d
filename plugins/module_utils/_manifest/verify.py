# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest verification rules; each failure raises VerificationError with its own message.

1. payload type and a threshold of trust-root signatures (a key counts once);
   only the verified bytes are parsed;
2. not expired, and not issued later than now plus the allowed clock skew;
3. not older than the floor, not a fork of it, not a tombstone;
4. the subject is the live VM (vmid, vm_uuid, cluster, vm_ctime);
5. keyslot and blobs match by SHA-256 and size, and the set is exact.

Rule 6 (unseal only after all of this) belongs to the caller.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import NamedTuple

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    ExpiredError,
    ForkError,
    InputError,
    RollbackError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    MANIFEST_PAYLOAD_TYPE,
    MAX_VERSION,
    Manifest,
    parse_manifest,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import TrustRoot

DEFAULT_CLOCK_SKEW = timedelta(seconds=300)
_REF_FIELDS = {"version": int, "digest": str, "destroyed": bool}


class ManifestRef(NamedTuple):
    """A point in a VM's chain: the version, the SHA-256 of its envelope, and whether it is a tombstone."""

    version: int
    digest: str
    destroyed: bool = False


def envelope_digest(envelope: dsse.Envelope) -> str:
    """SHA-256 (hex) of the envelope's canonical bytes: what ``prev`` and floors refer to."""
    return hashlib.sha256(dsse.envelope_to_bytes(envelope)).hexdigest()


def ref_of(envelope: dsse.Envelope, manifest: Manifest) -> ManifestRef:
    return ManifestRef(manifest.version, envelope_digest(envelope), manifest.destroyed)


def parse_ref(doc: object, what: str) -> ManifestRef:
    """A floor given as ``{"version", "digest", "destroyed"}`` (e.g. a module option)."""
    canonical.require_fields(doc, _REF_FIELDS, what)
    canonical.hex_bytes(doc["digest"], f"{what}: field 'digest'", 32)
    return ManifestRef(
        canonical.int_field(doc["version"], what, "version", 1, MAX_VERSION), doc["digest"], doc["destroyed"]
    )


def _name(manifest: Manifest) -> str:
    return f"manifest version {manifest.version} of VM {manifest.subject.vmid} ({manifest.subject.vm_uuid})"


def verify_signatures(envelope: dsse.Envelope, root: TrustRoot, what: str = "manifest") -> Manifest:
    """Rule 1: payload type and threshold of the trust root's keys; parse only the verified bytes."""
    payload = dsse.verify_threshold(
        envelope, MANIFEST_PAYLOAD_TYPE, root.keys, root.threshold, f"{what} (trust root version {root.version})"
    )
    return parse_manifest(payload, what)


def check_times(manifest: Manifest, now: datetime, max_clock_skew: timedelta | int = DEFAULT_CLOCK_SKEW) -> None:
    """Rule 2, against a clock the caller read once."""
    if not isinstance(max_clock_skew, timedelta):
        max_clock_skew = timedelta(seconds=max_clock_skew)
    expires = canonical.parse_timestamp(manifest.expires, "manifest field 'expires'")
    issued_at = canonical.parse_timestamp(manifest.issued_at, "manifest field 'issued_at'")
    if now >= expires:
        raise ExpiredError(
            f"{_name(manifest)} expired at {manifest.expires} (now {canonical.utc_timestamp(now)}); "
            "sign a fresh manifest for the VM's current state"
        )
    if issued_at > now + max_clock_skew:
        raise ExpiredError(
            f"{_name(manifest)} is not yet valid: issued at {manifest.issued_at}, but now is "
            f"{canonical.utc_timestamp(now)} (more than {int(max_clock_skew.total_seconds())} s of clock skew "
            "allowed): the clock of this host or of the signer is far off; fix the clock (NTP) and retry"
        )


def check_floor(envelope: dsse.Envelope, manifest: Manifest, floor: ManifestRef | None) -> None:
    """Rule 3: no rollback below the floor, no fork at it, no tombstone."""
    if floor is not None:
        if floor.destroyed:
            raise DecommissionedError(
                f"decommissioned: VM {manifest.subject.vmid} ({manifest.subject.vm_uuid}) was decommissioned "
                f"(tombstone at version {floor.version}); no manifest can bring it back"
            )
        if manifest.version < floor.version:
            raise RollbackError(
                f"rollback: {_name(manifest)} is older than the floor: rollback to version {manifest.version} "
                f"while the floor is {floor.version}; an old copy was restored or presented"
            )
        digest = envelope_digest(envelope)
        if manifest.version == floor.version and digest != floor.digest:
            raise ForkError(
                f"fork: {_name(manifest)} differs from the stored version {manifest.version} "
                f"(envelope sha256 {digest[:16]}…, the floor has {floor.digest[:16]}…): two different manifests "
                "claim the same version; find out who signed the second one"
            )
    if manifest.destroyed:
        raise DecommissionedError(
            f"decommissioned: VM {manifest.subject.vmid} ({manifest.subject.vm_uuid}) was decommissioned "
            f"(tombstone at version {manifest.version}); its sealed state must not be used"
        )


def check_subject(manifest: Manifest, expected: dict) -> None:
    """Rule 4: the manifest is about this very VM."""
    subject = manifest.subject
    vmid = validate.vmid(expected["vmid"])
    vm_uuid = validate.vm_uuid(expected["vm_uuid"])
    if subject.vmid != vmid:
        raise VerificationError(
            f"{_name(manifest)} is for VMID {subject.vmid}, not VMID {vmid}: the manifest belongs to another VM"
        )
    if subject.vm_uuid != vm_uuid:
        raise VerificationError(
            f"{_name(manifest)} is for VM uuid {subject.vm_uuid}, but VM {vmid} has uuid {vm_uuid}: "
            "VMID reused? The manifest belongs to an earlier VM with the same VMID"
        )
    if subject.cluster != expected["cluster"]:
        raise VerificationError(
            f"{_name(manifest)} is a manifest for another cluster: it names cluster '{subject.cluster}', "
            f"this is cluster {canonical.show(expected['cluster'])}"
        )
    ctime = expected.get("vm_ctime")
    if ctime is not None and subject.vm_ctime != ctime:
        raise VerificationError(
            f"{_name(manifest)} records VM creation time {subject.vm_ctime}, but VM {vmid} was created at {ctime}: "
            "the VM was re-created (VMID and uuid reused?)"
        )


def check_files(manifest: Manifest, actual: dict) -> None:
    """Rule 5: keyslot and blobs match the manifest exactly; every difference is named."""
    problems = []
    keyslot = actual["keyslot"]
    if keyslot is None and manifest.keyslot is not None:
        problems.append("keyslot.json is missing")
    elif keyslot is not None and manifest.keyslot is None:
        problems.append("keyslot.json is present, but the manifest records no keyslot")
    elif keyslot is not None and (
        keyslot["sha256"] != manifest.keyslot.sha256 or keyslot["keyslot_id"] != manifest.keyslot.keyslot_id
    ):
        problems.append(
            f"keyslot.json differs from the manifest (sha256 {keyslot['sha256'][:16]}…, keyslot "
            f"{keyslot['keyslot_id']}; the manifest has sha256 {manifest.keyslot.sha256[:16]}…, keyslot "
            f"{manifest.keyslot.keyslot_id}): the keyslot was swapped or altered"
        )
    expected = {blob.name: blob for blob in manifest.blobs}
    found = {blob["name"]: blob for blob in actual["blobs"]}
    for name in sorted(expected.keys() - found.keys()):
        problems.append(f"blob '{name}' is missing")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"extra blob '{name}' is not in the manifest")
    for name in sorted(expected.keys() & found.keys()):
        want, have = expected[name], found[name]
        if have["sha256"] != want.sha256:
            problems.append(
                f"blob '{name}' was swapped or altered (sha256 {have['sha256'][:16]}…, the manifest has "
                f"{want.sha256[:16]}…)"
            )
        elif have["size"] != want.size:
            problems.append(f"blob '{name}' has {have['size']} bytes, the manifest says {want.size}")
    if problems:
        raise VerificationError(
            f"the sealed state of VM {manifest.subject.vmid} does not match {_name(manifest)}: "
            + "; ".join(problems)
            + "; restore the VM's files from a copy that matches the manifest"
        )


def verify_manifest(
    envelope: dsse.Envelope,
    *,
    root: TrustRoot,
    now: datetime,
    floor: ManifestRef | None,
    expected: dict,
    actual: dict | None,
    max_clock_skew: timedelta | int = DEFAULT_CLOCK_SKEW,
) -> Manifest:
    """Apply rules 1 to 5 in order and return the manifest; ``actual`` None skips rule 5 (no node files).

    ``expected`` holds vmid, vm_uuid and cluster, and vm_ctime (None: not checked).
    """
    if now.tzinfo is None:
        raise InputError("verification clock: expected a timezone-aware datetime, found a naive one")
    manifest = verify_signatures(envelope, root)
    check_times(manifest, now, max_clock_skew)
    check_floor(envelope, manifest, floor)
    check_subject(manifest, expected)
    if actual is not None:
        check_files(manifest, actual)
    return manifest
