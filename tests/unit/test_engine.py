# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sealing engine on real backends: one test per attack or fault.

Most tests run twice, against a fresh swtpm (backend tpm2) and against the
software backend; the result must be the same whichever protects the VRK.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    BackendError,
    FormatError,
    InputError,
    IronclawError,
    LockError,
    PolicyError,
    TpmError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import parse_blob
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_approval
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from rig.manifest import CLUSTER, Ledger
from rig.manifest import NOW as LEDGER_NOW

VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_VMID = 101
OTHER_UUID = "0f0e0d0c-0b0a-4909-8807-0605040302ab"
BIG = os.urandom(64 * 1024)
SECRETS = {"a": b"alpha", "big": BIG, "c": b""}

BACKENDS = [pytest.param("tpm2", marks=pytest.mark.swtpm), "software"]


def unseal_to(backend, vm, dest, **options):
    """engine.unseal_to after the controller signed and cached a manifest of the VM's files as they are (what the
    engine checks after the manifest is the subject here; tests/unit/test_node_authority.py attacks the manifest)."""
    with contextlib.suppress(IronclawError):  # files that do not even describe: the cached manifest stays
        publish(vm)
    return engine.unseal_to(backend, vm, dest, cluster=CLUSTER, vm_ctime=None, now=LEDGER_NOW, **options)


LEDGERS: dict[str, Ledger] = {}


def publish(vm: VmDir) -> None:
    LEDGERS.setdefault(vm.state_dir, Ledger()).publish(
        vm.state_dir, vm.vmid, vm.vm_uuid, "node", vm.keyslot().node_name
    )


def secrets(values: dict[str, bytes] | None = None) -> list[engine.Secret]:
    values = SECRETS if values is None else values
    return [engine.Secret(name, data) for name, data in values.items()]


def snapshot(root) -> dict:
    """Every file under root: bytes, mode, inode and mtime (an atomic rewrite changes the inode)."""
    out = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (
                Path(path).read_bytes(),
                stat.S_IMODE(st.st_mode),
                st.st_ino,
                st.st_mtime_ns,
            )
    return out


