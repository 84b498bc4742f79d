"""Moving a VM's sealed state between two nodes (two real swtpms, or two software nodes): export, import,
revocation of the source, and every refusal that protects them."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    IronclawError,
    PolicyError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.bundle import parse_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.bundle_check import verify_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    PolicyKeyStore,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from rig.policy import approve

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
VM = (100, "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b")
NEIGHBOUR = (101, "0f0e0d0c-0b0a-4909-8807-0605040302ab")
SECRETS = {"api-token": b"token-123", "big": os.urandom(70_000), "empty": b""}
MIGRATION = {"source": "pve1", "target": "pve2", "not_after": canonical.utc_timestamp(NOW + timedelta(hours=1))}
ROOT_KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)


@dataclasses.dataclass
class Node:
    name: str
    backend: object
    state_dir: str

    def facts(self):
        return self.backend.facts()

    def vm(self, vm=VM) -> VmDir:
        return VmDir(self.state_dir, *vm)

    def files(self, vm=VM) -> dict[str, str]:
        path = Path(self.vm(vm).path)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


class Cluster:
    """Nodes of one backend and the controller's policy keys."""

    def __init__(self, backend_kind: str, tmp_path: Path, tctis: list[str | None]):
        self.keys = PolicyKeyStore(str(tmp_path / "controller"))
        self.nodes = []
        for index, tcti in enumerate(tctis):
            state_dir = str(tmp_path / f"node{index + 1}")
            backend = open_backend(backend_kind, tcti=tcti, state_dir=state_dir)
            backend.provision()
            self.nodes.append(Node(f"pve{index + 1}", backend, state_dir))

    def close(self):
        for node in self.nodes:
            node.backend.close()

    def approval(self, node: Node, vm=VM):
        self.keys.create(*vm)
        return approve(self.keys, *vm, node.facts())

    def seal(self, node: Node, vm=VM, secrets=None, migratable=True):
        secrets = SECRETS if secrets is None else secrets
        approval = self.approval(node, vm)
        return engine.seal(
            node.backend,
            node.vm(vm),
            [engine.Secret(n, d) for n, d in secrets.items()],
            migratable=migratable,
            pcrs=None,
            policy_key_public=self.keys.public(*vm)[0],
            approval=approval,
            check_mode=False,
        )

    def grant(self, source: Node, target: Node, vm=VM, signed_for=None):
        facts, target_facts = source.facts(), target.facts()
        signed_for = signed_for or vm
        self.keys.create(*signed_for)
        return sign_grant(
            self.keys.load(*signed_for),
            vmid=vm[0],
            vm_uuid=vm[1],
            source_name=facts.node_name,
            source_epoch_nv_name=facts.epoch_nv_name,
            epoch=facts.epoch,
            target_name=target_facts.node_name,
            target_public=target_facts.node_public,
        )

    def export(self, source: Node, target: Node, grant=None, *, now=NOW, check_mode=False, vm=VM, **changes):
        return transfer.export_vm(
            source.backend,
            source.vm(vm),
            grant or self.grant(source, target, vm),
            migration=changes.get("migration", MIGRATION),
            manifest={"version": 1, "digest": "ab" * 32},
            path=bundle_at(source, vm),
            now=now,
            check_mode=check_mode,
        )

    def carry(self, source: Node, target: Node, vm=VM) -> str:
        path = bundle_at(target, vm)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(bundle_at(source, vm), path)
        return path

    def import_(self, target: Node, *, now=NOW, check_mode=False, vm=VM, verify=None):
        return transfer.import_vm(
            target.backend,
            target.vm(vm),
            self.approval(target, vm),
            path=bundle_at(target, vm),
            now=now,
            check_mode=check_mode,
            verify=verify,
        )

    def unsealed(self, node: Node, vm=VM) -> dict[str, bytes]:
        return {name: data for name, _h, data, _e in engine.open_all(node.backend, node.vm(vm))}


def bundle_at(node: Node, vm=VM) -> str:
    return transfer.bundle_path(node.state_dir, *vm)


@pytest.fixture(params=["tpm2", "software"])
def cluster(request, tmp_path):
    if request.param == "tpm2":
        pair = request.getfixturevalue("swtpm_pair")
        third = request.getfixturevalue("swtpm")
        tctis = [t.tcti for t in (*pair, third)]
    else:
        tctis = [None, None, None]
    made = Cluster(request.param, tmp_path, tctis)
    yield made
    made.close()


