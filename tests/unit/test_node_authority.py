"""The node-side rules of DESIGN §7 against real swtpm and real files: revocation never blocks on another VM's bad
keyslot (A11), `unsealed` verifies against the node's cached manifest and floor before it writes (A9), and an import
replaces stale files from the verified bundle (A8)."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from datetime import timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    ExpiredError,
    PolicyError,
    RollbackError,
    TpmError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_on_node, read_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import parse_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.bundle_check import verify_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import verify_cached
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from rig.manifest import Ledger
from rig.policy import approve

NOW = "2030-01-01T00:00:00Z"
GONE = (200, "22222222-2222-4222-8222-222222222222")
KEPT = (201, "33333333-3333-4333-8333-333333333333")
BAD = (202, "44444444-4444-4444-8444-444444444444")


class Node:
    """One node (tpm2 on a swtpm, or software) and the controller's policy keys for its VMs."""

    def __init__(self, backend, state_dir: str, keys: PolicyKeyStore):
        self.backend, self.state_dir, self.keys = backend, state_dir, keys

    def vm(self, vm) -> VmDir:
        return VmDir(self.state_dir, *vm)

    def approval(self, vm):
        self.keys.create(*vm)
        return approve(self.keys, *vm, self.backend.facts())

    def seal(self, vm, secrets: dict[str, bytes]):
        approval = self.approval(vm)
        return engine.seal(
            self.backend,
            self.vm(vm),
            [engine.Secret(name, data) for name, data in secrets.items()],
            migratable=True,
            pcrs=None,
            policy_key_public=self.keys.public(*vm)[0],
            approval=approval,
            check_mode=False,
        )

    def opens(self, vm) -> dict[str, bytes]:
        """Every secret of the VM, with a fresh approval for the node's current epoch."""
        approval = self.approval(vm)
        engine.install_approval(self.backend, self.vm(vm), approval, check_mode=False)
        return {name: data for name, _h, data, error in engine.open_all(self.backend, self.vm(vm)) if not error}

    def files(self, vm) -> dict[str, bytes]:
        path = self.vm(vm).path
        return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


@pytest.fixture(params=["tpm2", "software"])
def node(request, tmp_path):
    state_dir = str(tmp_path / "state")
    tcti = request.getfixturevalue("swtpm").tcti if request.param == "tpm2" else None
    backend = open_backend(request.param, tcti=tcti, state_dir=state_dir)
    backend.provision()
    made = Node(backend, state_dir, PolicyKeyStore(str(tmp_path / "controller")))
    for vm in (GONE, KEPT, BAD):
        made.seal(vm, {"a": b"alpha-" + str(vm[0]).encode(), "b": os.urandom(64)})
    yield made
    backend.close()


@pytest.fixture
def software_node(tmp_path):
    state_dir = str(tmp_path / "state")
    backend = open_backend("software", tcti=None, state_dir=state_dir)
    backend.provision()
    made = Node(backend, state_dir, PolicyKeyStore(str(tmp_path / "controller")))
    for vm in (GONE, KEPT, BAD):
        made.seal(vm, {"a": b"alpha-" + str(vm[0]).encode(), "b": os.urandom(64)})
    yield made
    backend.close()


def keks(node: Node) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(node.state_dir, "node", "kek-*.key")))


def destroy(node: Node, vm=GONE, **options):
    return destroy_on_node(node.backend, node.state_dir, *vm, now=NOW, check_mode=options.get("check_mode", False))


# -- A11: revocation never blocks ------------------------------------------------------------------------------


def assert_revoked_despite(node: Node, done: dict, bad_keyslot: str, epoch: int) -> None:
    """GONE revoked under one bump, BAD reported and left out, KEPT carried over and working."""
    assert done["status"] == "destroyed" and node.backend.epoch() == epoch + 1
    assert done["evidence"]["epoch_after"] == epoch + 1 == read_record(node.state_dir, GONE[1])["epoch_after"]
    assert not os.path.exists(node.vm(GONE).path)
    assert [entry["path"] for entry in done["unusable"]] == [bad_keyslot]
    assert [s["vmid"] for s in done["survivors"]] == [KEPT[0]]
    assert node.opens(KEPT)["a"] == b"alpha-201"
    if node.backend.backend == "software":
        assert keks(node) == [f"kek-{epoch + 1}.key"], "the old KEK must be erased"


