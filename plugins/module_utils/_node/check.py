# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's health, checked one item at a time, each in plain words with its fix (ironclaw_node state=checked).

Every check runs even when an earlier one failed (a doctor reports everything it can see); a check that cannot
run because of an earlier failure says so. Nothing here changes the node, and nothing secret is read: the
report holds names, versions, counters and modes only.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import asdict, dataclass, field

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import BANKS, PcrSelection

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
MIN_FREE_BYTES = 16 * 1024 * 1024
MAX_CLOCK_SKEW = 300  # seconds: the manifests' default tolerance (DESIGN §3, verify.DEFAULT_CLOCK_SKEW)
MIN_FREE_OBJECTS = 3  # an unseal holds the keyslot, an external key and a session at once
DEFAULT_PCRS = "sha256:0,7"
# TPM_PT_* (TPM 2.0 Part 2, 6.13) and TPMA_PERMANENT.inLockout
PT_MANUFACTURER = 0x105
PT_FIRMWARE_VERSION_1 = 0x10B
PT_FIRMWARE_VERSION_2 = 0x10C
PT_HR_TRANSIENT_AVAIL = 0x207
PT_HR_LOADED_AVAIL = 0x209
PT_ACTIVE_SESSIONS_MAX = 0x20A
PT_PERMANENT = 0x200
PT_LOCKOUT_COUNTER = 0x20E
PT_MAX_AUTH_FAIL = 0x20F
PT_LOCKOUT_INTERVAL = 0x210
PT_LOCKOUT_RECOVERY = 0x211
PERMANENT_IN_LOCKOUT = 1 << 9
CAP_TPM_PROPERTIES = 6
CAP_PCRS = 5


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper():7} {self.name}: {self.detail}"
        return text + (f" -> fix: {self.fix}" if self.fix and self.status in (WARN, FAIL) else "")


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    @property
    def healthy(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_result(self) -> dict:
        return {
            "healthy": self.healthy,
            "checks": [asdict(c) for c in self.checks],
            "summary": [c.line() for c in self.checks],
            "problems": [c.line() for c in self.checks if c.status == FAIL],
        }


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        return version(module)
    except (ImportError, PackageNotFoundError):
        return None


def check_libraries(report: Report, backend: str) -> None:
    pytss = _version("tpm2-pytss")
    crypto = _version("cryptography")
    if crypto is None:
        report.add("cryptography", FAIL, "not installed", "apt-get install python3-cryptography")
    else:
        report.add("cryptography", OK, f"version {crypto}")
    if backend != "tpm2":
        return
    if pytss is None:
        report.add("tpm2-pytss", FAIL, "not installed", "apt-get install python3-tpm2-pytss")
    else:
        report.add("tpm2-pytss", OK, f"version {pytss}")


def check_state_dir(report: Report, state_dir: str) -> None:
    name = "state_dir"
    try:
        st = os.lstat(state_dir)
    except FileNotFoundError:
        report.add(name, WARN, f"{state_dir} does not exist yet", "provision the node (playbook enroll)")
        return
    except OSError as err:
        report.add(name, FAIL, f"{state_dir} cannot be read: {err.strerror}", "check the path and its parents")
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        report.add(name, FAIL, f"{state_dir} is not a directory (or is a symlink)", "replace it with a directory")
        return
    mode = stat.S_IMODE(st.st_mode)
    problems = []
    if st.st_uid != os.geteuid():
        problems.append(f"owned by uid {st.st_uid}, not {os.geteuid()} (the user the modules run as)")
    if mode & 0o077:
        problems.append(f"mode {mode:04o} lets others in (expected 0700)")
    if problems:
        report.add(
            name,
            FAIL,
            f"{state_dir}: " + "; ".join(problems),
            f"chown {os.geteuid()} {state_dir} && chmod 0700 {state_dir}",
        )
    else:
        report.add(name, OK, f"{state_dir}: owner uid {st.st_uid}, mode {mode:04o}")
    fs = os.statvfs(state_dir)
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES or fs.f_favail == 0:
        report.add(
            "state_dir free space",
            FAIL,
            f"{free // 1024} KiB and {fs.f_favail} inodes free on the file system of {state_dir}",
            f"free space there: sealing writes a new file beside the old one (at least {MIN_FREE_BYTES // 2**20} MiB)",
        )
    else:
        report.add("state_dir free space", OK, f"{free // 2**20} MiB free")


def check_tcti(report: Report, tcti: str) -> bool:
    """Is the device there and ours, or does the swtpm port answer? True when it is worth opening."""
    kind, _sep, conf = tcti.partition(":")
    if kind == "device":
        path = conf or "/dev/tpmrm0"
        if not os.path.exists(path):
            report.add("TCTI", FAIL, f"{path} does not exist", "enable the TPM in the firmware, or load its driver")
            return False
        if not os.access(path, os.R_OK | os.W_OK):
            report.add(
                "TCTI", FAIL, f"{path} is not readable and writable by this user", "run as root or join group tss"
            )
            return False
        report.add("TCTI", OK, f"{path} present and accessible")
        return True
    if kind == "swtpm":
        opts = dict(part.partition("=")[::2] for part in conf.split(",") if part)
        host, port = opts.get("host", "127.0.0.1"), int(opts.get("port", "2321"))
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as err:
            report.add(
                "TCTI",
                FAIL,
                f"swtpm at {host}:{port} does not answer ({err.strerror or err})",
                "start swtpm (systemctl start the swtpm unit) or fix the tcti option",
            )
            return False
        report.add("TCTI", OK, f"swtpm at {host}:{port} answers")
        return True
    report.add("TCTI", OK, f"'{tcti}' (not checked beyond opening it)")
    return True


def _properties(node, first: int, count: int) -> dict[int, int]:
    _more, data = node.ctx.get_capability(CAP_TPM_PROPERTIES, first, count)
    return {int(p.property): int(p.value) for p in data.data.tpmProperties}


def _vendor(value: int) -> str:
    return value.to_bytes(4, "big").decode("ascii", "replace").strip("\x00 ") or f"0x{value:08x}"


def check_tpm(report: Report, node, pcrs: PcrSelection) -> None:
    fixed = _properties(node, PT_MANUFACTURER, PT_FIRMWARE_VERSION_2 - PT_MANUFACTURER + 1)
    firmware = f"{fixed.get(PT_FIRMWARE_VERSION_1, 0):08x}.{fixed.get(PT_FIRMWARE_VERSION_2, 0):08x}"
    report.add("TPM", OK, f"vendor {_vendor(fixed.get(PT_MANUFACTURER, 0))}, firmware {firmware}")

    var = _properties(node, PT_PERMANENT, PT_LOCKOUT_RECOVERY - PT_PERMANENT + 1)
    counter, limit = var.get(PT_LOCKOUT_COUNTER, 0), var.get(PT_MAX_AUTH_FAIL, 0)
    interval = var.get(PT_LOCKOUT_INTERVAL, 0)
    if var.get(PT_PERMANENT, 0) & PERMANENT_IN_LOCKOUT:
        report.add(
            "dictionary-attack lockout",
            WARN,
            f"the TPM is in lockout ({counter} of {limit} failures; one is forgiven every {interval} s). "
            "ironclaw's SRK and keyslots are noDA: seal, unseal and migration still work",
            "find what sends wrong passwords; wait, or clear it: tpm2_dictionarylockout --clear-lockout",
        )
    else:
        report.add("dictionary-attack lockout", OK, f"not in lockout ({counter} of {limit} failures)")

    free_objects, free_sessions = var.get(PT_HR_TRANSIENT_AVAIL), var.get(PT_HR_LOADED_AVAIL)
    if free_objects is not None and free_objects < MIN_FREE_OBJECTS:
        report.add(
            "free TPM slots",
            FAIL,
            f"{free_objects} object slots free (an unseal needs {MIN_FREE_OBJECTS})",
            "flush leftover objects and sessions: tpm2_flushcontext -t -s (use /dev/tpmrm0, the resource manager)",
        )
    else:
        report.add("free TPM slots", OK, f"{free_objects} object slots, {free_sessions} session slots free")

    _more, data = node.ctx.get_capability(CAP_PCRS, 0, 1)
    allocated = {}
    by_alg = {alg: bank for bank, (alg, _size) in BANKS.items()}
    for sel in data.data.assignedPCR:
        bank = by_alg.get(int(sel.hash))
        if bank is not None:
            bitmap = bytes(sel.pcrSelect)[: int(sel.sizeofSelect)]
            allocated[bank] = {i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1}
    missing = [f"{bank}:{i}" for bank, indices in pcrs.banks for i in indices if i not in allocated.get(bank, set())]
    if missing:
        report.add(
            "PCR banks",
            FAIL,
            f"{', '.join(missing)} not allocated (allocated: {', '.join(sorted(allocated)) or 'none'})",
            "allocate the bank (tpm2_pcrallocate, then reboot) or choose PCRs of an allocated bank in the policy",
        )
    else:
        report.add("PCR banks", OK, f"{pcrs} allocated (banks: {', '.join(sorted(allocated))})")

    srk = nv = None
    try:
        srk = node.srk(required=True)
        report.add("SRK", OK, f"present at 0x81000001 with the expected template, name {node.name(srk).hex()}")
    except IronclawError as err:
        report.add("SRK", FAIL, str(err), "enroll the node (playbook enroll; ironclaw_node state=present)")
    try:
        nv = node.epoch_nv(required=True)
        report.add("epoch NV index", OK, f"present at 0x01c10000, epoch {node.epoch()}")
    except IronclawError as err:
        report.add(
            "epoch NV index", FAIL, str(err), "enroll the node (ironclaw_node state=present) and re-seal its VMs"
        )
    del srk, nv


def check_clock(report: Report, controller_time: float | None) -> None:
    if controller_time is None:
        report.add("clock skew", SKIPPED, "no controller time given")
        return
    skew = time.time() - controller_time
    if abs(skew) > MAX_CLOCK_SKEW:
        report.add(
            "clock skew",
            FAIL,
            f"the node's clock is {skew:+.0f} s off the controller's (at most {MAX_CLOCK_SKEW} s are tolerated)",
            "run NTP (chrony or systemd-timesyncd) on both",
        )
    else:
        report.add("clock skew", OK, f"{skew:+.1f} s against the controller")


def run_checks(
    backend: str,
    tcti: str,
    state_dir: str,
    pcrs: PcrSelection | None = None,
    controller_time: float | None = None,
) -> Report:
    report = Report()
    check_libraries(report, backend)
    check_state_dir(report, state_dir)
    check_clock(report, controller_time)
    if backend != "tpm2":
        return report
    if not check_tcti(report, tcti):
        report.add("TPM", SKIPPED, "not reached: see TCTI")
        return report
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import tpm_errors  # noqa: PLC0415
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode  # noqa: PLC0415

    try:
        with TpmNode(tcti) as node, tpm_errors("asking the TPM for its properties"):
            check_tpm(report, node, pcrs or PcrSelection.parse(DEFAULT_PCRS))
    except IronclawError as err:
        report.add("TPM", FAIL, str(err), "see the TPM response code in the message; docs/troubleshooting.md")
    return report
