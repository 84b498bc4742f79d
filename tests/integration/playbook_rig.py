"""A lab for the integration tests: ansible-playbook runs of the collection's playbooks.

A lab is a temporary directory with an inventory, a controller directory and
secret files. Its nodes all run on localhost (``ansible_connection: local``),
each with its own state directory, backend, TPM and python interpreter. Output
is the default callback's text: helpers below read its PLAY RECAP, which tasks
changed, and the JSON results it prints after ``=>``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rig.counter import TpmCommandCounter
from rig.ekca import EkCa
from rig.swtpm import Swtpm

HERE = Path(__file__).resolve().parent
# Test-only callbacks (kill_after: fault injection).
CALLBACKS = HERE / "callbacks"
REPO = HERE.parent.parent
COLLECTIONS = REPO / ".build" / "collections"
PLAYBOOKS = HERE / "playbooks"
# The venv's tools sit next to the interpreter that runs pytest (do not resolve
# the symlink: that would leave the venv).
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
DEBIAN_PYTHON = "/usr/bin/python3"
PLAYBOOK_TIMEOUT = 180
_session_ek_ca: list[EkCa] = []


def session_ek_ca() -> EkCa:
    """The EK CA of this test process: labs' swtpms carry its EK certificates, and their inventories name its trust
    directory (ironclaw_ek_ca_dir), so nodes enroll attested in the default trust mode (ca), as real nodes do."""
    if not _session_ek_ca:
        _session_ek_ca.append(EkCa("ironclaw-session"))
    return _session_ek_ca[0]


def vm_uuid_of(node: str, vmid: int) -> str:
    """Each test VM has its own identity: a VM lives on one node and its uuid names its manifest chain."""
    return f"6f1c2a4e-9b7d-4c1a-8e2f-{ord(node[-1]):04x}{vmid:08d}"


BIG_SECRET_SIZE = 64 * 1024

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of the default callback: {host: {ok, changed, unreachable, failed, ...}}."""
    recap = {}
    for match in _RECAP.finditer(output):
        counts = match.groupdict()
        host = counts.pop("host")
        recap[host] = {key: int(value) for key, value in counts.items()}
    return recap


_EVENT = re.compile(
    r"^(?:TASK \[(?P<task>.*)\] \**$"
    r"|(?P<status>ok|changed|fatal|skipping): \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\](?:: FAILED!)? => )",
    re.MULTILINE,
)


def task_result(output: str, task: str, host: str) -> dict:
    """The result the default callback printed for `host` in the task named `task` (role prefix dropped)."""
    current = None
    for match in _EVENT.finditer(output):
        if match["task"] is not None:
            current = match["task"].split(" : ", 1)[-1]
        elif current == task and match["host"] == host:
            return json.JSONDecoder().raw_decode(output, match.end())[0]
    raise AssertionError(f"no result of task {task!r} for {host} in:\n{output[-4000:]}")


def task_count(output: str) -> int:
    """How many tasks a run went through (TASK banners of the default callback, skipped ones included)."""
    return sum(1 for line in output.splitlines() if line.startswith("TASK ["))


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported ``changed`` in default-callback output (role prefix dropped)."""
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") : line.rindex("]")].split(" : ", 1)[-1]
        elif line.startswith("changed: [") and task is not None:
            changed.append(task)
    return changed


def blob_header(path: Path) -> dict:
    """The JSON header of a sealed blob: 4-byte big-endian length, then the header."""
    data = path.read_bytes()
    (length,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + length])


def tree(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under roots: path -> (mode, sha256 of a file's bytes or 'dir')."""
    found = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            # Lock files (empty, under .locks) are taken even in check mode; they hold no state.
            if Path(dirpath).name == ".locks":
                filenames = [name for name in filenames if not name.endswith(".lock")]
            # The store's locks directory and its mutex's directory appear with the first run that takes a lock;
            # a lock file left in it is still seen.
            unseen = {"store": {"locks"}, "locks": {".locks"}}.get(Path(dirpath).name, set())
            for name in [name for name in dirnames if name not in unseen] + filenames:
                path = Path(dirpath, name)
                mode = path.lstat().st_mode & 0o7777
                digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = (mode, digest)
    return found


