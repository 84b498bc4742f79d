"""ironclaw, two ways: module_utils called in this process, and the provision/verify playbooks.

Both seal all N secrets of the VM under one TPM object (the VM root key), so
their TPM work does not grow with N. One-time node enrollment (SRK, epoch
counter; the init and enroll playbooks) happens in the constructor, untimed.

Import after ``bench.checkout.setup()``, which puts the collection and the
test rig on the path.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from playbook_rig import ANSIBLE_PLAYBOOK, DEBIAN_PYTHON, Lab, Node

from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from bench.tools import BenchError, Tool
from rig.policy import approve

VMID = 100
NODE = "nodeA"
PLAYBOOK_TIMEOUT = 900


class IronclawInProcess(Tool):
    """What a module run does, without Ansible: sign an approval, seal; then test-unseal every blob."""

    key = "ironclaw"
    label = "ironclaw (in process)"

    def __init__(self, tpm, workdir, secrets) -> None:
        super().__init__(tpm, workdir, secrets)
        self.uuid = "6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f"
        self.state_dir = str(workdir / "state")
        self.keys = PolicyKeyStore(str(workdir / "controller"))
        self.vm = VmDir(self.state_dir, VMID, self.uuid)
        self.verified: dict | None = None
        with self._backend() as backend:
            backend.provision()

    @contextlib.contextmanager
    def _backend(self):
        with open_backend("tpm2", tcti=self.tcti, state_dir=self.state_dir) as backend:
            yield backend
        self.released()

    def seal(self) -> None:
        # The VM's policy key is made when its first secret is sealed (on the controller, in software).
        self.keys.create(VMID, self.uuid)
        key_public, _name = self.keys.public(VMID, self.uuid)
        with self._backend() as backend:
            facts = backend.facts()
            approval = approve(self.keys, VMID, self.uuid, facts)
            result = engine.seal(
                backend,
                self.vm,
                [engine.Secret(s.name, s.data) for s in self.secrets],
                migratable=True,
                pcrs=None,
                policy_key_public=key_public,
                approval=approval,
                check_mode=False,
            )
        if result["keyslot"]["action"] != "created" or len(result["blobs"]) != len(self.secrets):
            raise BenchError(f"{self.label}: unexpected seal result {result['keyslot']}, {len(result['blobs'])} blobs")

    def unseal(self) -> None:
        with self._backend() as backend:
            self.verified = engine.verify(backend, self.vm)

    def check(self) -> None:
        if not (self.verified and self.verified["verified"] and len(self.verified["blobs"]) == len(self.secrets)):
            raise BenchError(f"{self.label}: verify did not open all {len(self.secrets)} blobs: {self.verified}")
        expected = {s.name: s.data for s in self.secrets}
        with self._backend() as backend:
            opened = {name: plaintext for name, _header, plaintext, _error in engine.open_all(backend, self.vm)}
        if opened != expected:
            raise BenchError(f"{self.label}: the unsealed secrets differ from the sealed ones")


class IronclawPlaybook(Tool):
    """``ansible-playbook ironclaw.sealed.provision`` then ``… verify`` against a localhost node.

    As tests/integration does: the node is localhost with its own state
    directory and TCTI, its modules run by Debian's /usr/bin/python3
    (python3-tpm2-pytss), as on a Proxmox VE 8 node. Secrets are given inline
    (``content``); ``src`` files would add one slurp task iteration per file.
    """

    key = "ironclaw-playbook"
    label = "ironclaw (playbook)"

    def __init__(self, tpm, workdir, secrets) -> None:
        super().__init__(tpm, workdir, secrets)
        self.lab = Lab(workdir, [Node(NODE, "tpm2", workdir / NODE, DEBIAN_PYTHON, tcti=self.tcti)])
        self.secrets_file = self.lab.write_secrets(
            "bench-secrets.json", [{"name": s.name, "content": s.data.decode()} for s in secrets]
        )
        self.verify_output = ""
        self._run("init", "-e", f"ironclaw_controller_dir={self.lab.controller_dir}")
        self._run("enroll")

    @classmethod
    def missing(cls) -> str | None:
        if not ANSIBLE_PLAYBOOK.exists():
            return f"{ANSIBLE_PLAYBOOK} not found: run the benchmark with the venv's python (make bench)"
        if not Path(DEBIAN_PYTHON).exists():
            return f"{DEBIAN_PYTHON} not found"
        return None

    def _run(self, playbook: str, *args: str) -> str:
        argv, env = self.lab.command(playbook, *args)
        self.launches += 1
        # ansible-playbook from the venv with our own inventory; an argument list, never a shell.
        done = subprocess.run(  # noqa: S603
            argv,
            cwd=self.lab.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(
                f"ansible-playbook {playbook} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
            )
        self.released()
        return done.stdout

    def _vm_args(self, **extra) -> list[str]:
        return self.lab.vm_args(NODE, VMID, **extra)

    def seal(self) -> None:
        self._run("provision", *self._vm_args(secrets_file=self.secrets_file))

    def unseal(self) -> None:
        self.verify_output = self._run("verify", *self._vm_args())

    def check(self) -> None:
        if f"{len(self.secrets)} secret(s) verified" not in self.verify_output:
            raise BenchError(f"{self.label}: verify did not report {len(self.secrets)} secrets verified")
