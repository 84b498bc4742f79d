"""Fixtures of the integration tests: a lab (see playbook_rig) with its own swtpm per test module."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from playbook_rig import ANSIBLE_PLAYBOOK, DEBIAN_PYTHON, Lab, Node, session_ek_ca

from rig.swtpm import Swtpm


@pytest.fixture(scope="session")
def playbook_tools():
    """Skip (with the reason) where ansible-playbook, swtpm or the node interpreters' packages are missing."""
    if not shutil.which("swtpm"):
        pytest.skip("swtpm binary not found: install the Debian package swtpm (make bootstrap)")
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"{ANSIBLE_PLAYBOOK} not found: run the tests with the venv's python (make bootstrap)")
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import tpm2_pytss, cryptography"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} lacks python3-tpm2-pytss or python3-cryptography: {probe.stderr.strip()}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, playbook_tools):
    """A fresh lab with its own swtpm, shared by the tests of one module. Its nodes:

    - nodeA: tpm2 backend on the swtpm (EK certificates from the session's EK CA), modules run by Debian's python3
      (python3-tpm2-pytss 1.2, python3-cryptography 38), as on a PVE 8 node;
    - nodeB: software backend, modules run by the test interpreter (PyPI releases);
    - nodeX: outside the ironclaw_nodes group, so enroll never touches it.
    """
    root = tmp_path_factory.mktemp("lab")
    with Swtpm(manufacture=session_ek_ca().manufacture) as tpm:
        yield Lab(
            root,
            [
                Node("nodeA", "tpm2", root / "nodeA", DEBIAN_PYTHON, tcti=tpm.tcti),
                Node("nodeB", "software", root / "nodeB", sys.executable),
                Node("nodeX", "software", root / "nodeX", sys.executable, enrolled_group=False),
            ],
        )


@pytest.fixture(scope="module")
def enrolled(lab):
    """The lab after init and enroll; the results of both runs are in ``lab.results``."""
    lab.results["init"] = lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
    lab.results["enroll"] = lab.run("enroll")
    return lab


@pytest.fixture(scope="module")
def run_playbook(lab):
    """``run_playbook(name, *extra_args, check=False, expect_fail=False, verbosity=0)`` on the module's lab."""
    return lab.run