def migrate(cluster: Cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    cluster.carry(a, b)
    return a, b, cluster.import_(b)


def test_target_unseals_identical_bytes_and_the_source_is_untouched(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    before = a.files()
    exported = cluster.export(a, b)
    assert exported["status"] == "exported" and exported["blobs"] == sorted(SECRETS)
    assert a.files() == before, "export must not change the source's files"
    cluster.carry(a, b)
    imported = cluster.import_(b)
    assert imported["status"] == "imported" and [r["name"] for r in imported["blobs"]] == sorted(SECRETS)
    assert cluster.unsealed(b) == SECRETS
    assert cluster.unsealed(a) == SECRETS, "the source keeps a working copy until it is revoked"
    assert imported["migration"] == MIGRATION
    assert transfer.remove_bundle(bundle_at(b), check_mode=False) and not os.path.exists(bundle_at(b))
    assert b.vm().keyslot().node_name == b.facts().node_name
    # Blobs travel unchanged, so their SHA-256 in the manifest stays valid.
    assert {n: h for n, h in b.files().items() if n.endswith(".sealed")} == {
        n: h for n, h in before.items() if n.endswith(".sealed")
    }


def test_bundle_holds_no_secret_in_the_clear(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    data = Path(bundle_at(a)).read_bytes()
    for secret in SECRETS.values():
        if secret:
            assert secret not in data
            assert canonical.b64encode(secret).encode() not in data


def test_saved_copy_of_the_source_no_longer_unseals_after_revocation(cluster, tmp_path):
    a, b, _c = cluster.nodes
    cluster.seal(a, NEIGHBOUR)
    migrate(cluster)
    saved = tmp_path / "saved"
    shutil.copytree(a.vm().path, saved)
    done = destroy_on_node(a.backend, a.state_dir, *VM, now="2030-06-01T12:00:00Z", check_mode=False)
    assert done["status"] == "destroyed" and [s["vmid"] for s in done["survivors"]] == [NEIGHBOUR[0]]
    shutil.copytree(saved, a.vm().path)
    with pytest.raises(PolicyError, match="revoked"):
        engine.verify(a.backend, a.vm())
    # The neighbour, re-approved for the new epoch, still works; the target too.
    engine.install_approval(a.backend, a.vm(NEIGHBOUR), cluster.approval(a, NEIGHBOUR), check_mode=False)
    assert engine.verify(a.backend, a.vm(NEIGHBOUR))["verified"]
    assert cluster.unsealed(b) == SECRETS


def test_source_epoch_bump_revokes_an_unused_grant(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    grant = cluster.grant(a, b)
    a.backend.bump_epoch()
    with pytest.raises(PolicyError, match="revoked"):
        cluster.export(a, b, grant)
    assert not os.path.exists(bundle_at(a))


def test_grant_for_another_vm_is_refused(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.seal(a, NEIGHBOUR)
    with pytest.raises(PolicyError, match="the grant is for VM 101"):
        cluster.export(a, b, cluster.grant(a, b, NEIGHBOUR))
    # Signed by the neighbour's key for this VM's identity: the keyslot trusts another key.
    with pytest.raises(PolicyError, match="another policy key"):
        cluster.export(a, b, cluster.grant(a, b, VM, signed_for=NEIGHBOUR))
    assert not os.path.exists(bundle_at(a))


def test_grant_whose_target_key_was_swapped_is_refused(cluster):
    a, b, c = cluster.nodes
    cluster.seal(a)
    grant = cluster.grant(a, b)
    swapped = dataclasses.replace(grant, target_public=c.facts().node_public)
    with pytest.raises(PolicyError, match="belongs to"):
        cluster.export(a, b, swapped)


def test_non_migratable_keyslot_is_refused_and_stays_intact(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a, migratable=False)
    before = a.files()
    with pytest.raises(PolicyError, match="migratable=false"):
        cluster.export(a, b)
    assert a.files() == before and not os.path.exists(bundle_at(a))
    assert engine.verify(a.backend, a.vm())["verified"]


def test_bundle_imported_on_another_node_is_refused(cluster):
    a, b, c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    cluster.carry(a, c)
    with pytest.raises(PolicyError, match="only the node it was exported to"):
        cluster.import_(c)
    assert not os.path.exists(c.vm().path)


def test_expired_bundle_is_refused(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    cluster.carry(a, b)
    with pytest.raises(PolicyError, match="migration window closed"):
        cluster.import_(b, now=NOW + timedelta(hours=2))
    assert not os.path.exists(b.vm().path)


def test_altered_blob_in_the_bundle_writes_nothing(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    path = cluster.carry(a, b)
    bundle = parse_bundle(Path(path).read_bytes(), "bundle")
    name, data = bundle.blobs[0]
    altered = data[:-1] + bytes([data[-1] ^ 1])
    Path(path).write_bytes(dataclasses.replace(bundle, blobs=((name, altered), *bundle.blobs[1:])).to_bytes())
    with pytest.raises(PolicyError, match=f"blob '{name}'"):
        cluster.import_(b)
    assert not os.path.exists(b.vm().path)


def test_export_and_import_converge_when_re_run(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    first = Path(bundle_at(a)).read_bytes()
    again = cluster.export(a, b)
    assert again["status"] == "already-exported" and not again["changed"]
    assert Path(bundle_at(a)).read_bytes() == first
    cluster.carry(a, b)
    # Cut short after the blobs were written, before the keyslot: a re-run finishes.
    bundle = parse_bundle(first, "bundle")
    b.vm().ensure()
    for name, data in bundle.blobs:
        b.vm().write(b.vm().blob_path(name), data)
    assert cluster.import_(b)["status"] == "imported"
    rerun = cluster.import_(b)
    assert rerun["status"] == "already-imported" and rerun["migration"] == MIGRATION
    assert cluster.unsealed(b) == SECRETS


def test_expired_outgoing_bundle_is_made_afresh(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.export(a, b)
    later = NOW + timedelta(hours=2)
    migration = {**MIGRATION, "not_after": canonical.utc_timestamp(later + timedelta(hours=1))}
    assert cluster.export(a, b, now=later, migration=migration)["status"] == "exported"


def test_check_mode_writes_nothing(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    assert cluster.export(a, b, check_mode=True)["status"] == "would-export"
    assert not os.path.exists(bundle_at(a))
    cluster.export(a, b)
    cluster.carry(a, b)
    assert cluster.import_(b, check_mode=True)["status"] == "would-import"
    assert not os.path.exists(b.vm().path) and os.path.exists(bundle_at(b))


def test_import_refuses_other_state_of_the_vm_on_the_target(cluster):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    cluster.seal(b)  # another keyslot of the same VM already on the target
    cluster.export(a, b)
    cluster.carry(a, b)
    before = b.files()
    with pytest.raises(VerificationError, match="already has other sealed state"):
        cluster.import_(b)
    assert b.files() == before


def test_target_equal_to_source_is_refused(cluster):
    a, _b, _c = cluster.nodes
    cluster.seal(a)
    with pytest.raises(InputError, match="cannot migrate to the node it is on"):
        cluster.export(a, a)


# ------------------------------------------------------------- the bundle against the manifest


def _signed_manifest(node: Node):
    statement = payload.with_policy(
        payload.make_statement(
            describe_vm(node.state_dir, *VM),
            vmid=VM[0],
            vm_uuid=VM[1],
            vm_ctime=None,
            cluster="lab",
            node_name=node.name,
            node_id=node.vm().keyslot().node_name,
        ),
        payload.RecordedPolicy(migratable=True, pcrs=None),
    )
    manifest = payload.new_manifest(
        statement, version=1, prev=None, issued_at=NOW - timedelta(days=1), expires=NOW + timedelta(days=30)
    )
    envelope = dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, [ROOT_KEY])
    root = trust_root.new_root([ROOT_KEY], 1, issued_at=NOW - timedelta(days=2), expires=NOW + timedelta(days=300))
    return envelope, root


@pytest.mark.parametrize("attack", ["none", "other-blob-set", "other-manifest"])
def test_bundle_is_checked_against_the_manifest_it_was_exported_from(cluster, attack):
    a, b, _c = cluster.nodes
    cluster.seal(a)
    envelope, root = _signed_manifest(a)
    if attack == "other-blob-set":
        cluster.seal(a, secrets={**SECRETS, "api-token": b"changed after the manifest"})
    manifest_ref = {"version": 1, "digest": envelope_digest(envelope)}
    if attack == "other-manifest":
        manifest_ref = {"version": 1, "digest": "cd" * 32}
    transfer.export_vm(
        a.backend,
        a.vm(),
        cluster.grant(a, b),
        migration=MIGRATION,
        manifest=manifest_ref,
        path=bundle_at(a),
        now=NOW,
        check_mode=False,
    )
    cluster.carry(a, b)

    def check(bundle):
        verify_bundle(
            b.state_dir,
            bundle,
            envelope=envelope,
            offered_roots=[root],
            floor=None,
            cluster="lab",
            vm_ctime=None,
            now=NOW,
        )

    if attack == "none":
        assert cluster.import_(b, verify=check)["status"] == "imported"
        return
    with pytest.raises(
        VerificationError, match="swapped or altered" if attack == "other-blob-set" else "exported from"
    ):
        cluster.import_(b, verify=check)
    assert not os.path.exists(b.vm().path)


def test_no_refusal_is_a_crash(cluster):
    """Every refusal above is a collection error with a message, never a bare exception."""
    a, b, _c = cluster.nodes
    with pytest.raises(IronclawError, match="no sealed state"):
        cluster.export(a, b)
    with pytest.raises(IronclawError, match="no transfer bundle"):
        cluster.import_(b)
