"""What users do: build the collection, install the tarball, run its playbooks from the installed copy."""

from __future__ import annotations

import subprocess
import tarfile

import pytest
from playbook_rig import REPO, VENV_BIN

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def installed(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "build", str(REPO), "--output-path", str(out)],
        check=True,
        capture_output=True,
    )
    (tarball,) = out.glob("ironclaw-sealed-*.tar.gz")
    target = out / "collections"
    subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", "-p", str(target), str(tarball)],
        check=True,
        capture_output=True,
    )
    lab.collections_path = target
    return tarball, target / "ansible_collections" / "ironclaw" / "sealed"


def test_tarball_holds_the_collection_and_nothing_private(installed):
    tarball, _root = installed
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    for needed in (
        "MANIFEST.json",
        "plugins/modules/ironclaw_seal.py",
        "plugins/action/ironclaw_policy.py",
        "roles/seal/meta/argument_specs.yml",
        "playbooks/provision.yml",
        "meta/runtime.yml",
    ):
        assert needed in names
    assert not [n for n in names if n.startswith((".venv", ".build", ".git/", ".ansible/"))]


def test_installed_collection_provisions_and_verifies(installed, lab):
    _tarball, root = installed
    # ANSIBLE_COLLECTIONS_PATH names only the installed copy, so that is what runs.
    assert lab.collections_path == root.parents[2] and (root / "MANIFEST.json").is_file()
    lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
    lab.run("enroll")
    for node in ("nodeA", "nodeB"):
        done = lab.provision(node, 100)
        assert done.recap[node]["failed"] == 0
        lab.verify(node, 100)