def flip(path, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x01
    Path(path).write_bytes(data)


class Node:
    """One provisioned node (tpm2 on a swtpm, or software) and a controller holding the VMs' policy keys."""

    def __init__(self, kind: str, tcti: str | None, root):
        self.kind = kind
        self.tcti = tcti
        self.state_dir = str(root / "state")
        self.keys = PolicyKeyStore(str(root / "controller"))
        self.attacker_keys = PolicyKeyStore(str(root / "attacker"))
        for vmid, uuid in ((VMID, UUID), (OTHER_VMID, OTHER_UUID)):
            self.keys.create(vmid, uuid)
        self.attacker_keys.create(VMID, UUID)
        self.backend = self.open()
        self.backend.provision()

    def open(self):
        return open_backend(self.kind, tcti=self.tcti, state_dir=self.state_dir)

    def close(self) -> None:
        self.backend.close()

    def vm(self, vmid: int = VMID, uuid: str = UUID) -> VmDir:
        return VmDir(self.state_dir, vmid, uuid)

    def approval(self, vmid: int = VMID, uuid: str = UUID, *, store=None, backend=None):
        facts = (backend or self.backend).facts()
        return sign_approval(
            (store or self.keys).load(vmid, uuid),
            vmid=vmid,
            vm_uuid=uuid,
            node_name=facts.node_name,
            epoch_nv_name=facts.epoch_nv_name,
            epoch=facts.epoch,
        )

    def seal(self, values=None, vmid=VMID, uuid=UUID, *, check_mode=False, backend=None, approval=None):
        key_public, _name = self.keys.public(vmid, uuid)
        result = engine.seal(
            backend or self.backend,
            self.vm(vmid, uuid),
            secrets(values),
            migratable=True,
            pcrs=None,
            policy_key_public=key_public,
            approval=approval or self.approval(vmid, uuid, backend=backend),
            check_mode=check_mode,
        )
        return result


@pytest.fixture(params=BACKENDS)
def node(request, tmp_path):
    tcti = request.getfixturevalue("swtpm").tcti if request.param == "tpm2" else None
    node = Node(request.param, tcti, tmp_path)
    yield node
    node.close()


@pytest.fixture
def sealed(node):
    """VM 100 sealed with SECRETS."""
    node.seal()
    return node


def blob_ok(result: dict) -> dict[str, bool]:
    return {b["name"]: b["ok"] for b in result["blobs"]}


def blob_error(result: dict, name: str) -> str:
    return next(b["error"] for b in result["blobs"] if b["name"] == name)


# ---------------------------------------------------------------- seal, verify, unseal


def test_seal_verify_unseal_round_trip(node, tmp_path):
    result = node.seal()
    assert result["changed"] is True
    assert result["keyslot"]["action"] == "created"
    assert [(b["name"], b["generation"], b["action"]) for b in result["blobs"]] == [
        ("a", 1, "created"),
        ("big", 1, "created"),
        ("c", 1, "created"),
    ]
    vm = node.vm()
    assert sorted(os.listdir(vm.path)) == ["a.sealed", "approval.json", "big.sealed", "c.sealed", "keyslot.json"]
    assert stat.S_IMODE(os.stat(vm.path).st_mode) == 0o700
    for name in os.listdir(vm.path):
        assert stat.S_IMODE(os.stat(os.path.join(vm.path, name)).st_mode) == 0o600, name
        assert BIG not in Path(os.path.join(vm.path, name)).read_bytes()

    verified = engine.verify(node.backend, vm)
    assert verified["verified"] is True
    assert verified["failed"] == []
    assert [(b["name"], b["ok"], b["size"], b["generation"]) for b in verified["blobs"]] == [
        ("a", True, 5, 1),
        ("big", True, 65536, 1),
        ("c", True, 0, 1),
    ]

    dest = str(tmp_path / "out")
    unsealed = unseal_to(node.backend, vm, dest, check_mode=False)
    assert unsealed["changed"] is True
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    assert sorted(os.listdir(dest)) == ["a", "big", "c"]
    for name, data in SECRETS.items():
        path = os.path.join(dest, name)
        assert Path(path).read_bytes() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # Unsealing again finds every file already right.
    again = unseal_to(node.backend, vm, dest, check_mode=False)
    assert again["changed"] is False
    assert {f["action"] for f in again["files"]} == {"unchanged"}


def test_seal_results_never_carry_secret_bytes(sealed):
    result = sealed.seal()
    verified = engine.verify(sealed.backend, sealed.vm())
    for doc in (result, verified):
        text = repr(doc).encode()
        assert b"alpha" not in text
        assert BIG[:32].hex().encode() not in text


def test_sealing_the_same_secrets_again_changes_nothing(sealed):
    vm = sealed.vm()
    before = snapshot(vm.path)
    time.sleep(0.01)
    result = sealed.seal()  # with a freshly signed approval, as every run makes one
    assert result["changed"] is False
    assert result["approval_installed"] is False
    assert result["keyslot"]["action"] == "unchanged"
    assert {b["action"] for b in result["blobs"]} == {"unchanged"}
    assert snapshot(vm.path) == before


def test_changed_secret_reseals_only_its_blob_with_next_generation(sealed, tmp_path):
    vm = sealed.vm()
    before = snapshot(vm.path)
    result = sealed.seal({**SECRETS, "a": b"alpha-2"})
    assert result["changed"] is True
    assert [(b["name"], b["generation"], b["action"]) for b in result["blobs"]] == [
        ("a", 2, "resealed"),
        ("big", 1, "unchanged"),
        ("c", 1, "unchanged"),
    ]
    after = snapshot(vm.path)
    assert after["a.sealed"][0] != before["a.sealed"][0]
    assert parse_blob(after["a.sealed"][0], "a").header.generation == 2
    for name in ("big.sealed", "c.sealed", "keyslot.json", "approval.json"):
        assert after[name] == before[name], name
    unseal_to(sealed.backend, vm, str(tmp_path / "out"), check_mode=False)
    assert (tmp_path / "out" / "a").read_bytes() == b"alpha-2"


def test_new_secret_is_added_beside_the_existing_ones(sealed):
    vm = sealed.vm()
    before = snapshot(vm.path)
    result = sealed.seal({**SECRETS, "d": b"delta"})
    assert [(b["name"], b["action"]) for b in result["blobs"]][-1] == ("d", "created")
    after = snapshot(vm.path)
    assert set(after) == set(before) | {"d.sealed"}
    assert all(after[name] == before[name] for name in before)


def test_check_mode_on_a_fresh_vm_creates_nothing(node):
    before = snapshot(node.state_dir)
    result = node.seal(check_mode=True)
    assert result["changed"] is True
    assert result["keyslot"]["action"] == "created"
    assert {b["action"] for b in result["blobs"]} == {"created"}
    assert not os.path.exists(node.vm().path)
    assert snapshot(node.state_dir) == before


def test_check_mode_reports_a_reseal_but_writes_nothing(sealed):
    vm = sealed.vm()
    before = snapshot(vm.path)
    result = sealed.seal({**SECRETS, "a": b"alpha-2", "d": b"new"}, check_mode=True)
    assert result["changed"] is True
    assert [(b["name"], b["generation"], b["action"]) for b in result["blobs"]] == [
        ("a", 2, "resealed"),
        ("big", 1, "unchanged"),
        ("c", 1, "unchanged"),
        ("d", 1, "created"),
    ]
    assert snapshot(vm.path) == before


def test_check_mode_unseal_writes_nothing(sealed, tmp_path):
    dest = tmp_path / "out"
    result = unseal_to(sealed.backend, sealed.vm(), str(dest), check_mode=True)
    assert result["changed"] is True
    assert {f["action"] for f in result["files"]} == {"written"}
    assert not dest.exists()


# ---------------------------------------------------------------- tampered, swapped and damaged files


def _offset(path, region: str) -> int:
    parsed = parse_blob(Path(path).read_bytes(), "blob")
    aad, nonce = len(parsed.aad), len(parsed.nonce)
    return {
        "header": aad // 2,
        "nonce": aad + nonce // 2,
        "ciphertext": aad + nonce + len(parsed.ciphertext) // 2,
        "tag": aad + nonce + len(parsed.ciphertext) - 1,
    }[region]


@pytest.mark.parametrize("region", ["header", "nonce", "ciphertext", "tag"])
def test_tampered_byte_fails_only_that_blob(sealed, region, tmp_path):
    vm = sealed.vm()
    publish(vm)  # the state as sealed; a header that no longer parses cannot be described for a new manifest
    path = vm.blob_path("big")
    flip(path, _offset(path, region))
    result = engine.verify(sealed.backend, vm)
    assert result["verified"] is False
    assert result["failed"] == ["big"]
    assert blob_ok(result) == {"a": True, "big": False, "c": True}
    assert "blob 'big' of VM 100" in blob_error(result, "big")
    with pytest.raises(InputError if region != "header" else FormatError, match="blob 'big' of VM 100"):
        unseal_to(sealed.backend, vm, str(tmp_path / "out"), check_mode=False)
    assert not (tmp_path / "out").exists()


def test_tampered_blob_refuses_reseal_and_keeps_the_evidence(sealed):
    vm = sealed.vm()
    path = vm.blob_path("a")
    flip(path, _offset(path, "ciphertext"))
    before = snapshot(vm.path)
    with pytest.raises(VerificationError, match="Move the file aside"):
        sealed.seal()
    assert snapshot(vm.path) == before


def test_truncated_blob_fails_verification(sealed):
    vm = sealed.vm()
    path = vm.blob_path("big")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-1])
    result = engine.verify(sealed.backend, vm)
    assert result["failed"] == ["big"]
    assert "truncated" in blob_error(result, "big")


