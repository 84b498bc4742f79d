"""The Proxmox pre-start hook on real sealed state: one named test per way a VM's files can be wrong.

A software-backend node seals VM 102 of the recorded cluster (fixtures/pve: pve1,
stopped, uuid and ctime in its config) and caches a signed manifest the way the
verify playbook does; Proxmox answers from the recordings. The hook itself also
runs as the zipapp the installer builds, under Debian's /usr/bin/python3, with
stub qm/pvesh commands that print the same recordings.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shlex
import shutil
import stat
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    ProxmoxError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook import prestart
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.config import (
    HookConfig,
    config_to_bytes,
    parse_config,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.node_record import (
    node_record_path,
    node_record_to_bytes,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import (
    cache_verified,
    verify_on_node,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli, local_node_name
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.hookscript import build_hookscript, hook_modules
from rig.policy import approve

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pve"
DEBIAN_PYTHON = "/usr/bin/python3"
# VM 102 of the recordings: on pve1, stopped, smbios1 uuid (upper case there) and meta ctime.
VMID, UUID, CTIME = 102, "0f0e0d0c-0b0a-4909-8807-0605040302ab", 1725000000
CLUSTER = "lab"
# The zipapp runs as Proxmox runs it, on the real clock; the in-process checks take this one.
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
KEYS = tuple(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32) for n in (1, 2, 3))
VERIFIED = f"VM {VMID}: sealed state verified (manifest v1)"
# argv of the commands vm_info() runs -> the recording that answers it.
ANSWERS = {
    ("pvesh", "get", "/cluster/resources", "--type", "vm", "--output-format", "json"): "pvesh_cluster_resources_vm",
    ("qm", "config", str(VMID), "--current"): "qm_config_102_base64",
    ("qm", "status", str(VMID)): "qm_status_stopped",
}


def recorded(argv) -> tuple[int, str, str]:
    """What Proxmox printed for a command, from fixtures/pve; any other command is a test failure.

    The recordings were made on pve1; the hook asks Proxmox about its own node by
    this host's name, so that name stands in for pve1.
    """
    name = ANSWERS.get((os.path.basename(argv[0]), *argv[1:]))
    assert name is not None, f"unexpected command {argv}"
    rc = json.loads((FIXTURES / "recordings.json").read_text())[name]["rc"]
    out, err = (FIXTURES / f"{name}.{suffix}" for suffix in ("stdout", "stderr"))
    out = out.read_text().replace('"node":"pve1"', f'"node":"{local_node_name()}"') if out.exists() else ""
    return rc, out, err.read_text() if err.exists() else ""


def proxmox() -> ProxmoxCli:
    return ProxmoxCli(recorded)


@dataclasses.dataclass
class Node:
    """pve1 with VM 102 sealed (software backend) and a 2-of-3 trust root cached, as enrollment leaves it."""

    state_dir: str
    backend: object
    policy_keys: PolicyKeyStore
    node_id: bytes
    approval: object
    chain: list = dataclasses.field(default_factory=list)

    @property
    def vm(self) -> VmDir:
        return VmDir(self.state_dir, VMID, UUID)

    def seal(self, secrets: dict[str, bytes]) -> None:
        engine.seal(
            self.backend,
            self.vm,
            [engine.Secret(name, data) for name, data in secrets.items()],
            migratable=True,
            pcrs=None,
            policy_key_public=self.policy_keys.public(VMID, UUID)[0],
            approval=self.approval,
            check_mode=False,
        )

    def publish(self, *, expires: datetime = NOW + 30 * DAY) -> dsse.Envelope:
        """Sign the next manifest of the VM's current files, verify it on the node and cache it (provision does)."""
        statement = payload.with_policy(
            payload.make_statement(
                describe_vm(self.state_dir, VMID, UUID),
                vmid=VMID,
                vm_uuid=UUID,
                vm_ctime=CTIME,
                cluster=CLUSTER,
                node_name="pve1",
                node_id=self.node_id,
            ),
            payload.RecordedPolicy(migratable=True, pcrs=None),
        )
        prev = envelope_digest(self.chain[-1]) if self.chain else None
        manifest = payload.new_manifest(
            statement, version=len(self.chain) + 1, prev=prev, issued_at=NOW - DAY, expires=expires
        )
        envelope = dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, KEYS[:2])
        verify_on_node(
            self.state_dir,
            vmid=VMID,
            vm_uuid=UUID,
            cluster=CLUSTER,
            vm_ctime=CTIME,
            envelope=envelope,
            offered_roots=[],
            floor=None,
            now=NOW,
        )
        assert cache_verified(self.state_dir, VMID, envelope, []) is True
        self.chain.append(envelope)
        return envelope

    def check(self, now: datetime = NOW) -> str:
        return prestart.check_start(self.state_dir, VMID, CLUSTER, now, proxmox())


