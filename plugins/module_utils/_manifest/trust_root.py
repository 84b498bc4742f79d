# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The trust root: which Ed25519 keys sign manifests, and how many must agree.

A root is a DSSE envelope over ``ironclaw-trust-root/2``. The first root is
self-signed by a threshold of its own keys. Root N+1 must be signed by a
threshold of root N's keys *and* a threshold of its own, so neither a stolen
old key set nor a new one alone can move trust. Versions only go up by one.
Only the root finally trusted must be unexpired: an expired root can still be
rotated away from, as in TUF.

Format 2 adds ``head_keys``: the online keys that sign the store head (TUF's
snapshot role, see _store/head.py), so that the head can be signed where the
manifest-signing keys are not (``ironclaw_signing: offline``). An empty list
means the head is signed by a threshold of the root's own keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    ExpiredError,
    FormatError,
    InputError,
    RollbackError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse

ROOT_FORMAT = "ironclaw-trust-root/2"
ROOT_PAYLOAD_TYPE = "application/vnd.ironclaw.trust-root.v1+json"
MAX_VERSION = 2**63 - 1
MAX_KEYS = 64
_FIELDS = {
    "format": str,
    "version": int,
    "issued_at": str,
    "expires": str,
    "threshold": int,
    "keys": list,
    "head_keys": list,
}
_KEY_FIELDS = {"keyid": str, "public": str}


@dataclass(frozen=True)
class RootPayload:
    version: int
    issued_at: datetime
    expires: datetime
    threshold: int
    keys: dict  # keyid -> raw public key
    head_keys: dict  # keyid -> raw public key of the online store-head keys


@dataclass(frozen=True)
class TrustRoot:
    """A trust root whose signatures were checked; ``keys`` maps key id to raw public key."""

    version: int
    threshold: int
    keys: dict
    issued_at: datetime
    expires: datetime
    envelope: dsse.Envelope
    head_keys: dict

    def head_signers(self) -> tuple[dict, int]:
        """The keys that sign the store head and how many must: one head key, or the root's own threshold."""
        if self.head_keys:
            return self.head_keys, 1
        return self.keys, self.threshold


def _key_list(keys: dict) -> list:
    return [{"keyid": keyid, "public": canonical.b64encode(keys[keyid])} for keyid in sorted(keys)]


def _payload_bytes(
    keys: dict, threshold: int, version: int, issued_at: datetime, expires: datetime, head_keys: dict
) -> bytes:
    doc = {
        "format": ROOT_FORMAT,
        "version": version,
        "issued_at": canonical.utc_timestamp(issued_at),
        "expires": canonical.utc_timestamp(expires),
        "threshold": threshold,
        "keys": _key_list(keys),
        "head_keys": _key_list(head_keys),
    }
    data = canonical.dumps(doc)
    try:
        parse_root_payload(data, "new trust root")
    except FormatError as err:
        raise InputError(str(err)) from None
    return data