def test_blob_with_trailing_bytes_fails_verification(sealed):
    vm = sealed.vm()
    path = vm.blob_path("a")
    with open(path, "ab") as fh:
        fh.write(b"\0")
    result = engine.verify(sealed.backend, vm)
    assert result["failed"] == ["a"]
    assert "trailing bytes" in blob_error(result, "a")


def test_blob_of_another_vm_is_refused_naming_that_vm(sealed, tmp_path):
    sealed.seal(vmid=OTHER_VMID, uuid=OTHER_UUID)
    vm = sealed.vm()
    shutil.copyfile(sealed.vm(OTHER_VMID, OTHER_UUID).blob_path("a"), vm.blob_path("a"))
    result = engine.verify(sealed.backend, vm)
    assert result["failed"] == ["a"]
    assert "belongs to VM 101" in blob_error(result, "a")
    with pytest.raises(InputError, match="belongs to VM 101"):
        unseal_to(sealed.backend, vm, str(tmp_path / "out"), check_mode=False)


def test_blob_renamed_to_another_secret_is_refused(sealed):
    vm = sealed.vm()
    os.replace(vm.blob_path("a"), vm.blob_path("c"))
    result = engine.verify(sealed.backend, vm)
    assert blob_ok(result) == {"big": True, "c": False}
    assert "holds secret 'a', not 'c'" in blob_error(result, "c")


def _rewrite_keyslot_json(path, change) -> None:
    doc = canonical.loads(Path(path).read_bytes(), "keyslot")
    change(doc)
    Path(path).write_bytes(canonical.dumps(doc))


