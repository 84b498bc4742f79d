# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The software backend: node KEK files, enrollment key, KEK versions as epochs, keyslot binding."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    BackendError,
    InputError,
    PolicyError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import decrypt_blob
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from ansible_collections.ironclaw.sealed.plugins.module_utils._software import keyslot as sw_keyslot
from rig.policy import approve

VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_UUID = "0f0e0d0c-0b0a-4909-8807-0605040302ab"


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def kek_files(state_dir) -> list[str]:
    return sorted(name for name in os.listdir(os.path.join(state_dir, "node")) if name.startswith("kek-"))


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


@pytest.fixture
def backend(state_dir):
    with open_backend("software", tcti=None, state_dir=state_dir) as backend:
        yield backend


@pytest.fixture
def keys(tmp_path):
    store = PolicyKeyStore(str(tmp_path / "controller"))
    store.create(VMID, UUID)
    return store


def approval_for(backend, keys, vmid=VMID, uuid=UUID):
    return approve(keys, vmid, uuid, backend.facts())


def seal(backend, keys, state_dir, values=None):
    vm = VmDir(state_dir, VMID, UUID)
    engine.seal(
        backend,
        vm,
        [engine.Secret(n, d) for n, d in (values or {"a": b"alpha", "b": b"beta"}).items()],
        migratable=True,
        pcrs=None,
        policy_key_public=keys.public(VMID, UUID)[0],
        approval=approval_for(backend, keys),
        check_mode=False,
    )
    return vm


# ---------------------------------------------------------------- provisioning


def test_provision_creates_private_node_state(backend, state_dir):
    facts = backend.facts()
    assert facts.provisioned is False
    assert facts.missing == ["software node state"]
    plan = backend.provision()
    assert len(plan) == 1 and "KEK version 1" in plan[0]
    node = os.path.join(state_dir, "node")
    assert mode(node) == 0o700
    assert sorted(os.listdir(node)) == ["enrollment.key", "kek-1.key", "software.json"]
    for name, size in (("kek-1.key", 32), ("enrollment.key", 32)):
        path = os.path.join(node, name)
        assert mode(path) == 0o600, name
        assert os.path.getsize(path) == size, name
    facts = backend.facts()
    assert facts.provisioned is True
    assert facts.epoch == 1
    assert len(facts.node_name) == 34 and facts.node_name[:2] == b"\x00\x0b"
    assert len(facts.node_public) == 32
    assert facts.node_name != facts.epoch_nv_name


def test_provision_is_idempotent(backend, state_dir):
    backend.provision()
    node = os.path.join(state_dir, "node")
    before = {name: Path(os.path.join(node, name)).read_bytes() for name in os.listdir(node)}
    assert backend.plan_provision() == []
    assert backend.provision() == []
    with open_backend("software", tcti=None, state_dir=state_dir) as again:
        assert again.provision() == []
    assert {name: Path(os.path.join(node, name)).read_bytes() for name in os.listdir(node)} == before


def test_node_name_is_stable_and_differs_between_nodes(backend, state_dir, tmp_path):
    backend.provision()
    name = backend.facts().node_name
    assert backend.facts().node_name == name
    with open_backend("software", tcti=None, state_dir=state_dir) as reopened:
        assert reopened.facts().node_name == name
    with open_backend("software", tcti=None, state_dir=str(tmp_path / "other")) as other:
        other.provision()
        assert other.facts().node_name != name
    backend.bump_epoch()
    assert backend.facts().node_name == name


def test_software_backend_has_no_pcrs(backend):
    backend.provision()
    with pytest.raises(InputError, match="software backend has no PCRs"):
        backend.facts(PcrSelection.parse("sha256:0,7"))


def test_unprovisioned_node_is_a_clear_backend_error(backend):
    with pytest.raises(BackendError, match="not enrolled with backend software"):
        backend.identity()


# ---------------------------------------------------------------- epoch = KEK version