def test_stale_keyslot_of_another_vm_does_not_block_the_software_epoch_bump(software_node, tmp_path):
    """A copy of VM BAD saved before an epoch bump and put back: wrapped under an erased KEK, it cannot be rewrapped;
    the next revocation (of VM GONE) must still bump, erase the old KEK and remove GONE's files."""
    node = software_node
    saved = tmp_path / "saved-bad"
    shutil.copytree(node.vm(BAD).path, saved)
    destroy(node, BAD)
    shutil.copytree(saved, node.vm(BAD).path)
    stale = node.files(BAD)
    epoch = node.backend.epoch()
    done = destroy(node)
    assert_revoked_despite(node, done, node.vm(BAD).keyslot_path, epoch)
    assert "stale copy" in done["unusable"][0]["reason"]
    assert node.files(BAD) == stale, "the bad keyslot is left as it was (unusable)"


def test_corrupt_wrapping_of_another_vm_does_not_block_the_software_epoch_bump(software_node):
    """VM BAD's keyslot parses but its wrapped key was altered: it does not unwrap, so it is reported, not rewrapped."""
    node = software_node
    keyslot = node.vm(BAD).keyslot()
    wrapped = bytes([keyslot.sealed.wrapped[0] ^ 1]) + keyslot.sealed.wrapped[1:]
    altered = dataclasses.replace(keyslot, sealed=dataclasses.replace(keyslot.sealed, wrapped=wrapped))
    node.vm(BAD).write(node.vm(BAD).keyslot_path, altered.to_bytes())
    epoch = node.backend.epoch()
    done = destroy(node)
    assert_revoked_despite(node, done, node.vm(BAD).keyslot_path, epoch)
    assert parse_keyslot(node.files(BAD)["keyslot.json"], "bad").sealed.kek_version == epoch, "left as it was"


def test_malformed_keyslot_of_another_vm_does_not_block_a_destroy(node):
    """tpm2 and software: a keyslot.json of VM BAD that does not parse at all."""
    with open(node.vm(BAD).keyslot_path, "wb") as fh:
        fh.write(b'{"format": "ironclaw-keyslot/1", "truncated')
    epoch = node.backend.epoch()
    planned = destroy(node, check_mode=True)
    assert planned["status"] == "would-destroy" and [e["path"] for e in planned["unusable"]] == [
        node.vm(BAD).keyslot_path
    ]
    assert node.backend.epoch() == epoch and os.path.exists(node.vm(GONE).keyslot_path)
    done = destroy(node)
    assert_revoked_despite(node, done, node.vm(BAD).keyslot_path, epoch)


class _BumpFails:
    """The node's backend whose epoch bump fails (a TPM that goes away at the worst moment)."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def bump_epoch(self, *_args):
        raise TpmError("the TPM went away (injected)")

    revoke = bump_epoch


def test_files_are_removed_only_after_the_bump_that_revokes_them(node):
    epoch = node.backend.epoch()
    before = node.files(GONE)
    with pytest.raises(TpmError, match="injected"):
        destroy_on_node(_BumpFails(node.backend), node.state_dir, *GONE, now=NOW, check_mode=False)
    assert node.files(GONE) == before, "nothing may be removed before the bump is durable"
    assert read_record(node.state_dir, GONE[1]) is None and node.backend.epoch() == epoch
    # The re-run finishes it.
    done = destroy(node)
    assert done["status"] == "destroyed" and node.backend.epoch() == epoch + 1
    assert not os.path.exists(node.vm(GONE).path)


# -- A9: `unsealed` verifies against the node's cached manifest and floor before it writes ----------------------


@pytest.fixture
def published(node):
    """VM KEPT's state signed and cached on the node as provision leaves it (manifest v1)."""
    node.ledger = Ledger()
    node.publish = lambda vm=KEPT: node.ledger.publish(node.state_dir, *vm, "pve1", node.backend.identity()[0])
    node.publish()
    return node


def unseal(node: Node, dest, vm=KEPT, **options):
    return engine.unseal_to(
        node.backend,
        node.vm(vm),
        str(dest),
        check_mode=False,
        cluster=options.pop("cluster", node.ledger.cluster),
        vm_ctime=None,
        now=options.pop("now", node.ledger.now),
        **options,
    )


def state_of(node: Node) -> dict[str, bytes]:
    """Every file under the node's state directory (VM files, cache, floor records)."""
    out = {}
    for directory, _dirs, names in os.walk(node.state_dir):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                out[path] = fh.read()
    return out