@pytest.mark.parametrize(
    ("fault", "damage", "message"),
    [
        ("truncated", lambda data: data[:-7], "not valid JSON"),
        ("trailing_byte", lambda data: data + b"\n", "not canonical"),
        ("not_canonical", lambda data: data.replace(b'":', b'": ', 1), "not canonical"),
        ("byte_flipped_in_sealed_key", None, "malformed base64"),
    ],
)
def test_damaged_keyslot_is_a_format_error(sealed, fault, damage, message):
    vm = sealed.vm()
    data = Path(vm.keyslot_path).read_bytes()
    if damage is None:
        # Flip one base64 character of the sealed VRK into one that cannot be there.
        field = b'"sealed":{'
        at = data.index(field) + len(field)
        at = data.index(b':"', at) + 2
        data = data[:at] + b"!" + data[at + 1 :]
    else:
        data = damage(data)
    Path(vm.keyslot_path).write_bytes(data)
    with pytest.raises(FormatError, match=message):
        engine.verify(sealed.backend, vm)


@pytest.mark.parametrize(
    ("fault", "change", "message"),
    [
        ("unknown_field", lambda doc: doc.update(extra=1), "extra"),
        (
            "policy_ref_of_another_vm",
            lambda doc: doc["policy"].update(policy_ref=f"ironclaw:vm:{OTHER_UUID}"),
            "policy_ref",
        ),
        ("unknown_backend", lambda doc: doc.update(backend="hsm"), "unknown backend"),
        ("migratable_as_integer", lambda doc: doc.update(migratable=1), "migratable"),
    ],
)
def test_tampered_keyslot_field_is_a_format_error(sealed, fault, change, message):
    vm = sealed.vm()
    _rewrite_keyslot_json(vm.keyslot_path, change)
    with pytest.raises(FormatError, match=message):
        engine.verify(sealed.backend, vm)


def test_keyslot_of_another_vm_copied_in_is_refused(sealed):
    sealed.seal(vmid=OTHER_VMID, uuid=OTHER_UUID)
    vm = sealed.vm()
    shutil.copyfile(sealed.vm(OTHER_VMID, OTHER_UUID).keyslot_path, vm.keyslot_path)
    with pytest.raises(InputError, match=r"belongs to VM 101 \(" + OTHER_UUID):
        engine.verify(sealed.backend, vm)


def test_keyslot_of_another_vm_relabelled_for_this_vm_does_not_unseal(sealed):
    """VM 101's keyslot copied in with its vmid/uuid rewritten, and an approval from VM 101's key for VM 100."""
    sealed.seal(vmid=OTHER_VMID, uuid=OTHER_UUID)
    vm = sealed.vm()
    other = sealed.vm(OTHER_VMID, OTHER_UUID).keyslot()
    Path(vm.keyslot_path).write_bytes(dataclasses.replace(other, vmid=VMID, vm_uuid=UUID).to_bytes())
    with pytest.raises(PolicyError, match="unknown policy key"):
        engine.verify(sealed.backend, vm)
    facts = sealed.backend.facts()
    forged = sign_approval(
        sealed.keys.load(OTHER_VMID, OTHER_UUID),
        vmid=VMID,
        vm_uuid=UUID,
        node_name=facts.node_name,
        epoch_nv_name=facts.epoch_nv_name,
        epoch=facts.epoch,
    )
    # tpm2: the object's authPolicy names VM 101's policyRef; software: the wrap is bound to VM 101.
    expected = {"tpm2": (PolicyError, "keyslot.json was altered"), "software": (VerificationError, "failed to unwrap")}
    error, message = expected[sealed.kind]
    with pytest.raises(error, match=message):
        engine.verify(sealed.backend, vm, approval=forged)


def test_tampered_approval_signature_is_refused(sealed):
    vm = sealed.vm()
    installed = vm.approval()
    s = bytearray(installed.signature_s)
    s[-1] ^= 0x01
    Path(vm.approval_path).write_bytes(dataclasses.replace(installed, signature_s=bytes(s)).to_bytes())
    with pytest.raises(PolicyError, match="signature is not valid"):
        engine.verify(sealed.backend, vm)


def test_approval_with_edited_epoch_is_refused(sealed):
    vm = sealed.vm()
    installed = vm.approval()
    Path(vm.approval_path).write_bytes(dataclasses.replace(installed, epoch=installed.epoch + 1).to_bytes())
    # software compares the epoch with the node's; tpm2 leaves that to the TPM but the signed policy differs.
    message = {"software": "approval is for epoch 2 but this node is at epoch 1", "tpm2": "signed policy is not"}
    with pytest.raises(PolicyError, match=message[sealed.kind]):
        engine.verify(sealed.backend, vm)


