# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's decisions on the store head (DESIGN §7, A5).

* ``check_store_view``: a store is read only if its head is signed by the
  head keys the controller's trust root names, is not older than the newest
  head this controller signed, and lists exactly what the store holds (a
  deleted, added or altered manifest or file is named).
* ``next_head``: after a change, the next head is signed only if the store
  moved forward from its head by what this change wrote and nothing else.

The newest head version this controller signed is kept in
``<controller_dir>/store-head.json`` (it only goes up), so a store host that
serves an older, consistent copy of the whole store is refused as rolled back.
"""

from __future__ import annotations

import os
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    RollbackError,
    TruncationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import MAX_VERSION
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import TrustRoot
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.head import (
    HEAD_PAYLOAD_TYPE,
    Head,
    StoreView,
    differences,
    head_payload,
    parse_head,
)

KNOWN_HEAD_FILE = "store-head.json"
KNOWN_HEAD_FORMAT = "ironclaw-known-head/1"
_KNOWN_FIELDS = {"format": str, "version": int, "digest": str}


# -- the newest head this controller signed --------------------------------------------
def known_version(controller_dir: str) -> int:
    """The newest store-head version this controller signed; 0 if it never signed one."""
    path = os.path.join(os.path.expanduser(controller_dir), KNOWN_HEAD_FILE)
    try:
        data = read_regular(path, "newest signed store head")
    except FileNotFoundError:
        return 0
    doc = canonical.loads(data, path)
    canonical.require_format(doc, KNOWN_HEAD_FORMAT, path)
    canonical.require_fields(doc, _KNOWN_FIELDS, path)
    canonical.hex_bytes(doc["digest"], f"{path}: field 'digest'", 32)
    return canonical.int_field(doc["version"], path, "version", 1, MAX_VERSION)


def record_signed(controller_dir: str, envelope: dsse.Envelope) -> None:
    """Remember a head this controller signed; the recorded version never goes down."""
    head = parse_head(envelope.payload, "signed store head")
    controller_dir = os.path.expanduser(controller_dir)
    if head.version <= known_version(controller_dir):
        raise RollbackError(f"store head version {head.version} is not newer than the one this controller signed")
    doc = {"format": KNOWN_HEAD_FORMAT, "version": head.version, "digest": envelope_digest(envelope)}
    ensure_dir(controller_dir, 0o700)
    write_atomic(os.path.join(controller_dir, KNOWN_HEAD_FILE), canonical.dumps(doc), 0o600)


# -- reading a store ------------------------------------------------------------------
def verify_head(envelope_doc, root: TrustRoot, what: str = "store head") -> Head:
    """The head if the keys ``root`` names for it signed it (one head key, or the root's threshold)."""
    envelope = envelope_doc if isinstance(envelope_doc, dsse.Envelope) else dsse.parse_envelope(envelope_doc, what)
    keys, threshold = root.head_signers()
    payload = dsse.verify_threshold(
        envelope, HEAD_PAYLOAD_TYPE, keys, threshold, f"{what} (trust root v{root.version})"
    )
    return parse_head(payload, what)


def _no_head(known: int, view: StoreView, what: str) -> None:
    if known:
        raise RollbackError(
            f"{what}: the store has no signed head, but this controller signed head version {known}: the store "
            "was replaced or rolled back; restore it from a backup"
        )
    if view.vms or view.files:
        raise TruncationError(
            f"{what}: the store holds manifests or records but no signed head, so nothing proves it is complete; "
            "restore its head.json, or rebuild the store from a backup"
        )


def check_store_view(head_envelope, root: TrustRoot, known: int, view: StoreView, what: str = "store") -> Head | None:
    """Accept a store only if its head verifies, is not older than ``known`` and lists exactly ``view``.

    RollbackError: the head is older than the newest this side saw (or is gone).
    TruncationError: the store's files disagree with its head; the message names each VM or file.
    """
    if head_envelope is None:
        _no_head(known, view, what)
        return None
    head = verify_head(head_envelope, root, f"{what} head")
    if head.version < known:
        raise RollbackError(
            f"{what}: rolled back: its head is version {head.version}, but version {known} was already seen; "
            "the store host serves an old copy; restore the newest store from a backup"
        )
    problems = differences(head.view, view)
    if problems:
        raise TruncationError(
            f"{what}: truncated or altered: the store disagrees with its signed head version {head.version}: "
            + "; ".join(message for _key, _kind, message in problems)
            + ". Nothing was changed; restore the store from a backup"
        )
    return head


# -- writing a store --------------------------------------------------------------------
def _allowed(key: str, kind: str, touched: set) -> bool:
    """What one write may change: add what it wrote, or replace a node's record (re-enrollment)."""
    return key in touched and (kind == "added" or (kind == "altered" and key.startswith("nodes/")))


def next_head(
    head_envelope,
    root: TrustRoot,
    known: int,
    view: StoreView,
    touched,
    signing_keys,
    now: datetime,
) -> dsse.Envelope | None:
    """The next head for ``view`` after a write that touched ``touched``; None if the current head lists it.

    The store must be its current head plus what this write touched: anything else (deleted,
    altered or added by someone else) is refused before anything is signed.
    """
    touched = set(touched)
    if head_envelope is None:
        _no_head(known, StoreView({}, {}), "store")
        base, version = StoreView({}, {}), 0
    else:
        current = verify_head(head_envelope, root, "store head")
        if current.version < known:
            raise RollbackError(
                f"store: rolled back: its head is version {current.version}, but this controller signed version "
                f"{known}; nothing more is signed for it; restore the newest store from a backup"
            )
        base, version = current.view, current.version
    problems = list(differences(base, view))
    refused = [message for key, kind, message in problems if not _allowed(key, kind, touched)]
    if refused:
        raise TruncationError(
            "store: it disagrees with its signed head beyond what this change wrote: "
            + "; ".join(refused)
            + ". No new head was signed; restore the store from a backup"
        )
    if not problems and head_envelope is not None:
        return None
    keys, threshold = root.head_signers()
    usable = [key for key in signing_keys if dsse.keyid_of(dsse.raw_public(key)) in keys]
    if len(usable) < threshold:
        raise InputError(
            f"this controller holds {len(usable)} of the {threshold} key(s) trust root version {root.version} names "
            "for the store head (head-keys/ under the controller directory)"
        )
    payload = head_payload(max(version, known) + 1, canonical.utc_timestamp(now), view)
    return dsse.sign(payload, HEAD_PAYLOAD_TYPE, usable[: max(threshold, 1)])