@pytest.fixture
def node(tmp_path):
    state_dir = str(tmp_path / "state")
    backend = open_backend("software", tcti=None, state_dir=state_dir)
    try:
        backend.provision()
        facts = backend.facts()
        NodeCache(state_dir).add_roots(
            [trust_root.new_root(KEYS, 2, issued_at=NOW - 10 * DAY, expires=NOW + 365 * DAY)]
        )
        policy_keys = PolicyKeyStore(str(tmp_path / "controller"))
        policy_keys.create(VMID, UUID)
        approval = approve(policy_keys, VMID, UUID, facts)
        node = Node(state_dir, backend, policy_keys, facts.node_name, approval)
        node.seal({"master-key": os.urandom(64), "api-token": b"token-v1"})
        node.publish()
        yield node
    finally:
        backend.close()


def config_reader(node: Node):
    data = config_to_bytes(HookConfig(node.state_dir, CLUSTER, qm="/usr/sbin/qm", pvesh="/usr/bin/pvesh"))
    return lambda: data


# -- check_start ---------------------------------------------------------------


def test_intact_state_passes(node):
    assert node.check() == VERIFIED


def test_a_later_version_passes_with_its_own_number(node):
    node.seal({"api-token": b"token-v2"})
    node.publish()
    assert node.check() == f"VM {VMID}: sealed state verified (manifest v2)"


def test_tampered_blob_refused(node):
    path = node.vm.blob_path("api-token")
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0x01
    Path(path).write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="blob 'api-token' was swapped or altered"):
        node.check()


def test_rollback_of_the_whole_vm_dir_refused_by_the_floor_record(node, tmp_path):
    saved = tmp_path / "vm-dir-v1"
    shutil.copytree(node.vm.path, saved)
    node.seal({"api-token": b"token-v2"})
    node.publish()
    # An old copy of the whole directory comes back: v1 blobs, v1 keyslot and the v1 manifest.json, which match.
    shutil.rmtree(node.vm.path)
    shutil.copytree(saved, node.vm.path)
    with pytest.raises(VerificationError, match="rollback: .* rollback to version 1 while the floor is 2"):
        node.check()
    # The floor record outside the VM directory is what tells: without it the old copy would verify.
    os.unlink(NodeCache(node.state_dir).floor_path(UUID))
    assert node.check() == VERIFIED


def test_vm_files_deleted_refused(node):
    shutil.rmtree(node.vm.path)
    with pytest.raises(VerificationError, match=f"VM {VMID} has no sealed state on this node .*does not exist"):
        node.check()


def test_keyslot_deleted_refused(node):
    os.unlink(node.vm.keyslot_path)
    with pytest.raises(VerificationError, match=f"VM {VMID} has no keyslot on this node"):
        node.check()


def test_missing_cached_manifest_refused(node):
    os.unlink(NodeCache(node.state_dir).manifest_path(VMID))
    with pytest.raises(VerificationError, match=f"VM {VMID} has no cached manifest on this node"):
        node.check()


def test_expired_manifest_refused(node):
    with pytest.raises(VerificationError, match="expired at"):
        node.check(now=NOW + 31 * DAY)


def test_manifest_of_another_cluster_refused(node):
    with pytest.raises(VerificationError, match="another cluster"):
        prestart.check_start(node.state_dir, VMID, "other", NOW, proxmox())


def test_state_copied_from_another_node_refused(node):
    path = node_record_path(node.state_dir)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(node_record_to_bytes("000b" + "ee" * 32))
    with pytest.raises(VerificationError, match="copied from another node"):
        node.check()
    Path(path).write_bytes(node_record_to_bytes(node.node_id.hex()))
    assert node.check() == VERIFIED


def test_vm_unknown_to_proxmox_refused(node):
    with pytest.raises(ProxmoxError, match="VM 105 is not in this cluster's resources"):
        prestart.check_start(node.state_dir, 105, CLUSTER, NOW, proxmox())


def test_corrupt_floor_record_refused(node):
    Path(NodeCache(node.state_dir).floor_path(UUID)).write_bytes(b'{"format":"ironclaw-floor/1"}')
    with pytest.raises(FormatError, match="floor record .*missing required field"):
        node.check()


# -- main: the hookscript's command line -----------------------------------------


def test_pre_start_prints_the_verdict_and_exits_0(node, capsys):
    assert prestart.main([str(VMID), "pre-start"], config_reader(node), run=recorded, now=NOW) == 0
    assert capsys.readouterr().out == f"ironclaw: {VERIFIED}\n"


