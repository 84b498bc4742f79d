"""Deciding the next manifest version, the offline request exchange, and the node's own floor."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, requests
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.issue import next_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import node_floor
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ManifestRef, envelope_digest

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"


def statement(token_sha: str = "aa" * 32) -> dict:
    return payload.check_statement(
        {
            "subject": {"vmid": 100, "vm_uuid": UUID, "vm_ctime": None, "cluster": "lab"},
            "node": {"name": "node-a", "id": "000b" + "11" * 32},
            "keyslot": {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
            "blobs": [{"name": "api-token", "sha256": token_sha, "size": 10, "generation": 1}],
            "state": "active",
            "policy": {"migratable": True, "pcrs": None},
        }
    )


def signed(manifest) -> dsse.Envelope:
    return dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, [KEY])


def test_first_version_has_no_prev():
    manifest, why = next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)
    assert (manifest.version, manifest.prev, why) == (1, None, "first version")
    assert manifest.expires == "2030-08-30T12:00:00Z"


def test_unchanged_state_makes_no_new_version():
    first = signed(next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0])
    manifest, why = next_manifest(statement(), first, now=NOW + timedelta(days=10), expires_days=90, resign_days=30)
    assert manifest is None and why == "unchanged (version 1)"


def test_changed_state_makes_the_next_version_chained_to_the_previous():
    first = signed(next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0])
    manifest, why = next_manifest(statement("bb" * 32), first, now=NOW, expires_days=90, resign_days=30)
    assert manifest.version == 2 and manifest.prev == envelope_digest(first)
    assert why == "sealed state changed since version 1"


def test_unchanged_state_near_expiry_is_reissued():
    first = signed(next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0])
    later = NOW + timedelta(days=70)  # 20 days left, inside the 30-day window
    manifest, why = next_manifest(statement(), first, now=later, expires_days=90, resign_days=30)
    assert manifest.version == 2 and why == "re-issued: version 1 expires in 20 days"
    assert payload.statement_of(manifest) == statement()


def test_tombstoned_chain_cannot_continue():
    first = next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0]
    tomb = payload.new_manifest(
        payload.tombstone_statement(first),
        version=2,
        prev=envelope_digest(signed(first)),
        issued_at=NOW,
        expires=NOW + timedelta(days=90),
    )
    with pytest.raises(InputError, match="decommissioned"):
        next_manifest(statement(), signed(tomb), now=NOW, expires_days=90, resign_days=30)


@pytest.mark.parametrize(("expires", "resign"), [(0, 0), (10, 10), (10, -1)])
def test_lifetimes_that_do_not_fit_are_refused(expires, resign):
    with pytest.raises(InputError, match="do not fit"):
        next_manifest(statement(), None, now=NOW, expires_days=expires, resign_days=resign)


# -- offline signing requests -------------------------------------------------------


def test_request_round_trip_and_stale_request_replaced(tmp_path):
    sign_dir = str(tmp_path / "exchange")
    manifest = next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0]
    envelope, path = requests.exchange(sign_dir, manifest)
    assert envelope is None and path.endswith(f"{UUID}-v1.request.json")
    (pending,) = requests.pending_requests(sign_dir)
    assert pending.summary["version"] == 1
    # The same state again (new issued_at, new id) keeps the pending request: its payload is what gets signed.
    again = next_manifest(statement(), None, now=NOW + timedelta(hours=1), expires_days=90, resign_days=30)[0]
    assert requests.exchange(sign_dir, again) == (None, path)
    (done,) = requests.sign_confirmed(sign_dir, [KEY], confirm=[pending.digest], answer=None, shown=None, max_days=90)
    signed_path = done.signed_path
    assert done.summary["blobs"] == [{"name": "api-token", "sha256": "aa" * 32, "size": 10, "generation": 1}]
    assert requests.pending_requests(sign_dir) == []
    envelope, returned = requests.exchange(sign_dir, again)
    assert returned == signed_path and payload.parse_manifest(envelope.payload, "m").manifest_id == manifest.manifest_id
    # Another sealed state for the same version replaces the request and drops the stale signature.
    changed = next_manifest(statement("cc" * 32), None, now=NOW, expires_days=90, resign_days=30)[0]
    assert requests.exchange(sign_dir, changed) == (None, path)
    assert not os.path.exists(signed_path)


def test_altered_request_summary_is_refused(tmp_path):
    sign_dir = str(tmp_path / "exchange")
    manifest = next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0]
    _none, path = requests.exchange(sign_dir, manifest)
    doc = json.loads(open(path).read())
    doc["summary"]["blobs"] = []
    with open(path, "w") as fh:
        fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    with pytest.raises(FormatError, match="summary does not describe the payload"):
        requests.sign_confirmed(sign_dir, [KEY], confirm=None, answer="yes", shown=[], max_days=90)


def test_signed_file_for_another_payload_is_refused(tmp_path):
    sign_dir = str(tmp_path / "exchange")
    manifest = next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0]
    _none, path = requests.exchange(sign_dir, manifest)
    other = next_manifest(statement("dd" * 32), None, now=NOW, expires_days=90, resign_days=30)[0]
    with open(path.replace(".request.json", ".signed.json"), "wb") as fh:
        fh.write(dsse.envelope_to_bytes(signed(other)))
    with pytest.raises(FormatError, match="does not sign the payload"):
        requests.exchange(sign_dir, manifest)


# -- the node's floor ---------------------------------------------------------------


def test_node_floor_is_the_higher_of_store_and_cache(tmp_path):
    cache = NodeCache(str(tmp_path))
    first = signed(next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0])
    second = signed(next_manifest(statement("bb" * 32), first, now=NOW, expires_days=90, resign_days=30)[0])
    assert node_floor(cache, 100, UUID, None) is None
    os.makedirs(tmp_path / "100")
    assert cache.save_manifest(100, second) is True and cache.save_manifest(100, second) is False
    mine = node_floor(cache, 100, UUID, ManifestRef(1, envelope_digest(first)))
    assert mine == ManifestRef(2, envelope_digest(second), False)
    assert node_floor(cache, 100, UUID, ManifestRef(5, "ee" * 32)).version == 5


def test_a_migration_is_recorded_once():
    migration = {"source": "node-0", "target": "node-a", "not_after": "2030-06-01T13:00:00Z"}
    first = signed(next_manifest(statement(), None, now=NOW, expires_days=90, resign_days=30)[0])
    moved_statement = payload.check_statement({**statement(), "migration": migration})
    moved = next_manifest(moved_statement, first, now=NOW, expires_days=90, resign_days=30)[0]
    assert moved.version == 2 and moved.migration == payload.Migration(**migration)
    envelope = signed(moved)
    # The same move again, or the moved state described later without it: nothing new to sign.
    assert next_manifest(moved_statement, envelope, now=NOW, expires_days=90, resign_days=30)[0] is None
    assert next_manifest(statement(), envelope, now=NOW, expires_days=90, resign_days=30)[0] is None
    # A new move of the same state is a new version.
    back = payload.check_statement({**statement(), "migration": {**migration, "source": "node-b"}})
    assert next_manifest(back, envelope, now=NOW, expires_days=90, resign_days=30)[0].version == 3
