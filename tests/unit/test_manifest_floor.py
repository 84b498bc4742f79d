"""The node's floor record (`<state_dir>/floors/<vm_uuid>.json`): written with the cached manifest, only forward,
strictly parsed, and counted by node_floor() next to the given floor and the cached manifest."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.issue import next_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import node_floor
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    envelope_digest,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
VMID, UUID = 100, "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"


def statement(token_sha: str) -> dict:
    return payload.check_statement(
        {
            "subject": {"vmid": VMID, "vm_uuid": UUID, "vm_ctime": None, "cluster": "lab"},
            "node": {"name": "node-a", "id": "000b" + "11" * 32},
            "keyslot": {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
            "blobs": [{"name": "api-token", "sha256": token_sha, "size": 10, "generation": 1}],
            "state": "active",
            "policy": {"migratable": True, "pcrs": None},
        }
    )


def chain(length: int) -> list[dsse.Envelope]:
    envelopes = []
    for index in range(length):
        previous = envelopes[-1] if envelopes else None
        manifest = next_manifest(
            statement(f"{index + 0xA0:02x}" * 32), previous, now=NOW, expires_days=90, resign_days=30
        )[0]
        envelopes.append(dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, [KEY]))
    return envelopes


def ref(envelope: dsse.Envelope) -> ManifestRef:
    return ManifestRef(payload.parse_manifest(envelope.payload, "test").version, envelope_digest(envelope))


@pytest.fixture
def cache(tmp_path):
    os.makedirs(tmp_path / str(VMID))
    return NodeCache(str(tmp_path))


def test_saving_a_manifest_writes_the_floor_record(cache):
    (first,) = chain(1)
    assert cache.floor(UUID) is None
    assert cache.save_manifest(VMID, first) is True
    with open(cache.floor_path(UUID), "rb") as fh:
        data = fh.read()
    assert json.loads(data) == {
        "format": "ironclaw-floor/1",
        "vmid": VMID,
        "vm_uuid": UUID,
        "version": 1,
        "digest": envelope_digest(first),
    }
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert oct(os.stat(cache.floor_path(UUID)).st_mode & 0o777) == "0o600"
    assert cache.floor(UUID) == ref(first)
    assert cache.save_manifest(VMID, first) is False


def test_floor_record_only_moves_forward(cache):
    first, second = chain(2)
    cache.save_manifest(VMID, second)
    with pytest.raises(
        VerificationError, match="rollback: refusing to cache manifest version 1 .* floor record is at version 2"
    ):
        cache.save_manifest(VMID, first)
    assert cache.floor(UUID) == ref(second)
    assert cache.manifest(VMID) == second


def test_same_version_other_digest_does_not_overwrite(cache):
    (first,) = chain(1)
    fork = dsse.sign(
        next_manifest(statement("ff" * 32), None, now=NOW, expires_days=90, resign_days=30)[0].to_bytes(),
        payload.MANIFEST_PAYLOAD_TYPE,
        [KEY],
    )
    cache.save_manifest(VMID, first)
    with pytest.raises(ForkError, match="fork: refusing to cache manifest version 1"):
        cache.save_manifest(VMID, fork)
    assert cache.floor(UUID) == ref(first)
    assert cache.manifest(VMID) == first


def test_an_existing_cache_without_a_floor_record_gets_one(cache):
    (first,) = chain(1)
    with open(cache.manifest_path(VMID), "wb") as fh:
        fh.write(dsse.envelope_to_bytes(first))
    assert cache.save_manifest(VMID, first) is True
    assert cache.floor(UUID) == ref(first)


def test_node_floor_counts_the_record_when_an_old_manifest_json_is_restored(cache):
    first, second = chain(2)
    cache.save_manifest(VMID, first)
    cache.save_manifest(VMID, second)
    # The whole VM directory restored from an old copy: manifest.json is version 1 again.
    with open(cache.manifest_path(VMID), "wb") as fh:
        fh.write(dsse.envelope_to_bytes(first))
    assert node_floor(cache, VMID, UUID, None) == ref(second)
    assert node_floor(cache, VMID, UUID, ManifestRef(1, envelope_digest(first))) == ref(second)
    assert node_floor(cache, VMID, UUID, ManifestRef(3, "ee" * 32)) == ManifestRef(3, "ee" * 32)


def test_node_floor_refuses_record_and_cache_that_disagree_at_one_version(cache):
    first, second = chain(2)
    cache.save_manifest(VMID, first)
    with open(cache.floor_path(UUID), "wb") as fh:
        fh.write(
            json.dumps(
                {"digest": "ee" * 32, "format": "ironclaw-floor/1", "version": 1, "vm_uuid": UUID, "vmid": VMID},
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        )
    with pytest.raises(ForkError, match="two different manifests at version 1"):
        node_floor(cache, VMID, UUID, None)
    assert node_floor(cache, VMID, UUID, ref(second)) == ref(second)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "ironclaw-floor/2"}, "unknown format"),
        ({"version": 0}, "field 'version' must be from 1"),
        ({"digest": "ab"}, "exactly 32 bytes"),
        ({"vm_uuid": "0f0e0d0c-0b0a-4909-8807-0605040302ab"}, "records VM uuid 0f0e0d0c"),
        ({"vmid": "100"}, "field 'vmid' must be integer"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_corrupt_floor_record_is_an_error(cache, change, message):
    (first,) = chain(1)
    cache.save_manifest(VMID, first)
    doc = {**json.loads(Path(cache.floor_path(UUID)).read_bytes()), **change}
    with open(cache.floor_path(UUID), "wb") as fh:
        fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(FormatError, match=message):
        cache.floor(UUID)
    with pytest.raises(FormatError, match=message):
        node_floor(cache, VMID, UUID, None)


def test_trailing_bytes_in_the_floor_record_are_an_error(cache):
    (first,) = chain(1)
    cache.save_manifest(VMID, first)
    with open(cache.floor_path(UUID), "ab") as fh:
        fh.write(b"\n")
    with pytest.raises(FormatError, match="not canonical"):
        cache.floor(UUID)