def test_intact_state_unseals_after_its_manifest_verified(published, tmp_path):
    done = unseal(published, tmp_path / "out")
    assert done["manifest_version"] == 1 and done["changed"]
    assert (tmp_path / "out" / "a").read_bytes() == b"alpha-201"


def test_rollback_of_one_blob_restored_from_a_backup_writes_nothing(published, tmp_path):
    """Generation 1 of secret 'a' saved, 'a' resealed (generation 2, manifest v2), the old file put back."""
    node = published
    saved = (tmp_path / "a.sealed.gen1").as_posix()
    shutil.copyfile(node.vm(KEPT).blob_path("a"), saved)
    node.seal(KEPT, {"a": b"alpha-201-rotated"})
    node.publish()
    shutil.copyfile(saved, node.vm(KEPT).blob_path("a"))
    before = state_of(node)
    with pytest.raises(RollbackError, match="blob 'a' is generation 1, the manifest records 2"):
        unseal(node, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written to dest"
    assert state_of(node) == before


def test_rollback_of_the_whole_vm_dir_with_its_old_manifest_is_refused_by_the_floor(published, tmp_path):
    node = published
    saved = tmp_path / "saved"
    shutil.copytree(node.vm(KEPT).path, saved)
    node.seal(KEPT, {"a": b"alpha-201-rotated"})
    node.publish()
    shutil.rmtree(node.vm(KEPT).path)
    shutil.copytree(saved, node.vm(KEPT).path)  # old blobs, old keyslot, old manifest.json: consistent, but old
    before = state_of(node)
    with pytest.raises(RollbackError, match="older than the floor"):
        unseal(node, tmp_path / "out")
    assert not (tmp_path / "out").exists() and state_of(node) == before


@pytest.mark.parametrize("change", ["swapped-blob", "extra-blob", "missing-blob", "altered-keyslot"])
def test_files_that_differ_from_the_cached_manifest_write_nothing(published, tmp_path, change):
    node = published
    vm = node.vm(KEPT)
    if change == "swapped-blob":
        shutil.copyfile(vm.blob_path("b"), vm.blob_path("a"))
    elif change == "extra-blob":
        shutil.copyfile(node.vm(GONE).blob_path("a"), vm.blob_path("z"))
    elif change == "missing-blob":
        os.unlink(vm.blob_path("b"))
    else:
        data = open(vm.keyslot_path, "rb").read().replace(b'"created":"20', b'"created":"19', 1)
        with open(vm.keyslot_path, "wb") as fh:
            fh.write(data)
    with pytest.raises(VerificationError):
        unseal(node, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vm_without_a_cached_manifest_is_refused_saying_how_to_get_one(node, tmp_path):
    node.ledger = Ledger()
    before = state_of(node)
    with pytest.raises(VerificationError, match="no cached manifest.*verify playbook"):
        unseal(node, tmp_path / "out")
    assert not (tmp_path / "out").exists() and state_of(node) == before


def test_expired_cached_manifest_writes_nothing(published, tmp_path):
    with pytest.raises(ExpiredError):
        unseal(published, tmp_path / "out", now=published.ledger.now + timedelta(days=31))
    assert not (tmp_path / "out").exists()


def test_manifest_of_another_cluster_writes_nothing(published, tmp_path):
    with pytest.raises(VerificationError, match="another cluster"):
        unseal(published, tmp_path / "out", cluster="elsewhere")
    assert not (tmp_path / "out").exists()


def test_blob_swapped_after_the_verification_is_not_opened(published):
    """The bytes opened are those the manifest names: a file swapped between the check and the read is refused."""
    node = published
    manifest = verify_cached(
        node.state_dir, vmid=KEPT[0], vm_uuid=KEPT[1], cluster=node.ledger.cluster, vm_ctime=None, now=node.ledger.now
    )
    shutil.copyfile(node.vm(KEPT).blob_path("b"), node.vm(KEPT).blob_path("a"))
    opened = {
        name: (data, error) for name, _h, data, error in engine.open_all(node.backend, node.vm(KEPT), pinned=manifest)
    }
    assert opened["a"][0] is None and "changed since it was verified" in opened["a"][1]
    assert opened["b"][1] is None


# -- A8: the verified bundle is authoritative on import ------------------------------------------------------------

VMX = (300, "55555555-5555-4555-8555-555555555555")


class Pair:
    """Two nodes of one backend (pve1, pve2), one controller: policy keys and the signed chains (ledger)."""

    def __init__(self, kind: str, tctis, tmp_path):
        keys = PolicyKeyStore(str(tmp_path / "controller"))
        self.ledger = Ledger()
        self.nodes = {}
        for index, tcti in enumerate(tctis, 1):
            state_dir = str(tmp_path / f"pve{index}")
            backend = open_backend(kind, tcti=tcti, state_dir=state_dir)
            backend.provision()
            self.nodes[f"pve{index}"] = Node(backend, state_dir, keys)

    def close(self):
        for node in self.nodes.values():
            node.backend.close()

    def publish(self, name: str, migration=None):
        node = self.nodes[name]
        return self.ledger.publish(node.state_dir, *VMX, name, node.backend.identity()[0], migration)

    def export(self, source: str, target: str) -> dict:
        """Export VMX from source for target against the newest manifest, and carry the bundle to the target."""
        src, dst = self.nodes[source], self.nodes[target]
        facts, target_facts = src.backend.facts(), dst.backend.facts()
        grant = sign_grant(
            src.keys.load(*VMX),
            vmid=VMX[0],
            vm_uuid=VMX[1],
            source_name=facts.node_name,
            source_epoch_nv_name=facts.epoch_nv_name,
            epoch=facts.epoch,
            target_name=target_facts.node_name,
            target_public=target_facts.node_public,
        )
        latest = self.ledger.latest(VMX[1])
        migration = {
            "source": source,
            "target": target,
            "not_after": canonical.utc_timestamp(self.ledger.now + timedelta(hours=1)),
        }
        transfer.export_vm(
            src.backend,
            src.vm(VMX),
            grant,
            migration=migration,
            manifest={"version": len(self.ledger.chains[VMX[1]]), "digest": envelope_digest(latest)},
            path=transfer.bundle_path(src.state_dir, *VMX),
            now=self.ledger.now,
            check_mode=False,
        )
        here = transfer.bundle_path(dst.state_dir, *VMX)
        os.makedirs(os.path.dirname(here), exist_ok=True)
        shutil.copyfile(transfer.bundle_path(src.state_dir, *VMX), here)
        transfer.remove_bundle(transfer.bundle_path(src.state_dir, *VMX), check_mode=False)
        return migration

    def import_(self, target: str, *, verified: bool = True, check_mode: bool = False) -> dict:
        dst = self.nodes[target]

        def verify(bundle):
            verify_bundle(
                dst.state_dir,
                bundle,
                envelope=self.ledger.latest(VMX[1]),
                offered_roots=[self.ledger.root],
                floor=None,
                cluster=self.ledger.cluster,
                vm_ctime=None,
                now=self.ledger.now,
            )

        return transfer.import_vm(
            dst.backend,
            dst.vm(VMX),
            dst.approval(VMX),
            path=transfer.bundle_path(dst.state_dir, *VMX),
            now=self.ledger.now,
            check_mode=check_mode,
            verify=verify if verified else None,
        )

    def migrate(self, source: str, target: str) -> dict:
        """The migrate playbook's steps: export, import (verified), record the move, revoke the source."""
        migration = self.export(source, target)
        done = self.import_(target)
        self.publish(target, migration)
        transfer.remove_bundle(transfer.bundle_path(self.nodes[target].state_dir, *VMX), check_mode=False)
        src = self.nodes[source]
        destroy_on_node(src.backend, src.state_dir, *VMX, now=NOW, check_mode=False)
        return done


@pytest.fixture(params=["tpm2", "software"])
def pair(request, tmp_path):
    tctis = [t.tcti for t in request.getfixturevalue("swtpm_pair")] if request.param == "tpm2" else [None, None]
    made = Pair(request.param, tctis, tmp_path)
    made.nodes["pve1"].seal(VMX, {"master": b"secret-v1", "token": b"token-v1"})
    made.publish("pve1")
    yield made
    made.close()


def stale_copy_back_on_pve1(pair: Pair, tmp_path) -> None:
    """pve1's copy saved, VMX migrated to pve2 and its secret rotated there (the newest state), the copy put back."""
    a = pair.nodes["pve1"]
    saved = tmp_path / "backup-of-pve1"
    shutil.copytree(a.vm(VMX).path, saved)
    pair.migrate("pve1", "pve2")
    pair.nodes["pve2"].seal(VMX, {"master": b"secret-v2-newest"})
    pair.publish("pve2")
    shutil.copytree(saved, a.vm(VMX).path)


def test_migrating_back_onto_a_stale_copy_yields_the_newest_secret(pair, tmp_path):
    a, b = pair.nodes["pve1"], pair.nodes["pve2"]
    stale_copy_back_on_pve1(pair, tmp_path)
    pair.export("pve2", "pve1")
    done = pair.import_("pve1")
    assert done["status"] == "imported" and "master.sealed" in done["replaced"]
    assert {r["name"]: r["generation"] for r in done["blobs"]} == {"master": 2, "token": 1}
    opened = {name: data for name, _h, data, _e in engine.open_all(a.backend, a.vm(VMX))}
    assert opened == {"master": b"secret-v2-newest", "token": b"token-v1"}
    # The blobs are B's, byte for byte; the keyslot is bound to this node.
    assert {n: d for n, d in a.files(VMX).items() if n.endswith(".sealed")} == {
        n: d for n, d in b.files(VMX).items() if n.endswith(".sealed")
    }
    assert a.vm(VMX).keyslot().node_name == a.backend.identity()[0]
    # Once the files are the bundle's, a re-run finds them imported.
    again = pair.import_("pve1")
    assert again["status"] == "already-imported" and again["replaced"] == []


def test_stale_copy_without_a_bundle_is_neither_kept_as_imported_nor_approved(pair, tmp_path):
    a = pair.nodes["pve1"]
    stale_copy_back_on_pve1(pair, tmp_path)
    before = a.files(VMX)
    with pytest.raises(VerificationError, match="no transfer bundle .* says it is the VM's current state"):
        pair.import_("pve1")
    assert a.files(VMX) == before, "nothing replaced, no approval installed"
    # The stale copy still has no approval for this node's epoch: it does not open.
    with pytest.raises(PolicyError, match="approval is for epoch 1 but this node is at epoch 2"):
        list(engine.open_all(a.backend, a.vm(VMX)))


def test_unverified_bundle_does_not_replace_stale_state(pair, tmp_path):
    a = pair.nodes["pve1"]
    stale_copy_back_on_pve1(pair, tmp_path)
    pair.export("pve2", "pve1")
    before = a.files(VMX)
    with pytest.raises(VerificationError, match="master.sealed.*differ from the bundle"):
        pair.import_("pve1", verified=False)
    assert a.files(VMX) == before


def test_check_mode_names_what_would_be_replaced_and_changes_nothing(pair, tmp_path):
    a = pair.nodes["pve1"]
    stale_copy_back_on_pve1(pair, tmp_path)
    pair.export("pve2", "pve1")
    before = a.files(VMX)
    planned = pair.import_("pve1", check_mode=True)
    assert planned["status"] == "would-import" and "master.sealed" in planned["replaced"]
    assert a.files(VMX) == before


@pytest.mark.parametrize("change", ["altered-blob", "extra-blob", "missing-blob"])
def test_imported_state_that_differs_from_the_bundle_is_replaced_not_kept(pair, change):
    """Cut short after an import, then a file changed: the re-run does not call it imported; the bundle wins."""
    b = pair.nodes["pve2"]
    pair.export("pve1", "pve2")
    assert pair.import_("pve2")["status"] == "imported"
    vm = b.vm(VMX)
    if change == "altered-blob":
        shutil.copyfile(vm.blob_path("token"), vm.blob_path("master"))
    elif change == "extra-blob":
        shutil.copyfile(vm.blob_path("token"), vm.blob_path("leftover"))
    else:
        os.unlink(vm.blob_path("token"))
    done = pair.import_("pve2")
    assert done["status"] == "imported"
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(vm.path, "*.sealed"))) == [
        "master.sealed",
        "token.sealed",
    ]
    opened = {name: data for name, _h, data, _e in engine.open_all(b.backend, vm)}
    assert opened == {"master": b"secret-v1", "token": b"token-v1"}


def test_corrupt_keyslot_on_the_target_is_replaced_only_by_a_verified_bundle(pair):
    b = pair.nodes["pve2"]
    pair.export("pve1", "pve2")
    vm = b.vm(VMX)
    vm.ensure()
    vm.write(vm.keyslot_path, b'{"format": "not a keyslot"')
    before = b.files(VMX)
    with pytest.raises(VerificationError, match=r"\(keyslot.json, master.sealed, token.sealed differ from the bundle"):
        pair.import_("pve2", verified=False)
    assert b.files(VMX) == before
    done = pair.import_("pve2")
    assert done["status"] == "imported" and done["replaced"] == ["keyslot.json", "master.sealed", "token.sealed"]
    opened = {name: data for name, _h, data, _e in engine.open_all(b.backend, vm)}
    assert opened == {"master": b"secret-v1", "token": b"token-v1"}
