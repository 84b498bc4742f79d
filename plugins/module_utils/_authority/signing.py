# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller and the air-gapped signer sign (DESIGN §7, A10): shown in full, confirmed, bounded.

- A request is named by its digest: SHA-256 (hex) of the exact payload bytes that get signed.
- The signer shows every field of a request (``summary_of_*``): nothing it signs is hidden behind a summary.
- It signs a request only when the operator confirmed it: interactively (``yes`` to the digests shown, or
  digest prefixes typed at the prompt) or by ``ironclaw_sign_confirm``, a list of digest prefixes of at
  least 16 hex characters, each naming exactly one pending request. A confirmation that names nothing, or
  several, or is too short is an ``UnconfirmedError`` and nothing is signed. No answer (a run that is not
  on a terminal) or ``no`` confirms nothing: nothing is signed and the run says so.
- A manifest lives at most ``max_days`` (``ironclaw_manifest_max_days``, default 90, at most 366): a longer
  lifetime is a ``LifetimeError``, on the online path and on the offline signer alike.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    LifetimeError,
    UnconfirmedError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import statement_of

DEFAULT_MAX_DAYS = 90
MOST_DAYS = 366
MIN_PREFIX = 16
_HEX = re.compile(r"[0-9a-f]+")
_YES = ("yes", "y")
_NO = ("", "no", "n")


def request_digest(payload: bytes) -> str:
    """What names a request everywhere (prompt, ``ironclaw_sign_confirm``, messages): SHA-256 of its payload."""
    return hashlib.sha256(payload).hexdigest()


# -- lifetime -------------------------------------------------------------------------


def check_max_days(max_days: int) -> int:
    if not isinstance(max_days, int) or isinstance(max_days, bool) or max_days < 1:
        raise LifetimeError(f"ironclaw_manifest_max_days must be a whole number of days >= 1, found {max_days!r}")
    if max_days > MOST_DAYS:
        raise LifetimeError(
            f"ironclaw_manifest_max_days {max_days} is beyond the {MOST_DAYS} days the controller signs at most"
        )
    return max_days


def lifetime(issued_at: str, expires: str, what: str) -> timedelta:
    return canonical.parse_timestamp(expires, f"{what}: expires") - canonical.parse_timestamp(
        issued_at, f"{what}: issued_at"
    )


def check_lifetime(issued_at: str, expires: str, max_days: int, what: str) -> timedelta:
    """Refuse (LifetimeError) a document valid for longer than max_days; returns its lifetime."""
    span = lifetime(issued_at, expires, what)
    if span > timedelta(days=check_max_days(max_days)):
        raise LifetimeError(
            f"{what} would be valid for {span} (issued {issued_at}, expires {expires}), beyond "
            f"ironclaw_manifest_max_days ({max_days} days): nothing was signed. Shorten "
            "ironclaw_manifest_expires_days where the request was made, or raise ironclaw_manifest_max_days "
            f"(at most {MOST_DAYS})"
        )
    return span


# -- what the signer shows ------------------------------------------------------------


def summary_of_manifest(manifest, payload: bytes) -> dict:
    """Every field of a manifest payload, named for a person to check, with the request digest."""
    return {
        "kind": "manifest",
        "digest": request_digest(payload),
        "manifest_id": manifest.manifest_id,
        "version": manifest.version,
        "migration": None,  # shown even when the manifest records none
        **statement_of(manifest),
        "prev": manifest.prev,
        "issued_at": manifest.issued_at,
        "expires": manifest.expires,
        "lifetime": str(lifetime(manifest.issued_at, manifest.expires, "manifest")),
    }


def summary_of_receipt(document: dict, payload: bytes) -> dict:
    """A destruction receipt is shown whole (it holds no secret), with its request digest."""
    shown = {key: value for key, value in document.items() if key != "format"}
    return {"kind": "receipt", "digest": request_digest(payload), **shown}


def summary_of_node_record(record, payload: bytes) -> dict:
    """A node record is shown whole (its SRK name is what the signer checks against the enrolled node)."""
    shown = {key: value for key, value in record.to_dict().items() if key != "format"}
    return {"kind": "node-record", "digest": request_digest(payload), **shown}


def headline(summary: dict) -> str:
    """One line per request for the confirmation prompt."""
    if summary["kind"] == "manifest":
        subject = summary["subject"]
        what = (
            f"manifest VM {subject['vmid']} ({subject['vm_uuid']}) version {summary['version']} {summary['state']} "
            f"on {summary['node']['name']}, {len(summary['blobs'])} blob(s), expires {summary['expires']}"
        )
    elif summary["kind"] == "node-record":
        what = (
            f"node record {summary['node']} ({summary['backend']}) SRK {summary['srk_name']}, "
            f"enrolled {summary['enrolled_at']}"
        )
    else:
        vm = summary["vm"]
        what = f"destruction receipt VM {vm['vmid']} ({vm['vm_uuid']}), {'final' if summary['final'] else 'partial'}"
    return f"{summary['digest']}  {what}"


# -- confirmation ---------------------------------------------------------------------


def resolve_prefixes(prefixes: list[str], digests: list[str]) -> list[str]:
    """The digests the prefixes confirm, in request order. Each prefix: 16+ hex characters, exactly one match."""
    chosen = set()
    for prefix in prefixes:
        text = prefix.strip().lower() if isinstance(prefix, str) else prefix
        if not isinstance(text, str) or not _HEX.fullmatch(text) or len(text) < MIN_PREFIX:
            raise UnconfirmedError(
                f"confirmation {canonical.show(prefix)} is not a request digest prefix of {MIN_PREFIX} or more hex "
                "characters: nothing was signed"
            )
        matches = [digest for digest in digests if digest.startswith(text)]
        if not matches:
            raise UnconfirmedError(f"confirmation {text} matches no pending request: nothing was signed")
        if len(matches) > 1:
            raise UnconfirmedError(
                f"confirmation {text} matches {len(matches)} requests ({', '.join(m[:24] for m in matches)}): "
                "give more of the digest; nothing was signed"
            )
        chosen.add(matches[0])
    return [digest for digest in digests if digest in chosen]


def confirmed_digests(
    digests: list[str], *, confirm: list[str] | None, answer: str | None, shown: list[str] | None
) -> list[str]:
    """The pending requests (by digest) the operator confirmed; [] when nothing was confirmed.

    `confirm` is ``ironclaw_sign_confirm``; `answer` what was typed at the prompt listing `shown`
    (``yes`` confirms exactly the digests shown; anything else is read as digest prefixes).
    """
    if confirm:
        return resolve_prefixes(list(confirm), digests)
    if answer is None:
        return []
    text = answer.strip().lower()
    if text in _NO:
        return []
    if text in _YES:
        return resolve_prefixes(list(shown or []), digests)
    return resolve_prefixes(text.replace(",", " ").split(), digests)
