# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The doctor playbook (issue #16): a healthy node passes every check, a broken one fails naming the fix, a JSON
report is kept on the controller, check mode changes nothing on the node, and no secret appears at -vvvv."""

from __future__ import annotations

import json

import pytest
from playbook_rig import DEBIAN_PYTHON, enrolled_lab, leak_markers

pytestmark = pytest.mark.swtpm

NODE = "pve1"


@pytest.fixture
def lab(tmp_path, playbook_tools):
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [(NODE, "tpm2", DEBIAN_PYTHON)], provision=((NODE, 100),)) as made:
        yield made


def doctor(lab, *extra, **options):
    return lab.run("doctor", "-e", f"ironclaw_doctor_dir={lab.root / 'doctor'}", *extra, **options)


def report(lab) -> dict:
    return json.loads((lab.root / "doctor" / f"{NODE}.json").read_text())


def test_healthy_node_passes_and_keeps_a_json_report_without_secrets(lab):
    done = doctor(lab, verbosity=4)
    kept = report(lab)
    assert kept["node"] == NODE and kept["healthy"] is True
    assert {c["name"] for c in kept["checks"]} >= {"TCTI", "SRK", "epoch NV index", "PCR banks", "state_dir"}
    assert all(c["status"] in ("ok", "skipped") for c in kept["checks"]), kept
    output = (done.stdout + done.stderr).encode()
    for secret in lab.plaintexts.values():
        for marker in leak_markers(secret):
            assert marker not in output


def test_wrong_mode_state_dir_fails_naming_chmod_and_check_mode_changes_nothing(lab):
    lab.nodes[NODE].state_dir.chmod(0o755)
    before = lab.snapshot()
    done = doctor(lab, check=True, expect_fail=True)
    assert "mode 0755 lets others in (expected 0700)" in done.stdout
    assert "chmod 0700" in done.stdout
    assert lab.snapshot() == before


def test_unreachable_tcti_fails_naming_the_port_and_how_to_start_it(lab):
    lab.nodes[NODE].tcti = "swtpm:host=127.0.0.1,port=9"
    lab.write_inventory()
    done = doctor(lab, expect_fail=True)
    assert "swtpm at 127.0.0.1:9 does not answer" in done.stdout and "start swtpm" in done.stdout
    assert report(lab)["healthy"] is False