def test_bump_epoch_leaves_exactly_one_kek_of_the_new_version(backend, state_dir, keys):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    old_kek = Path(os.path.join(state_dir, "node", "kek-1.key")).read_bytes()
    assert backend.bump_epoch() == 2
    assert kek_files(state_dir) == ["kek-2.key"]
    new_kek = Path(os.path.join(state_dir, "node", "kek-2.key")).read_bytes()
    assert len(new_kek) == 32 and new_kek != old_kek
    assert mode(os.path.join(state_dir, "node", "kek-2.key")) == 0o600
    assert backend.facts().epoch == 2
    with open_backend("software", tcti=None, state_dir=state_dir) as reopened:
        assert reopened.facts().epoch == 2
    assert vm.keyslot().sealed.kek_version == 2
    assert backend.bump_epoch() == 3
    assert kek_files(state_dir) == ["kek-3.key"]
    assert vm.keyslot().sealed.kek_version == 3


def test_missing_kek_is_a_clear_backend_error(backend, state_dir, keys):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    os.unlink(os.path.join(state_dir, "node", "kek-1.key"))
    with pytest.raises(BackendError, match="node KEK version 1 is gone"):
        engine.verify(backend, vm)
    with pytest.raises(BackendError, match="names KEK version 1, which is missing"):
        backend.plan_provision()


def test_truncated_kek_is_a_clear_backend_error(backend, state_dir, keys):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    path = os.path.join(state_dir, "node", "kek-1.key")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:16])
    with pytest.raises(BackendError, match="has 16 bytes, expected 32"):
        engine.verify(backend, vm)


def test_keyslot_of_another_software_node_is_refused(backend, state_dir, keys, tmp_path):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    other_state = str(tmp_path / "other")
    with open_backend("software", tcti=None, state_dir=other_state) as other:
        other.provision()
        copy = VmDir(other_state, VMID, UUID)
        shutil.copytree(vm.path, copy.path)
        with pytest.raises(PolicyError, match="sealed on \\(or copied from\\) another node"):
            engine.verify(other, copy, approval=approval_for(other, keys))


# ---------------------------------------------------------------- keyslot binding


def test_untouched_software_keyslot_unwraps_to_the_vrk_of_its_blobs(backend, state_dir, keys):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    keyslot = vm.keyslot()
    vrk = sw_keyslot.unwrap_vrk(backend.node.kek(1), keyslot.sealed.wrapped, sw_keyslot.binding_of(keyslot))
    assert decrypt_blob(vrk, vm.read_blob("a"), "a") == b"alpha"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vmid", 101),
        ("vm_uuid", OTHER_UUID),
        ("keyslot_id", "ff" * 16),
        ("policy_key_name", b"\x00\x0b" + bytes(32)),
        ("migratable", False),
        ("node_name", b"\x00\x0b" + bytes(range(32))),
    ],
)
def test_changed_binding_of_a_software_keyslot_does_not_unwrap(backend, state_dir, keys, field, value):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    keyslot = vm.keyslot()
    altered = dataclasses.replace(keyslot, **{field: value})
    assert sw_keyslot.binding_of(altered)[field] == value
    with pytest.raises(VerificationError, match="failed to unwrap: the integrity check did not pass"):
        sw_keyslot.unwrap_vrk(backend.node.kek(1), keyslot.sealed.wrapped, sw_keyslot.binding_of(altered))


def test_keyslot_with_migratable_flipped_does_not_unseal(backend, state_dir, keys):
    """An edit that parses and passes every software check still fails at the unwrap."""
    backend.provision()
    vm = seal(backend, keys, state_dir)
    Path(vm.keyslot_path).write_bytes(dataclasses.replace(vm.keyslot(), migratable=False).to_bytes())
    with pytest.raises(VerificationError, match="software keyslot .*failed to unwrap"):
        engine.verify(backend, vm)


def test_wrapped_vrk_with_a_flipped_byte_does_not_unwrap(backend, state_dir, keys):
    backend.provision()
    vm = seal(backend, keys, state_dir)
    keyslot = vm.keyslot()
    wrapped = bytearray(keyslot.sealed.wrapped)
    wrapped[5] ^= 0x01
    sealed = dataclasses.replace(keyslot.sealed, wrapped=bytes(wrapped))
    Path(vm.keyslot_path).write_bytes(dataclasses.replace(keyslot, sealed=sealed).to_bytes())
    with pytest.raises(VerificationError, match="failed to unwrap"):
        engine.verify(backend, vm)