def test_refusal_exits_1_with_the_reason(node, capsys):
    shutil.rmtree(node.vm.path)
    assert prestart.main([str(VMID), "pre-start"], config_reader(node), run=recorded, now=NOW) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"ironclaw: refusing to start VM {VMID}: VM {VMID} has no sealed state on this node")
    assert captured.err.count("\n") == 1


def test_unexpected_exception_exits_1_fail_closed(node, capsys):
    def broken(argv):
        raise RuntimeError("pvesh crashed")

    assert prestart.main([str(VMID), "pre-start"], config_reader(node), run=broken, now=NOW) == 1
    assert capsys.readouterr().err == (
        f"ironclaw: refusing to start VM {VMID}: unexpected error (RuntimeError: pvesh crashed)\n"
    )


def test_unreadable_config_exits_1_fail_closed(node, capsys):
    def missing():
        raise KeyError("There is no item named 'ironclaw-hook.json' in the archive")

    assert prestart.main([str(VMID), "pre-start"], missing, run=recorded, now=NOW) == 1
    assert "unexpected error (KeyError" in capsys.readouterr().err


@pytest.mark.parametrize("phase", ["post-start", "pre-stop", "post-stop"])
def test_other_phases_exit_0_silently(phase, capsys):
    def untouched(*_args):
        raise AssertionError("a phase other than pre-start must not look at anything")

    assert prestart.main([str(VMID), phase], untouched, run=untouched) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "argv", [[], [str(VMID)], [str(VMID), "pre-start", "x"], ["abc", "pre-start"], ["99", "pre-start"]]
)
def test_bad_command_line_exits_2(argv, capsys):
    assert prestart.main(argv, lambda: b"", run=recorded) == 2
    assert capsys.readouterr().err.startswith("ironclaw: ")


# -- the zipapp ------------------------------------------------------------------


STUB = """#!/bin/sh
# {name} stub: prints what Proxmox printed for the commands the hook runs.
case "$*" in
{cases}
  *) echo "{name} stub: unexpected arguments: $*" >&2; exit 99 ;;
esac
"""


def write_stub(directory: Path, name: str) -> str:
    """A `name` command that prints recorded() for the commands the hook runs."""
    cases = []
    for argv in ANSWERS:
        if argv[0] != name:
            continue
        rc, out, err = recorded(argv)
        stdout, stderr = (directory / ("-".join(argv).replace("/", "_") + suffix) for suffix in (".out", ".err"))
        stdout.write_text(out)
        stderr.write_text(err)
        show = f"cat {shlex.quote(str(stdout))}; cat {shlex.quote(str(stderr))} >&2"
        cases.append(f"  {shlex.quote(' '.join(argv[1:]))}) {show}; exit {rc} ;;")
    path = directory / name
    path.write_text(STUB.format(name=name, cases="\n".join(cases)))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def hookscript(node, tmp_path):
    """The installed hookscript for `node`, with qm/pvesh stubs; run(phase) -> CompletedProcess."""
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        pytest.skip(f"{DEBIAN_PYTHON} not found: the hook runs under the node's Python")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    settings = {"state_dir": node.state_dir, "cluster": CLUSTER}
    settings.update(qm=write_stub(bin_dir, "qm"), pvesh=write_stub(bin_dir, "pvesh"))
    path = tmp_path / "snippets" / "ironclaw-prestart.pyz"
    path.parent.mkdir()
    path.write_bytes(build_hookscript(settings))
    path.chmod(0o755)

    def run(phase: str = "pre-start", vmid: int = VMID) -> subprocess.CompletedProcess:
        # -I: only the archive and the standard library (plus Debian's python3-cryptography), no checkout.
        argv = [DEBIAN_PYTHON, "-I", str(path), str(vmid), phase]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"}
        )

    return run


def test_zipapp_runs_under_debian_python_and_accepts_intact_state(hookscript):
    proc = hookscript()
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"ironclaw: {VERIFIED}\n", "")


def test_zipapp_refuses_tampered_state(node, hookscript):
    Path(node.vm.blob_path("master-key")).write_bytes(b"not the sealed blob")
    proc = hookscript()
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"ironclaw: refusing to start VM {VMID}: ")
    assert "blob 'master-key'" in proc.stderr


def test_zipapp_refuses_a_vm_without_sealed_state(node, hookscript):
    shutil.rmtree(node.vm.path)
    proc = hookscript()
    assert proc.returncode == 1 and "has no sealed state on this node" in proc.stderr