def test_garbled_approval_file_is_refused(sealed):
    vm = sealed.vm()
    data = Path(vm.approval_path).read_bytes()
    Path(vm.approval_path).write_bytes(data[:-1])
    with pytest.raises(FormatError, match="approval"):
        engine.verify(sealed.backend, vm)


def test_missing_approval_is_refused_with_what_to_do(sealed):
    vm = sealed.vm()
    os.unlink(vm.approval_path)
    with pytest.raises(InputError, match="no approval was given and none is installed"):
        engine.verify(sealed.backend, vm)


# ---------------------------------------------------------------- unseal_to destinations


def test_unseal_refuses_a_dest_that_is_a_symlink(sealed, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    dest = tmp_path / "out"
    dest.symlink_to(target)
    with pytest.raises(InputError, match="is a symlink"):
        unseal_to(sealed.backend, sealed.vm(), str(dest), check_mode=False)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "c"])
def test_unseal_refuses_a_dest_file_that_is_a_symlink_and_writes_nothing(sealed, tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    dest = tmp_path / "out"
    dest.mkdir(mode=0o700)
    (dest / name).symlink_to(victim)
    with pytest.raises(InputError, match=f"{dest / name} exists and is not a regular file"):
        unseal_to(sealed.backend, sealed.vm(), str(dest), check_mode=False)
    assert victim.read_bytes() == b"keep me"
    assert sorted(os.listdir(dest)) == [name]
    assert (dest / name).is_symlink()


def test_unseal_writes_only_the_named_secrets(sealed, tmp_path):
    dest = tmp_path / "out"
    result = unseal_to(sealed.backend, sealed.vm(), str(dest), names=["big"], check_mode=False)
    assert [f["name"] for f in result["files"]] == ["big"]
    assert sorted(os.listdir(dest)) == ["big"]
    assert (dest / "big").read_bytes() == BIG


def test_unseal_of_an_unknown_name_is_an_input_error(sealed, tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(InputError, match="no sealed secret named nope"):
        unseal_to(sealed.backend, sealed.vm(), str(dest), names=["a", "nope"], check_mode=False)
    assert not dest.exists()


def test_unseal_replaces_a_stale_file_and_fixes_its_mode(sealed, tmp_path):
    dest = tmp_path / "out"
    unseal_to(sealed.backend, sealed.vm(), str(dest), check_mode=False)
    (dest / "a").write_bytes(b"stale")
    os.chmod(dest / "c", 0o644)
    result = unseal_to(sealed.backend, sealed.vm(), str(dest), check_mode=False)
    assert {f["name"]: f["action"] for f in result["files"]} == {"a": "written", "big": "unchanged", "c": "written"}
    assert (dest / "a").read_bytes() == b"alpha"
    assert stat.S_IMODE(os.stat(dest / "c").st_mode) == 0o600


# ---------------------------------------------------------------- secrets input


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.bin"
    path.write_bytes(b"from a file")
    return str(path)


def test_load_secrets_reads_each_kind_of_source(src):
    loaded = engine.load_secrets(
        [{"name": "f", "src": src}, {"name": "t", "content": "tëxt"}, {"name": "b", "content_base64": "AAEC"}]
    )
    assert [(s.name, s.data) for s in loaded] == [("f", b"from a file"), ("t", "tëxt".encode()), ("b", b"\0\1\2")]


# {src}: a regular file, {link}: a symlink to it, {dir}: a directory, {missing}: no file.
BAD_SECRETS = {
    "missing_src": (
        [{"name": "m", "src": "{missing}"}],
        InputError,
        "secret 'm': source file {missing} does not exist",
    ),
    "src_and_content": ([{"name": "x", "src": "{src}", "content": "y"}], InputError, "exactly one of src, content"),
    "no_source": ([{"name": "x"}], InputError, "exactly one of src, content"),
    "duplicate_name": (
        [{"name": "x", "content": "1"}, {"name": "x", "content": "2"}],
        InputError,
        "'x' is listed twice",
    ),
    "dotdot_name": ([{"name": "../x", "content": "1"}], InputError, "secret name must"),
    "hidden_name": ([{"name": ".hidden", "content": "1"}], InputError, "secret name must"),
    "slash_name": ([{"name": "a/b", "content": "1"}], InputError, "secret name must"),
    "src_is_symlink": ([{"name": "l", "src": "{link}"}], IronclawError, "{link}\\) is a symlink"),
    "src_is_directory": ([{"name": "d", "src": "{dir}"}], IronclawError, "not a regular file"),
    "bad_base64": ([{"name": "b", "content_base64": "!!"}], IronclawError, "malformed base64"),
}


@pytest.mark.parametrize("case", sorted(BAD_SECRETS))
@pytest.mark.parametrize("node", ["software"], indirect=True)
def test_bad_secrets_input_is_refused_before_the_node_is_touched(node, tmp_path, src, case):
    node.seal()
    before = snapshot(node.state_dir)
    paths = {"src": src, "link": str(tmp_path / "link"), "dir": str(tmp_path), "missing": str(tmp_path / "nothing")}
    os.symlink(src, paths["link"])
    items, error, message = BAD_SECRETS[case]
    items = [{k: v.format(**paths) for k, v in item.items()} for item in items]
    message = message.format(**{k: re.escape(v) for k, v in paths.items()})
    # A good entry first: nothing of it may be sealed either.
    with pytest.raises(error, match=message):
        node.seal({s.name: s.data for s in engine.load_secrets([{"name": "ok", "content": "fine"}, *items])})
    assert snapshot(node.state_dir) == before


# ---------------------------------------------------------------- approvals and policy keys


def test_approval_for_another_vm_is_refused(sealed):
    vm = sealed.vm()
    before = snapshot(vm.path)
    other = sealed.approval(OTHER_VMID, OTHER_UUID)
    with pytest.raises(PolicyError, match=f"approval is for VM 101 \\({OTHER_UUID}\\), not VM 100"):
        engine.verify(sealed.backend, vm, approval=other)
    with pytest.raises(PolicyError, match="approval is for VM 101"):
        engine.install_approval(sealed.backend, vm, other, check_mode=False)
    with pytest.raises(PolicyError, match="approval is for VM 101"):
        engine.seal(
            sealed.backend,
            vm,
            secrets({**SECRETS, "a": b"changed"}),
            migratable=True,
            pcrs=None,
            policy_key_public=None,
            approval=other,
            check_mode=False,
        )
    assert snapshot(vm.path) == before


def test_approval_signed_by_an_unknown_policy_key_is_refused(sealed):
    vm = sealed.vm()
    before = snapshot(vm.path)
    forged = sealed.approval(store=sealed.attacker_keys)
    with pytest.raises(PolicyError, match="unknown policy key"):
        engine.verify(sealed.backend, vm, approval=forged)
    with pytest.raises(PolicyError, match="unknown policy key"):
        engine.install_approval(sealed.backend, vm, forged, check_mode=False)
    assert snapshot(vm.path) == before


def test_sealing_with_another_policy_key_is_refused(sealed):
    attacker_public, _name = sealed.attacker_keys.public(VMID, UUID)
    vm = sealed.vm()
    before = snapshot(vm.path)
    with pytest.raises(PolicyError, match="unknown policy key"):
        engine.seal(
            sealed.backend,
            vm,
            secrets(),
            migratable=True,
            pcrs=None,
            policy_key_public=attacker_public,
            approval=sealed.approval(store=sealed.attacker_keys),
            check_mode=False,
        )
    assert snapshot(vm.path) == before


def test_keyslot_with_swapped_policy_key_does_not_unseal(sealed):
    """Put one's own policy key into keyslot.json and sign one's own approval: the VRK stays sealed."""
    vm = sealed.vm()
    attacker_public, attacker_name = sealed.attacker_keys.public(VMID, UUID)
    swapped = dataclasses.replace(vm.keyslot(), policy_key_public=attacker_public, policy_key_name=attacker_name)
    Path(vm.keyslot_path).write_bytes(swapped.to_bytes())
    forged = sealed.approval(store=sealed.attacker_keys)
    # The approval matches the keyslot (which now names the attacker's key); what protects the VRK is
    # the TPM object's authPolicy (tpm2, checked in software first, then by the TPM itself: see
    # test_tpm_backend) or the key binding of the wrap (software).
    expected = {
        "tpm2": (PolicyError, "keyslot.json was altered"),
        "software": (VerificationError, "failed to unwrap"),
    }
    error, message = expected[sealed.kind]
    with pytest.raises(error, match=message):
        engine.verify(sealed.backend, vm, approval=forged)
    # The genuine approval no longer matches the keyslot's (swapped) key either.
    with pytest.raises(PolicyError, match="unknown policy key"):
        engine.verify(sealed.backend, vm)


def test_install_approval_is_idempotent_and_respects_check_mode(sealed):
    vm = sealed.vm()
    assert engine.install_approval(sealed.backend, vm, sealed.approval(), check_mode=False)["changed"] is False
    before = snapshot(vm.path)
    sealed.backend.bump_epoch()
    fresh = sealed.approval()
    assert engine.install_approval(sealed.backend, vm, fresh, check_mode=True)["changed"] is True
    assert snapshot(vm.path)["approval.json"] == before["approval.json"]
    assert engine.install_approval(sealed.backend, vm, fresh, check_mode=False) == {
        "changed": True,
        "epoch": fresh.epoch,
    }
    assert vm.approval().epoch == fresh.epoch


@pytest.mark.swtpm
def test_approval_for_another_node_at_the_same_epoch_is_refused(swtpm_pair, tmp_path):
    """Epoch NV names and values collide across nodes: the approval must still be bound to one SRK."""
    a = Node("tpm2", swtpm_pair[0].tcti, tmp_path / "a")
    b = open_backend("tpm2", tcti=swtpm_pair[1].tcti, state_dir=str(tmp_path / "b"))
    try:
        b.provision()
        a.seal()
        facts_a, facts_b = a.backend.facts(), b.facts()
        assert facts_a.epoch_nv_name == facts_b.epoch_nv_name
        assert facts_a.epoch == facts_b.epoch
        for_b = a.approval(backend=b)
        vm = a.vm()
        with pytest.raises(PolicyError, match="approvals are bound to one node's SRK"):
            engine.verify(a.backend, vm, approval=for_b)
        # Skip the software check: the TPM itself must refuse (PolicySecret names A's SRK).
        keyslot = vm.keyslot()
        a.backend.check_approval = lambda *_args, **_kw: None
        with pytest.raises(TpmError, match="authorizing the policy"):
            a.backend.unseal(keyslot, for_b)
    finally:
        b.close()
        a.close()


# ---------------------------------------------------------------- epoch bump (revocation)


def test_epoch_bump_revokes_the_installed_approval(sealed):
    vm = sealed.vm()
    old = sealed.backend.facts().epoch
    new = sealed.backend.bump_epoch()
    assert new == old + 1
    with pytest.raises(PolicyError, match=f"approval is for epoch {old} but this node is at epoch {new}"):
        engine.verify(sealed.backend, vm)
    with pytest.raises(PolicyError, match=f"approval is for epoch {old} but this node is at epoch {new}"):
        engine.seal(
            sealed.backend,
            vm,
            secrets({**SECRETS, "a": b"changed"}),
            migratable=True,
            pcrs=None,
            policy_key_public=None,
            approval=None,
            check_mode=False,
        )


def test_fresh_approval_after_epoch_bump_opens_every_secret(sealed, tmp_path):
    vm = sealed.vm()
    sealed.backend.bump_epoch()
    fresh = sealed.approval()
    assert engine.install_approval(sealed.backend, vm, fresh, check_mode=False)["changed"] is True
    result = engine.verify(sealed.backend, vm)
    assert result["verified"] is True
    assert blob_ok(result) == {"a": True, "big": True, "c": True}
    unseal_to(sealed.backend, vm, str(tmp_path / "out"), check_mode=False)
    assert (tmp_path / "out" / "big").read_bytes() == BIG
    if sealed.kind == "software":
        assert vm.keyslot().sealed.kek_version == fresh.epoch


@pytest.mark.parametrize("node", ["software"], indirect=True)
def test_epoch_bump_kills_a_restored_backup_of_a_software_keyslot(node):
    node.seal()
    vm = node.vm()
    backup = os.path.join(node.state_dir, "backup-100")
    shutil.copytree(vm.path, backup)
    old = node.backend.facts().epoch
    node.backend.bump_epoch()
    shutil.rmtree(vm.path)
    shutil.copytree(backup, vm.path)
    assert vm.keyslot().sealed.kek_version == old
    with pytest.raises(BackendError, match=f"node KEK version {old} is gone"):
        engine.verify(node.backend, vm, approval=node.approval())


@pytest.mark.parametrize("node", [pytest.param("tpm2", marks=pytest.mark.swtpm)], indirect=True)
def test_epoch_bump_revokes_approvals_not_tpm_objects(node):
    """A backup of a tpm2 keyslot taken before the bump still unseals under a FRESH approval.

    The bump revokes approvals; the TPM object is the same, so whoever can get
    the controller to sign for this node again opens the old copy too.
    Decommissioning (policy key destroyed) is what ends that.
    """
    node.seal()
    vm = node.vm()
    backup = os.path.join(node.state_dir, "backup-100")
    shutil.copytree(vm.path, backup)
    node.backend.bump_epoch()
    shutil.rmtree(vm.path)
    shutil.copytree(backup, vm.path)
    with pytest.raises(PolicyError, match="epoch"):
        engine.verify(node.backend, vm)
    result = engine.verify(node.backend, vm, approval=node.approval())
    assert result["verified"] is True


def test_approval_for_a_future_epoch_is_refused(sealed):
    vm = sealed.vm()
    facts = sealed.backend.facts()
    future = sign_approval(
        sealed.keys.load(VMID, UUID),
        vmid=VMID,
        vm_uuid=UUID,
        node_name=facts.node_name,
        epoch_nv_name=facts.epoch_nv_name,
        epoch=facts.epoch + 1,
    )
    with pytest.raises(
        PolicyError, match=f"approval is for epoch {facts.epoch + 1} but this node is at epoch {facts.epoch}"
    ):
        engine.verify(sealed.backend, vm, approval=future)


# ---------------------------------------------------------------- TPM command budget


def _count(counted, action) -> dict[str, int]:
    counted.counter.reset()
    action()
    return counted.counter.by_name()


@pytest.mark.swtpm
def test_tpm_work_does_not_grow_with_the_number_of_secrets(counted_swtpm, tmp_path):
    node = Node("tpm2", counted_swtpm.tcti, tmp_path)
    node.close()
    few = {f"s{i}": os.urandom(32) for i in range(3)}
    many = {f"s{i}": os.urandom(32) for i in range(60)}
    uuids = {VMID: UUID, OTHER_VMID: OTHER_UUID}

    def run(action):
        # Each module run opens its own backend: count that too.
        def go():
            with node.open() as backend:
                action(backend)

        return _count(counted_swtpm, go)

    def seal(vmid, values):
        return lambda backend: node.seal(values, vmid, uuids[vmid], backend=backend, approval=approvals[vmid])

    def verify(vmid):
        def go(backend):
            assert engine.verify(backend, node.vm(vmid, uuids[vmid]))["verified"] is True

        return go

    # Approvals are signed outside the counted window: they read facts from the TPM.
    approvals = {}
    for vmid in uuids:
        with node.open() as backend:
            approvals[vmid] = node.approval(vmid, uuids[vmid], backend=backend)

    seal_few, seal_many = run(seal(VMID, few)), run(seal(OTHER_VMID, many))
    assert seal_many == seal_few
    assert seal_few.get("Create") == 1
    assert "Unseal" not in seal_few
    assert sum(seal_few.values()) < 12, seal_few

    verify_few, verify_many = run(verify(VMID)), run(verify(OTHER_VMID))
    assert verify_many == verify_few
    assert verify_few.get("Unseal") == 1
    assert sum(verify_few.values()) < 25, verify_few

    reseal_many = run(seal(OTHER_VMID, {**many, "s7": b"changed"}))
    assert reseal_many == verify_few, "re-sealing one secret costs one unseal, nothing per secret"


# ---------------------------------------------------------------- locks


def _hold(state_dir, key, shared, held: threading.Event, release: threading.Event):
    with locked(state_dir, key, shared=shared):
        held.set()
        release.wait(10)


def _holder(state_dir, key, shared=False):
    held, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold, args=(state_dir, key, shared, held, release), daemon=True)
    thread.start()
    assert held.wait(5)
    return thread, release


def test_vm_lock_held_elsewhere_times_out_with_a_clear_error(tmp_path):
    state_dir = str(tmp_path)
    thread, release = _holder(state_dir, "vm-100")
    started = time.monotonic()
    with pytest.raises(LockError, match=r"vm-100 is locked by another ironclaw run .*vm-100\.lock"):
        with locked(state_dir, "vm-100", timeout=0.5):
            pass
    assert time.monotonic() - started >= 0.5
    # Another VM's lock is independent.
    with locked(state_dir, "vm-101", timeout=0.5):
        pass
    release.set()
    thread.join(5)
    entered = False
    with locked(state_dir, "vm-100", timeout=0.5):
        entered = True
    assert entered
    assert stat.S_IMODE(os.stat(tmp_path / ".locks").st_mode) == 0o700


def test_shared_locks_coexist_and_an_exclusive_one_waits_for_them(tmp_path):
    state_dir = str(tmp_path)
    first, release_first = _holder(state_dir, "node", shared=True)
    second, release_second = _holder(state_dir, "node", shared=True)  # would time out if shared excluded shared

    got_exclusive = threading.Event()

    def exclusive():
        with locked(state_dir, "node", timeout=5):
            got_exclusive.set()

    waiter = threading.Thread(target=exclusive, daemon=True)
    waiter.start()
    assert not got_exclusive.wait(0.4)
    release_first.set()
    first.join(5)
    assert not got_exclusive.wait(0.3)
    release_second.set()
    second.join(5)
    assert got_exclusive.wait(5)
    waiter.join(5)
