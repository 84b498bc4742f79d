# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_node state=checked (the doctor's node side): each broken item is found, named, and given its fix."""

from __future__ import annotations

import time

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._node import check
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import templates
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

t = pytest.importorskip("tpm2_pytss")
pytestmark = pytest.mark.swtpm


def by_name(report: check.Report) -> dict[str, check.Check]:
    return {c.name: c for c in report.checks}


@pytest.fixture
def healthy(swtpm, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    with open_backend("tpm2", tcti=swtpm.tcti, state_dir=str(state_dir)) as backend:
        backend.provision()
    return swtpm, state_dir


def test_healthy_node_passes_every_check(healthy):
    swtpm, state_dir = healthy
    report = check.run_checks("tpm2", swtpm.tcti, str(state_dir), controller_time=time.time())
    assert report.healthy, report.to_result()["problems"]
    assert [c.status for c in report.checks] == ["ok"] * len(report.checks)
    assert set(by_name(report)) >= {"TCTI", "TPM", "dictionary-attack lockout", "SRK", "epoch NV index", "PCR banks"}


def test_unreachable_tcti_is_named_with_its_fix(tmp_path):
    report = check.run_checks("tpm2", "swtpm:host=127.0.0.1,port=9", str(tmp_path))
    tcti = by_name(report)["TCTI"]
    assert not report.healthy and tcti.status == "fail"
    assert "127.0.0.1:9 does not answer" in tcti.detail and "start swtpm" in tcti.fix
    assert by_name(report)["TPM"].status == "skipped"


def test_missing_srk_and_epoch_index_say_enroll(swtpm, tmp_path):
    report = check.run_checks("tpm2", swtpm.tcti, str(tmp_path))
    checks = by_name(report)
    assert (checks["SRK"].status, checks["epoch NV index"].status) == ("fail", "fail")
    assert "enroll" in checks["SRK"].fix and "enroll" in checks["epoch NV index"].fix


def test_epoch_nv_index_removed_is_found(healthy):
    swtpm, state_dir = healthy
    with TpmNode(swtpm.tcti) as node:
        node.ctx.nv_undefine_space(node.epoch_nv(), t.ESYS_TR.OWNER)
    checks = by_name(check.run_checks("tpm2", swtpm.tcti, str(state_dir)))
    assert checks["SRK"].status == "ok"
    assert (
        checks["epoch NV index"].status == "fail"
        and f"0x{templates.EPOCH_NV_INDEX:08x}" in checks["epoch NV index"].detail
    )


def test_wrong_mode_state_dir_says_chmod(healthy):
    swtpm, state_dir = healthy
    state_dir.chmod(0o755)
    checks = by_name(check.run_checks("tpm2", swtpm.tcti, str(state_dir)))
    assert checks["state_dir"].status == "fail" and "mode 0755" in checks["state_dir"].detail
    assert "chmod 0700" in checks["state_dir"].fix


def test_full_state_dir_says_free_space(healthy, monkeypatch):
    swtpm, state_dir = healthy

    class Full:
        f_bavail, f_frsize, f_favail = 10, 4096, 100

    monkeypatch.setattr(check.os, "statvfs", lambda path: Full)
    free = by_name(check.run_checks("tpm2", swtpm.tcti, str(state_dir)))["state_dir free space"]
    assert free.status == "fail" and "40 KiB" in free.detail and "free space" in free.fix


def test_pcr_bank_not_allocated_is_named(healthy, monkeypatch):
    swtpm, state_dir = healthy
    # swtpm allocates every bank we know; a TPM that allocates only sha1 is shown by hiding the others.
    monkeypatch.setattr(check, "BANKS", {"sha1": check.BANKS["sha1"]})
    pcrs = check.PcrSelection.parse("sha256:0,7")
    banks = by_name(check.run_checks("tpm2", swtpm.tcti, str(state_dir), pcrs))["PCR banks"]
    assert banks.status == "fail" and "sha256:0, sha256:7 not allocated (allocated: sha1)" in banks.detail
    assert "tpm2_pcrallocate" in banks.fix


def test_clock_skew_against_the_controller_is_named(healthy):
    swtpm, state_dir = healthy
    skew = by_name(check.run_checks("tpm2", swtpm.tcti, str(state_dir), controller_time=time.time() - 900))
    assert skew["clock skew"].status == "fail" and "NTP" in skew["clock skew"].fix


def test_lockout_is_a_warning_that_says_what_still_works(healthy):
    swtpm, state_dir = healthy
    with TpmNode(swtpm.tcti) as node:
        # Lock the TPM out: one allowed failure, then wrong passwords for a DA-protected key.
        node.ctx.dictionary_attack_parameters(1, 1000, 1000)
        sensitive = t.TPM2B_SENSITIVE_CREATE(t.TPMS_SENSITIVE_CREATE(userAuth=t.TPM2B_AUTH(b"right")))
        handle = node.ctx.create_primary(sensitive, "ecc256")[0]
        node.ctx.tr_set_auth(handle, b"wrong")
        for _round in range(2):
            with pytest.raises(t.TSS2_Exception):
                node.ctx.create(handle, None, "ecc256")
        node.ctx.flush_context(handle)
    report = check.run_checks("tpm2", swtpm.tcti, str(state_dir))
    lockout = by_name(report)["dictionary-attack lockout"]
    assert lockout.status == "warn" and "noDA" in lockout.detail and "still work" in lockout.detail
    assert report.healthy  # a warning: unseal keeps working