def parse_root_payload(data: bytes, what: str) -> RootPayload:
    """Parse the trust-root payload strictly; signatures are not looked at here."""
    doc = canonical.loads(data, what)
    canonical.require_format(doc, ROOT_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    version = canonical.int_field(doc["version"], what, "version", 1, MAX_VERSION)
    issued_at = canonical.parse_timestamp(doc["issued_at"], f"{what}: field 'issued_at'")
    expires = canonical.parse_timestamp(doc["expires"], f"{what}: field 'expires'")
    if expires <= issued_at:
        raise FormatError(f"{what}: field 'expires' ({doc['expires']}) must be later than 'issued_at'")
    keys = _parse_keys(doc["keys"], what, "keys", 1)
    head_keys = _parse_keys(doc["head_keys"], what, "head_keys", 0)
    threshold = canonical.int_field(doc["threshold"], what, "threshold", 1, len(keys))
    return RootPayload(
        version=version, issued_at=issued_at, expires=expires, threshold=threshold, keys=keys, head_keys=head_keys
    )


def _parse_keys(items: list, what: str, name: str, minimum: int) -> dict:
    if not minimum <= len(items) <= MAX_KEYS:
        raise FormatError(f"{what}: field '{name}' must hold {minimum} to {MAX_KEYS} keys, found {len(items)}")
    keys: dict[str, bytes] = {}
    previous = ""
    for index, item in enumerate(items):
        field = f"{name}[{index}]"
        canonical.require_fields(item, _KEY_FIELDS, what, prefix=f"{field}.")
        public = canonical.b64decode(item["public"], f"{what}: field '{field}.public'", dsse.PUBLIC_KEY_LEN)
        keyid = dsse.keyid_of(public)
        if item["keyid"] != keyid:
            raise FormatError(
                f"{what}: field '{field}.keyid' is {canonical.show(item['keyid'])}, but the key's id "
                f"(SHA-256 of its public key) is {keyid}"
            )
        if keyid <= previous:
            problem = "listed twice" if keyid == previous else "not sorted by keyid"
            raise FormatError(f"{what}: field '{name}': key {keyid[:16]} is {problem}")
        previous = keyid
        keys[keyid] = public
    return keys


def root_version(envelope: dsse.Envelope) -> int:
    """The version a root envelope claims (not verified: for naming and ordering only)."""
    return parse_root_payload(envelope.payload, "trust root").version


def _public_keys(private_keys: Iterable, what: str) -> dict:
    keys = {}
    for key in private_keys:
        public = dsse.raw_public(key)
        keyid = dsse.keyid_of(public)
        if keyid in keys:
            raise InputError(f"{what}: key {keyid[:16]} is given twice")
        keys[keyid] = public
    return keys


def new_root(
    private_keys: Iterable,
    threshold: int,
    *,
    version: int = 1,
    issued_at: datetime,
    expires: datetime,
    head_keys: Iterable = (),
) -> dsse.Envelope:
    """A trust root listing the given keys (and store-head keys, public or private), signed by all of them."""
    private_keys = list(private_keys)
    keys = _public_keys(private_keys, "new trust root")
    payload = _payload_bytes(
        keys, threshold, version, issued_at, expires, _public_keys(head_keys, "new trust root head keys")
    )
    return dsse.sign(payload, ROOT_PAYLOAD_TYPE, private_keys)


def rotate(
    old_root_envelope: dsse.Envelope,
    old_private_keys: Iterable,
    new_private_keys: Iterable,
    threshold: int,
    *,
    issued_at: datetime,
    expires: datetime,
    head_keys: Iterable | None = None,
) -> dsse.Envelope:
    """The next root (version + 1) for the new keys, signed by the given old keys and all new keys.

    The store-head keys carry over unless ``head_keys`` names new ones."""
    old = parse_root_payload(old_root_envelope.payload, "current trust root")
    old_private_keys = list(old_private_keys)
    new_private_keys = list(new_private_keys)
    for keyid in _public_keys(old_private_keys, "old keys"):
        if keyid not in old.keys:
            raise InputError(f"key {keyid[:16]} is not a key of trust root version {old.version}; it cannot sign")
    keys = _public_keys(new_private_keys, "new trust root")
    heads = old.head_keys if head_keys is None else _public_keys(head_keys, "new trust root head keys")
    payload = _payload_bytes(keys, threshold, old.version + 1, issued_at, expires, heads)
    return dsse.sign(payload, ROOT_PAYLOAD_TYPE, old_private_keys + new_private_keys)


def _trusted(payload: RootPayload, envelope: dsse.Envelope) -> TrustRoot:
    return TrustRoot(
        version=payload.version,
        threshold=payload.threshold,
        keys=payload.keys,
        issued_at=payload.issued_at,
        expires=payload.expires,
        envelope=envelope,
        head_keys=payload.head_keys,
    )


def _check_unexpired(root: TrustRoot, now: datetime, what: str) -> TrustRoot:
    if now >= root.expires:
        raise ExpiredError(
            f"{what}: trust root version {root.version} expired at {canonical.utc_timestamp(root.expires)} "
            f"(now {canonical.utc_timestamp(now)}); sign a new trust root with the current keys"
        )
    return root


def _first(envelope: dsse.Envelope, what: str) -> TrustRoot:
    dsse.require_type(envelope, ROOT_PAYLOAD_TYPE, what)
    # A first root names its own keys: the payload is parsed to find them, and
    # nothing in it is trusted until a threshold of them verified it.
    payload = parse_root_payload(envelope.payload, what)
    dsse.verify_threshold(envelope, ROOT_PAYLOAD_TYPE, payload.keys, payload.threshold, f"{what} (its own keys)")
    return _trusted(payload, envelope)


def _next(trusted: TrustRoot, candidate: dsse.Envelope, what: str) -> TrustRoot:
    dsse.require_type(candidate, ROOT_PAYLOAD_TYPE, what)
    if candidate == trusted.envelope:
        return trusted
    # The version is read before the signatures are checked only to name the
    # problem; any candidate that fails here is refused either way.
    payload = parse_root_payload(candidate.payload, what)
    if payload.version <= trusted.version:
        raise RollbackError(
            f"trust-root rollback: {what} has version {payload.version}, but version {trusted.version} is already "
            "trusted (and differs from it); only the next newer root is accepted"
        )
    if payload.version != trusted.version + 1:
        raise VerificationError(
            f"{what}: trust-root version skipped: expected version {trusted.version + 1}, found {payload.version}; "
            "apply the roots in between first"
        )
    dsse.verify_threshold(
        candidate,
        ROOT_PAYLOAD_TYPE,
        trusted.keys,
        trusted.threshold,
        f"{what} (keys of trusted version {trusted.version})",
    )
    dsse.verify_threshold(
        candidate,
        ROOT_PAYLOAD_TYPE,
        payload.keys,
        payload.threshold,
        f"{what} (its own keys, version {payload.version})",
    )
    return _trusted(payload, candidate)


def load_root(envelope: dsse.Envelope, what: str, now: datetime) -> TrustRoot:
    """Trust a first root: self-signed by a threshold of its own keys and not expired at ``now``."""
    return _check_unexpired(_first(envelope, what), now, what)


def update_root(trusted: TrustRoot, candidate_envelope: dsse.Envelope, now: datetime) -> TrustRoot:
    """Move from ``trusted`` to the next root; the same root again returns ``trusted`` unchanged."""
    updated = _next(trusted, candidate_envelope, "new trust root")
    if updated is trusted:
        return trusted
    return _check_unexpired(updated, now, "new trust root")


def walk(trusted: TrustRoot, candidates: Iterable[dsse.Envelope], now: datetime) -> TrustRoot:
    """Apply candidate roots in version order; only the root finally reached must be unexpired.

    Candidates older than ``trusted`` are skipped (they can add no trust); one
    with the same version must be the trusted root itself.
    """
    for version, candidate in sorted(((root_version(env), env) for env in candidates), key=lambda item: item[0]):
        if version < trusted.version:
            continue
        trusted = _next(trusted, candidate, f"trust root version {version}")
    return _check_unexpired(trusted, now, "trust root")


def verify_history(envelopes: Iterable[dsse.Envelope], what: str = "trust root") -> TrustRoot:
    """Check a whole history (version 1 self-signed, then each next root) without a clock.

    Expiry is not looked at: this is for appending the next root to a history
    whose newest root may have expired. To trust a root, use load_chain.
    """
    envelopes = list(envelopes)
    if not envelopes:
        raise VerificationError(f"{what}: no trust root given; create one (playbook ironclaw.sealed.init)")
    trusted = _first(envelopes[0], f"{what} version 1")
    if trusted.version != 1:
        raise VerificationError(f"{what}: the history must start at version 1, found version {trusted.version}")
    for envelope in envelopes[1:]:
        trusted = _next(trusted, envelope, f"{what} version {root_version(envelope)}")
    return trusted


def load_versions(envelopes: Iterable[dsse.Envelope], now: datetime, what: str = "trust root") -> list[TrustRoot]:
    """Every root of a history from version 1, each verified by the one before; the newest unexpired at ``now``."""
    envelopes = list(envelopes)
    load_chain(envelopes, now, what)  # the whole history, and the newest unexpired
    versions = [_first(envelopes[0], f"{what} version 1")]
    for envelope in envelopes[1:]:
        versions.append(_next(versions[-1], envelope, f"{what} version {root_version(envelope)}"))
    return versions


def load_chain(envelopes: Iterable[dsse.Envelope], now: datetime, what: str = "trust root") -> TrustRoot:
    """Trust a whole history from version 1; the newest root must be unexpired at ``now``."""
    return _check_unexpired(verify_history(envelopes, what), now, what)
