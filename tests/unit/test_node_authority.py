"""The node-side rules of DESIGN §7 against real swtpm and real files: revocation never blocks on another VM's bad
keyslot (A11), `unsealed` verifies against the node's cached manifest and floor before it writes (A9), and an import
replaces stale files from the verified bundle (A8)."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_on_node, read_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import parse_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
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
