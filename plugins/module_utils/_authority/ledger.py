# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's ledger as the controller sees it: its chain of signed manifests, verified here.

The chain comes from the store, which the controller does not trust: every
envelope is verified against the controller's own trust root (``<controller_dir>/trust``),
the versions must run 1..N, each must link to the one before, and nothing may
follow a tombstone. Only then does the controller read where the ledger places
the VM and which policy it records (DESIGN §7 A1, A2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    ForkError,
    InputError,
    ThresholdError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import Manifest, RecordedPolicy
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import TrustRoot, load_versions
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ManifestRef,
    envelope_digest,
    ref_of,
    verify_signatures,
)


@dataclass(frozen=True)
class NodeView:
    """A node as an approval or grant names it: its inventory name and id (hex of its SRK name)."""

    name: str
    id: str

    @classmethod
    def of(cls, name: str, srk_name: str | bytes) -> NodeView:
        node_id = srk_name.hex() if isinstance(srk_name, bytes) else str(srk_name).lower()
        return cls(validate.node_name(name), node_id)

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:20]}…)"


def controller_roots(controller_dir: str, now: datetime) -> list[TrustRoot]:
    """The controller's own trust root, every version from 1 (newest last): the only roots it trusts (§7 A6)."""
    store = TrustKeyStore(controller_dir)
    roots = store.roots()
    if not roots:
        raise InputError(
            f"no trust root in {store.roots_dir}: run the init playbook first (ironclaw.sealed.init), or with "
            "offline signing copy the offline machine's trust/root-*.json files there"
        )
    return load_versions(roots, now, f"controller trust root ({store.roots_dir})")


def _verify_under(envelope: dsse.Envelope, roots: list[TrustRoot], what: str) -> Manifest:
    """Rule 1 against the newest root; a manifest signed before a rotation counts under the root it was signed by.

    A root counts for a manifest only if the manifest was issued before that root's successor was: keys retired
    by a rotation sign nothing new.
    """
    try:
        return verify_signatures(envelope, roots[-1], what)
    except ThresholdError as newest_refusal:
        for older, successor in zip(roots, roots[1:], strict=False):
            try:
                manifest = verify_signatures(envelope, older, what)
            except ThresholdError:
                continue
            if canonical.parse_timestamp(manifest.issued_at, f"{what} issued_at") < successor.issued_at:
                return manifest
        raise newest_refusal from None


class VmLedger:
    """One VM's verified chain, oldest first; empty for a VM never recorded."""

    def __init__(self, vm_uuid: str, chain: list[tuple[dsse.Envelope, Manifest]]):
        self.vm_uuid = vm_uuid
        self.chain = chain

    @classmethod
    def verify(cls, vm_uuid: str, envelopes, roots: list[TrustRoot] | TrustRoot) -> VmLedger:
        """Verify the store's envelopes (dicts or Envelopes) for ``vm_uuid`` against the controller's ``roots``.

        Expiry is not checked here: an expired newest manifest still says where the VM is.
        """
        vm_uuid = validate.vm_uuid(vm_uuid)
        roots = roots if isinstance(roots, list) else [roots]
        if not isinstance(envelopes, (list, tuple)):
            raise InputError(f"the chain of VM {vm_uuid} must be a list of envelopes (ironclaw_manifest state=listed)")
        chain: list[tuple[dsse.Envelope, Manifest]] = []
        for index, doc in enumerate(envelopes):
            what = f"store: manifest {index + 1} of VM {vm_uuid}"
            envelope = doc if isinstance(doc, dsse.Envelope) else dsse.parse_envelope(doc, what)
            manifest = _verify_under(envelope, roots, what)
            if manifest.subject.vm_uuid != vm_uuid:
                raise VerificationError(f"{what} describes VM {manifest.subject.vm_uuid}; the store was altered")
            if manifest.version != index + 1:
                raise VerificationError(
                    f"{what} holds version {manifest.version}: the chain must run 1, 2, … without gaps; "
                    "the store was altered"
                )
            if chain:
                previous_envelope, previous = chain[-1]
                if previous.destroyed:
                    raise DecommissionedError(f"{what} follows the tombstone at version {previous.version}")
                if manifest.prev != envelope_digest(previous_envelope):
                    raise ForkError(
                        f"{what} does not link to version {previous.version} (its prev differs from that envelope's "
                        "digest): two histories claim this VM"
                    )
            chain.append((envelope, manifest))
        return cls(vm_uuid, chain)

    @property
    def newest(self) -> Manifest | None:
        return self.chain[-1][1] if self.chain else None

    @property
    def newest_ref(self) -> ManifestRef | None:
        return ref_of(*self.chain[-1]) if self.chain else None

    @property
    def newest_envelope(self) -> dsse.Envelope | None:
        return self.chain[-1][0] if self.chain else None

    @property
    def placement(self) -> NodeView | None:
        """Where the newest manifest places the VM (None without a chain)."""
        newest = self.newest
        return None if newest is None else NodeView(newest.node.name, newest.node.id.lower())

    @property
    def policy(self) -> RecordedPolicy | None:
        newest = self.newest
        return None if newest is None else newest.policy

    def describe(self) -> str:
        newest = self.newest
        if newest is None:
            return f"VM {self.vm_uuid} has no manifest yet"
        return f"VM {newest.subject.vmid} ({self.vm_uuid}) manifest v{newest.version}"