def test_zipapp_other_phases_exit_0(node, hookscript):
    shutil.rmtree(node.vm.path)
    proc = hookscript("post-stop")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_zipapp_runs_as_an_executable_by_its_shebang(hookscript, tmp_path):
    script = tmp_path / "snippets" / "ironclaw-prestart.pyz"
    assert script.read_bytes().startswith(b"#!/usr/bin/python3\n")
    proc = subprocess.run([str(script), str(VMID), "post-start"], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0


def test_builder_output_is_byte_identical_across_builds():
    settings = {"state_dir": "/var/lib/ironclaw", "cluster": CLUSTER}
    first, second = build_hookscript(settings), build_hookscript(dict(settings))
    assert first == second
    assert build_hookscript({**settings, "cluster": "other"}) != first


def test_builder_packs_only_the_hook_and_its_imports(tmp_path):
    path = tmp_path / "hook.pyz"
    path.write_bytes(build_hookscript({"state_dir": "/var/lib/ironclaw", "cluster": CLUSTER}))
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        assert parse_config(archive.read("ironclaw-hook.json")) == HookConfig("/var/lib/ironclaw", CLUSTER)
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    prefix = "ansible_collections/ironclaw/sealed/plugins/module_utils/"
    assert f"{prefix}_hook/prestart.py" in names and f"{prefix}_manifest/node_check.py" in names
    assert not [name for name in names if name.startswith((f"{prefix}_ansible/", f"{prefix}_tpm/"))]
    assert not [name for name in names if "/plugins/modules/" in name or "/plugin_utils/" in name]
    for level in (
        "",
        "ironclaw/",
        "ironclaw/sealed/",
        "ironclaw/sealed/plugins/",
        "ironclaw/sealed/plugins/module_utils/",
    ):
        assert f"ansible_collections/{level}__init__.py" in names
    for module in hook_modules():
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module


def test_config_is_strict():
    good = config_to_bytes(HookConfig("/var/lib/ironclaw", CLUSTER))
    assert parse_config(good) == HookConfig("/var/lib/ironclaw", CLUSTER)
    for bad, message in (
        (good.replace(b"/var/lib/ironclaw", b"var/lib/ironclaw"), "absolute path"),
        (good.replace(b"ironclaw-hook/1", b"ironclaw-hook/2"), "unknown format"),
        (good[:-1] + b',"x":1}', "unknown field"),
        (good + b"\n", "not canonical"),
    ):
        with pytest.raises((FormatError, InputError), match=message):
            parse_config(bad)


# -- the node record the installer writes ------------------------------------------------------------------


def test_vm_dir_copied_from_another_node_refused_by_the_record_ironclaw_hookscript_wrote(node, tmp_path):
    """Another node of the cluster gets this node's whole VM state; the hook installed there refuses it."""
    pytest.importorskip("ansible", reason="the module's option set comes from ansible-core (controller venv)")
    from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.hookscript_states import (  # noqa: PLC0415
        argument_spec,
        hookscript_state,
    )

    other = str(tmp_path / "other")
    with open_backend("software", tcti=None, state_dir=other) as backend:
        backend.provision()
        other_id = backend.identity()[0].hex()
    for entry in os.listdir(node.state_dir):  # the VM's files, its cached manifest, floors, trust roots
        if entry != "node":
            shutil.copytree(os.path.join(node.state_dir, entry), os.path.join(other, entry))
    # The gap the record closes: on its own the copy is consistent (keyslot and manifest name the same node).
    assert prestart.check_start(other, VMID, CLUSTER, NOW, proxmox()) == VERIFIED

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    settings = {"state_dir": other, "cluster": CLUSTER, "qm": write_stub(bin_dir, "qm")}
    settings["pvesh"] = write_stub(bin_dir, "pvesh")
    p = argument_spec().defaults()
    p.update(
        state_dir=other,
        snippets_dir=str(tmp_path / "snippets"),
        content=base64.b64encode(build_hookscript(settings)).decode(),
        backend="software",
        pve=False,
    )
    installed = hookscript_state(p, False, None)
    record = node_record_path(other)
    assert installed["diff"]["after"]["node_id"] == other_id
    assert Path(record).read_bytes() == node_record_to_bytes(other_id)
    assert stat.S_IMODE(os.stat(record).st_mode) == 0o600
    assert hookscript_state(p, False, None)["changed"] is False

    with pytest.raises(VerificationError, match=f"this is node {other_id[:20]}.*copied from another node"):
        prestart.check_start(other, VMID, CLUSTER, NOW, proxmox())
    if os.access(DEBIAN_PYTHON, os.X_OK):  # the snippet as Proxmox runs it
        argv = [DEBIAN_PYTHON, "-I", installed["path"], str(VMID), "pre-start"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin"})
        assert proc.returncode == 1 and "copied from another node" in proc.stderr, proc.stderr
    # The node the state belongs to still starts it.
    assert node.check() == VERIFIED