def leak_markers(data: bytes) -> list[bytes]:
    """Forms in which a secret could show up in output: the start of its base64, of its hex, of the raw bytes.

    Prefixes also catch truncated output; raw bytes only from 16 bytes on, so a short needle cannot match by chance.
    """
    encoded = base64.b64encode(data)
    markers = [encoded[:64], data.hex()[:64].encode()]
    if len(data) >= 16:
        markers.append(data[:32])
    return markers


@dataclasses.dataclass
class Node:
    name: str
    backend: str
    state_dir: Path
    python: str
    tcti: str | None = None
    enrolled_group: bool = True
    ek_trust: str | None = None  # ironclaw_ek_trust when not the default (ca): tofu for a swtpm without EK certificates

    def host_vars(self) -> dict:
        hostvars = {
            "ironclaw_backend": self.backend,
            "ironclaw_state_dir": str(self.state_dir),
            "ansible_python_interpreter": self.python,
        }
        if self.tcti:
            hostvars["ironclaw_tcti"] = self.tcti
        if self.ek_trust:
            hostvars["ironclaw_ek_trust"] = self.ek_trust
        return hostvars


class Lab:
    """A controller directory, nodes, secrets and an inventory in one temporary directory."""

    def __init__(self, root: Path, nodes: list[Node], secrets_of: Lab | None = None, ek_ca: EkCa | None = None):
        """`secrets_of`: take that lab's secrets instead of new random ones (a copy of it, see enrolled_lab).
        `ek_ca`: the CA whose certificates the nodes' swtpms carry (default: session_ek_ca())."""
        self.ek_ca = ek_ca
        # Where ansible finds ironclaw.sealed: the checkout, or an installed tarball.
        self.collections_path = COLLECTIONS
        self.root = root
        self.controller_dir = root / "controller"
        self.nodes = {node.name: node for node in nodes}
        self.inventory = root / "inventory.yml"
        # Settings come from the environment (see command); an empty file keeps any other ansible.cfg out.
        self.ansible_cfg = root / "ansible.cfg"
        self.ansible_cfg.write_text("")
        self.secret_dir = root / "secrets"
        self.secret_dir.mkdir(mode=0o700)
        if secrets_of is None:
            self.big = os.urandom(BIG_SECRET_SIZE)
            self.text = f"text-secret-{secrets.token_hex(16)}\n".encode()
            self.inline = f"inline-secret-{secrets.token_hex(16)}"
        else:
            self.big, self.text, self.inline = secrets_of.big, secrets_of.text, secrets_of.inline
        self.big_path = self.secret_dir / "master-key.bin"
        self.text_path = self.secret_dir / "db-pass.txt"
        self.big_path.write_bytes(self.big)
        self.text_path.write_bytes(self.text)
        # The three secrets of a VM: name -> plaintext, and the variables file that lists them.
        self.plaintexts = {"master-key": self.big, "db-pass": self.text, "api-token": self.inline.encode()}
        self.secrets_file = self.write_secrets(
            "secrets.json",
            [
                {"name": "master-key", "src": str(self.big_path)},
                {"name": "db-pass", "src": str(self.text_path)},
                {"name": "api-token", "content": self.inline},
            ],
        )
        self.write_inventory()
        # Runs that fixtures make once and several tests look at, e.g. results["enroll"].
        self.results: dict = {}

    # -- files ---------------------------------------------------------------
    def write_inventory(self) -> None:
        groups = {"ironclaw_nodes": {"hosts": {}}, "unenrolled": {"hosts": {}}}
        for node in self.nodes.values():
            group = "ironclaw_nodes" if node.enrolled_group else "unenrolled"
            groups[group]["hosts"][node.name] = node.host_vars()
        inventory = {
            "all": {
                "children": groups,
                "vars": {
                    "ansible_connection": "local",
                    "ironclaw_pve": False,
                    "ironclaw_controller_dir": str(self.controller_dir),
                    "ironclaw_ek_ca_dir": str((self.ek_ca or session_ek_ca()).trust_dir),
                },
            }
        }
        # JSON is YAML: no quoting surprises in paths.
        self.inventory.write_text(json.dumps(inventory, indent=2))

    def write_secrets(self, filename: str, items: list[dict]) -> Path:
        path = self.root / filename
        path.write_text(json.dumps({"ironclaw_secrets": items}, indent=2))
        return path

    def vm_dir(self, node: str, vmid: int) -> Path:
        return self.nodes[node].state_dir / str(vmid)

    def blob(self, node: str, vmid: int, name: str) -> Path:
        return self.vm_dir(node, vmid) / f"{name}.sealed"

    def store_chain(self, node: str, vmid: int) -> list[Path]:
        """The manifest files of a VM in the store, oldest first."""
        return sorted((self.controller_dir / "store" / "vms" / vm_uuid_of(node, vmid)).glob("manifest-*.json"))

    def policy_key(self, node: str, vmid: int) -> Path:
        return self.controller_dir / "policy-keys" / f"vm-{vmid}-{vm_uuid_of(node, vmid)}.pem"

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """State of every node and the controller: compare two to prove a run changed nothing."""
        return tree(self.controller_dir, *(node.state_dir for node in self.nodes.values()))

    # -- ansible-playbook ----------------------------------------------------
    def command(
        self, name: str, *extra_args: str, check: bool = False, verbosity: int = 0, env_extra: dict | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment of an ansible-playbook run.

        `name` is a playbook of the collection (``provision``) or a path to a playbook file.
        """
        playbook = name if name.endswith((".yml", ".yaml")) else f"ironclaw.sealed.{name}"
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), playbook, *extra_args]
        if check:
            argv.append("--check")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        env = dict(os.environ)
        # Only what this lab sets: no ansible.cfg or ANSIBLE_* of the caller.
        for key in [k for k in env if k.startswith("ANSIBLE_")]:
            del env[key]
        env.update(
            ANSIBLE_COLLECTIONS_PATH=str(self.collections_path),
            ANSIBLE_CONFIG=str(self.ansible_cfg),
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_NOCOLOR="1",
            # Results as JSON after "=> " (task_result reads them); ansible-core's own json
            # callback moved to ansible.posix, which the controller need not have.
            ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
            ANSIBLE_CALLBACK_RESULT_FORMAT="json",
            ANSIBLE_LOCAL_TEMP=str(self.root / "ansible-tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.root / "ansible-tmp"),
            ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            TSS2_LOG="all+NONE",
        )
        env.pop("IRONCLAW_TCTI", None)
        env.update(env_extra or {})
        return argv, env

    def start(self, name: str, *extra_args: str, **options) -> subprocess.Popen:
        argv, env = self.command(name, *extra_args, **options)
        return subprocess.Popen(
            argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def run(
        self,
        name: str,
        *extra_args: str,
        check: bool = False,
        expect_fail: bool = False,
        verbosity: int = 0,
        timeout: float = PLAYBOOK_TIMEOUT,
        env_extra: dict | None = None,
    ) -> subprocess.CompletedProcess:
        proc = self.start(name, *extra_args, check=check, verbosity=verbosity, env_extra=env_extra)
        return self.wait(proc, expect_fail=expect_fail, timeout=timeout)

    @staticmethod
    def wait(
        proc: subprocess.Popen, *, expect_fail: bool = False, timeout: float = PLAYBOOK_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """The CompletedProcess of a started run (text output, ``.recap`` parsed); checks the exit code."""
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"{proc.args} did not finish in {timeout}s:\n{_text(stdout)}\n{_text(stderr)}")
        done = subprocess.CompletedProcess(proc.args, proc.returncode, _text(stdout), _text(stderr))
        shown = f"exit code {done.returncode}\n--- stdout\n{done.stdout[-8000:]}\n--- stderr\n{done.stderr[-4000:]}"
        if expect_fail:
            assert done.returncode != 0, f"the run should have failed:\n{shown}"
        else:
            assert done.returncode == 0, f"the run failed:\n{shown}"
        done.recap = parse_recap(done.stdout)
        return done

    def vm_args(self, node: str, vmid: int, vm_uuid: str | None = None, secrets_file: Path | None = None) -> list[str]:
        """Extra vars naming the node and VM (and the secrets file, for provision)."""
        vm_uuid = vm_uuid or vm_uuid_of(node, vmid)
        args = ["-e", f"ironclaw_node={node}", "-e", f"ironclaw_vmid={vmid}", "-e", f"ironclaw_vm_uuid={vm_uuid}"]
        if secrets_file is not None:
            args += ["-e", f"@{secrets_file}"]
        return args

    def provision(self, node: str, vmid: int, secrets_file: Path | None = None, extra: tuple = (), **options):
        args = self.vm_args(node, vmid, secrets_file=secrets_file or self.secrets_file)
        return self.run("provision", *args, *extra, **options)

    def fleet_args(self, node: str, vmids, secrets_file: Path | None = None) -> list[str]:
        """Extra vars naming the node and a fleet of VMs (ironclaw_vms, each with its uuid) and the secrets file."""
        vms = [{"vmid": vmid, "vm_uuid": vm_uuid_of(node, vmid)} for vmid in vmids]
        args = ["-e", f"ironclaw_node={node}", "-e", json.dumps({"ironclaw_vms": vms})]
        return args + ["-e", f"@{secrets_file or self.secrets_file}"]

    def provision_fleet(self, node: str, vmids, secrets_file: Path | None = None, extra: tuple = (), **options):
        """Provision every VM of `vmids` on `node` in one run (ironclaw_vms)."""
        return self.run("provision", *self.fleet_args(node, vmids, secrets_file), *extra, **options)

    def verify(self, node: str, vmid: int, extra: tuple = (), **options):
        return self.run("verify", *self.vm_args(node, vmid), *extra, **options)

    def unseal(self, node: str, vmid: int, dest: Path, **options):
        return self.run(
            str(PLAYBOOKS / "unseal.yml"), *self.vm_args(node, vmid), "-e", f"unseal_dest={dest}", **options
        )


# Labs already built in this process, by what they are: see lab_from_template.
_templates: dict[tuple, _Template] = {}
TEMPLATE_MAX_AGE = 30 * 60  # seconds; manifests and records keep their issue time, so do not age a copy for long
# What each Lab writes anew (its own paths and ports): everything else under a template's root is copied.
LAB_OWN_FILES = {"inventory.yml", "ansible.cfg", "secrets", "secrets.json", "ansible-tmp"}


@dataclasses.dataclass
class _Template:
    lab: Lab  # stopped: its TPMs' states are under root/tpm/<node>
    root: Path
    built: float


@contextlib.contextmanager
def enrolled_lab(
    root: Path,
    nodes: list[tuple[str, str, str]],
    provision: tuple[tuple[str, int], ...] = (),
    counted: bool = False,
    ek_ca: EkCa | None = None,
):
    """A lab of (name, backend, python) nodes, a swtpm of its own for each tpm2 node, initialised and enrolled, with
    (node, vmid) VMs provisioned; every swtpm is stopped on the way out. With `counted`, each swtpm sits behind a
    TPM command counter (lab.counters[name]), and the lab is built by the playbooks, so the counters see every
    command; otherwise it is a copy of a template (lab_from_template). Every swtpm carries EK certificates from
    `ek_ca` (default: session_ek_ca()), whose repr (the CA's directory) is part of the template's key."""
    ek_ca = ek_ca or session_ek_ca()

    def build(lab: Lab) -> None:
        lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
        lab.run("enroll")
        # One provision run per node for all its VMs (ironclaw_vms).
        fleets: dict[str, list[int]] = {}
        for node, vmid in provision:
            fleets.setdefault(node, []).append(vmid)
        for node, vmids in fleets.items():
            lab.provision_fleet(node, vmids)

    if counted:
        with _built_lab(root, nodes, build, counted=True, ek_ca=ek_ca) as lab:
            yield lab
        return
    key = ("enrolled", tuple(nodes), tuple(provision), repr(ek_ca))
    with lab_from_template(root, key, nodes, build, ek_ca=ek_ca) as lab:
        yield lab


@contextlib.contextmanager
def lab_from_template(root: Path, key: tuple, nodes: list[tuple[str, str, str]], build, ek_ca: EkCa | None = None):
    """A lab of (name, backend, python) nodes on which `build(lab)` ran, for a fixture whose test does not test that
    setup itself. The playbook runs are paid once per process for each `key`: the first lab is built, kept aside
    with its TPMs' states (a template), and later labs are copies of it on swtpms started from those states (new
    ports). Building a template checks that no file it made names its directory or a port (only the inventory and
    the secrets file do, and each lab writes those anew), so a copy is what `build` would make, to the byte, except
    that every copy has the same keys and secrets as its template."""
    template = _templates.get(key)
    if template is None or time.monotonic() - template.built > TEMPLATE_MAX_AGE:
        template = _templates[key] = _make_template(nodes, build, ek_ca or session_ek_ca())
    with contextlib.ExitStack() as stack:
        made = []
        for node in template.lab.nodes.values():
            tcti = None
            if node.backend == "tpm2":
                tcti = stack.enter_context(Swtpm(state_from=template.root / "tpm" / node.name)).tcti
            made.append(Node(node.name, node.backend, root / node.name, node.python, tcti=tcti))
        lab = Lab(root, made, secrets_of=template.lab, ek_ca=template.lab.ek_ca)
        lab.counters = {}
        for entry in template.lab.root.iterdir():
            if entry.name in LAB_OWN_FILES:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, root / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, root / entry.name, follow_symlinks=False)
        yield lab


def _make_template(nodes, build, ek_ca: EkCa) -> _Template:
    root = Path(tempfile.mkdtemp(prefix="ironclaw-lab-template-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with _built_lab(root / "lab", nodes, build, keep_tpms=root / "tpm", ek_ca=ek_ca) as lab:
        ports = [node.tcti.rsplit("=", 1)[1] for node in lab.nodes.values() if node.tcti]
        needles = [str(lab.root).encode(), *(f"port={port}".encode() for port in ports)]
        for path in sorted(lab.root.rglob("*")):
            if path.relative_to(lab.root).parts[0] in LAB_OWN_FILES or not path.is_file():
                continue
            data = path.read_bytes()
            named = [needle.decode() for needle in needles if needle in data]
            assert not named, f"{path} names {named}: a copy of this lab would point back at its template"
    return _Template(lab, root, time.monotonic())


@contextlib.contextmanager
def _built_lab(root: Path, nodes, build, counted: bool = False, keep_tpms: Path | None = None, ek_ca=None):
    """A lab built by `build(lab)`; with `keep_tpms`, each swtpm's state is copied there once it has stopped."""
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        made, counters, tpms = [], {}, {}
        for name, backend, python in nodes:
            tcti = None
            if backend == "tpm2":
                tpm = tpms[name] = stack.enter_context(Swtpm(manufacture=(ek_ca or session_ek_ca()).manufacture))
                tcti = tpm.tcti
                if counted:
                    counters[name] = stack.enter_context(TpmCommandCounter(tpm))
                    tcti = counters[name].tcti
            made.append(Node(name, backend, root / name, python, tcti=tcti))
        lab = Lab(root, made, ek_ca=ek_ca)
        lab.counters = counters
        build(lab)
        if keep_tpms is not None:
            for name, tpm in tpms.items():
                tpm.stop()  # its state is complete on disk once it has ended
                shutil.copytree(tpm.state_dir, keep_tpms / name)
        yield lab


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")
