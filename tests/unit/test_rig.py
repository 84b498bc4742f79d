"""The swtpm rig itself: real TPM processes, isolation, reboots, command counting.

Runs on tpm2-pytss 3.x (venv) and on Debian 12's 1.2 (/usr/bin/python3).
"""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_CC, TPM2_ECC, TPM2_HC, TPMA_NV, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ECC_PARMS,
    TPMS_NV_PUBLIC,
    TPMT_ECC_SCHEME,
    TPMT_HA,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_SYM_DEF_OBJECT,
    TPMU_HA,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from rig.counter import COMMAND_NAMES, TpmCommandCounter
from rig.swtpm import Swtpm, pid_exists, reap

NV_INDEX = 0x01500016
PERSISTENT = 0x81000001
GET_RANDOM_8 = struct.pack(">HIIH", 0x8001, 12, int(TPM2_CC.GetRandom), 8)  # TPM_ST_NO_SESSIONS


class Esapi:
    """ESAPI context that is always closed, also when an assertion fails."""

    def __init__(self, tcti: str) -> None:
        self.ctx = ESAPI(tcti)

    def __enter__(self) -> ESAPI:
        return self.ctx

    def __exit__(self, *exc) -> None:
        self.ctx.close()


def define_nv(ctx: ESAPI, data: bytes) -> None:
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=NV_INDEX,
            nameAlg=TPM2_ALG.SHA256,
            attributes=TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE,
            dataSize=len(data),
        )
    )
    handle = ctx.nv_define_space(b"", public)
    ctx.nv_write(handle, data)


def read_nv(ctx: ESAPI, size: int) -> bytes:
    return bytes(ctx.nv_read(ctx.tr_from_tpmpublic(NV_INDEX), size))


PRIMARY = TPMT_PUBLIC(
    type=TPM2_ALG.ECC,
    nameAlg=TPM2_ALG.SHA256,
    objectAttributes=TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN,
    parameters=TPMU_PUBLIC_PARMS(
        eccDetail=TPMS_ECC_PARMS(
            symmetric=TPMT_SYM_DEF_OBJECT(
                algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB)
            ),
            scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
            curveID=TPM2_ECC.NIST_P256,
            kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
        )
    ),
)


def persist_primary(ctx: ESAPI) -> None:
    handle = ctx.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=PRIMARY), ESYS_TR.OWNER)[0]
    ctx.evict_control(ESYS_TR.OWNER, handle, PERSISTENT)
    ctx.flush_context(handle)


def public_of(ctx: ESAPI, handle) -> bytes:
    return bytes(ctx.read_public(handle)[0].marshal())


def primary_public(ctx: ESAPI) -> bytes:
    """The public part of the primary key persist_primary persists, made again and flushed."""
    handle = ctx.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=PRIMARY), ESYS_TR.OWNER)[0]
    try:
        return public_of(ctx, handle)
    finally:
        ctx.flush_context(handle)


def persistent_handles(ctx: ESAPI) -> set[int]:
    _more, data = ctx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 64)
    return {int(h) for h in data.data.handles}


def pcr7(ctx: ESAPI) -> bytes:
    _counter, _selection, digests = ctx.pcr_read(TPML_PCR_SELECTION.parse("sha256:7"))
    return bytes(digests[0])


def extend_pcr7(ctx: ESAPI, data: bytes) -> None:
    digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=hashlib.sha256(data).digest()))
    ctx.pcr_extend(ESYS_TR.PCR7, TPML_DIGEST_VALUES([digest]))


def recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {size} bytes"
        buf += chunk
    return buf


# -- swtpm -----------------------------------------------------------------


@pytest.mark.swtpm
def test_two_tpms_are_separate_processes_with_separate_state(swtpm_pair):
    first, second = swtpm_pair
    assert first.pid != second.pid
    assert {first.port, first.port + 1}.isdisjoint({second.port, second.port + 1})
    assert first.tcti == f"swtpm:host=127.0.0.1,port={first.port}"
    with Esapi(first.tcti) as a, Esapi(second.tcti) as b:
        assert len(a.get_random(16)) == 16
        assert len(b.get_random(16)) == 16

        define_nv(a, b"only on first")
        persist_primary(a)

        assert read_nv(a, 13) == b"only on first"
        assert PERSISTENT in persistent_handles(a)
        with pytest.raises(TSS2_Exception):
            b.tr_from_tpmpublic(NV_INDEX)
        assert PERSISTENT not in persistent_handles(b)


@pytest.mark.swtpm
def test_restart_is_a_reboot(swtpm):
    with Esapi(swtpm.tcti) as ctx:
        define_nv(ctx, b"survives reboot")
        persist_primary(ctx)
        zero = pcr7(ctx)
        extend_pcr7(ctx, b"boot event")
        assert pcr7(ctx) != zero
    old_pid, old_tcti = swtpm.pid, swtpm.tcti

    swtpm.restart()

    assert swtpm.pid != old_pid and not pid_exists(old_pid)
    assert swtpm.tcti == old_tcti
    with Esapi(swtpm.tcti) as ctx:
        assert read_nv(ctx, 15) == b"survives reboot"
        assert PERSISTENT in persistent_handles(ctx)
        assert pcr7(ctx) == zero


@pytest.mark.swtpm
def test_copy_of_a_stopped_tpms_state_is_the_same_tpm_and_leaves_the_original_alone(swtpm):
    # The integration tests' lab templates (playbook_rig.enrolled_lab) rest on this: a swtpm started from a
    # copy of another's state has its NV, persistent keys and seeds, on ports of its own.
    with Esapi(swtpm.tcti) as ctx:
        define_nv(ctx, b"copied with state")
        persist_primary(ctx)
        persisted = public_of(ctx, ctx.tr_from_tpmpublic(PERSISTENT))
        assert primary_public(ctx) == persisted  # a primary key is derived from the owner seed
    swtpm.stop()
    with Swtpm(state_from=swtpm.state_dir) as copy:
        assert copy.port not in (swtpm.port, swtpm.port + 1) and copy.state_dir != swtpm.state_dir
        with Esapi(copy.tcti) as ctx:
            assert read_nv(ctx, 17) == b"copied with state"
            assert public_of(ctx, ctx.tr_from_tpmpublic(PERSISTENT)) == persisted
            assert primary_public(ctx) == persisted, "the copy has the same seeds"
            ctx.nv_undefine_space(ctx.tr_from_tpmpublic(NV_INDEX))
            with pytest.raises(TSS2_Exception):
                ctx.tr_from_tpmpublic(NV_INDEX)
    swtpm.start()
    with Esapi(swtpm.tcti) as ctx:
        assert read_nv(ctx, 17) == b"copied with state", "a copy's changes must not reach the original"


@pytest.mark.swtpm
def test_stop_leaves_no_process_and_close_removes_state():
    with Swtpm() as tpm:
        pid, root = tpm.pid, tpm.root
        assert pid_exists(pid) and tpm.running
        tpm.stop()
        assert not tpm.running and not pid_exists(pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", tpm.port), timeout=1).close()
        assert root.exists()
    assert not root.exists()


def test_reap_kills_a_process_that_ignores_sigterm():
    ignores_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", ignores_term], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # SIGTERM is ignored from here on
        started = time.monotonic()
        reap(proc, timeout=0.5)
        assert proc.returncode == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
        assert not pid_exists(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.swtpm
def test_failed_start_reports_the_log(tmp_path):
    broken = tmp_path / "swtpm"
    broken.write_text("#!/bin/sh\necho 'cannot start: simulated' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="simulated"):
        Swtpm(binary=str(broken))


# -- command counter -------------------------------------------------------


def test_command_names_match_tpm2_pytss():
    mismatched = {name: hex(code) for code, name in COMMAND_NAMES.items() if int(getattr(TPM2_CC, name)) != code}
    assert not mismatched


@pytest.mark.swtpm
def test_counter_counts_every_command_of_concurrent_contexts(counted_swtpm):
    counter, rounds = counted_swtpm.counter, 25
    contexts = [ESAPI(counted_swtpm.tcti), ESAPI(counted_swtpm.tcti)]
    try:
        counter.reset()
        errors = []

        def work(ctx):
            try:
                for _round in range(rounds):
                    assert len(ctx.get_random(8)) == 8
            except Exception as err:  # reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=work, args=(ctx,)) for ctx in contexts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert counter.by_name() == {"GetRandom": 2 * rounds}
        assert counter.total == 2 * rounds
    finally:
        for ctx in contexts:
            ctx.close()


@pytest.mark.swtpm
def test_counter_counts_commands_of_other_processes(counted_swtpm):
    child = textwrap.dedent(
        f"""
        import os
        os.environ["TSS2_LOG"] = "all+NONE"
        from tpm2_pytss import ESAPI
        ctx = ESAPI({counted_swtpm.tcti!r})
        for _ in range(3):
            ctx.get_random(4)
        ctx.pcr_read("sha256:7")
        ctx.close()
        """
    )
    counted_swtpm.counter.reset()
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    assert counted_swtpm.counter.by_name() == {"GetRandom": 3, "PCR_Read": 1}
    assert counted_swtpm.counter.commands() == ["GetRandom"] * 3 + ["PCR_Read"]


@pytest.mark.swtpm
def test_counter_reassembles_frames_split_across_reads(counted_swtpm):
    counter = counted_swtpm.counter
    counter.reset()
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in GET_RANDOM_8:
            sock.sendall(bytes([byte]))
            time.sleep(0.005)
        tag, size, rc = struct.unpack(">HII", recv_exact(sock, 10))
        body = recv_exact(sock, size - 10)
    assert (tag, rc) == (0x8001, 0)
    assert struct.unpack(">H", body[:2])[0] == 8 and len(body) == 10
    assert counter.by_name() == {"GetRandom": 1}


@pytest.mark.swtpm
def test_counter_snapshots_reset_and_survive_a_tpm_restart(counted_swtpm):
    counter = counted_swtpm.counter
    with Esapi(counted_swtpm.tcti) as ctx:
        before = counter.snapshot()
        ctx.get_random(4)
        pcr7(ctx)
        assert counter.snapshot() - before == {"GetRandom": 1, "PCR_Read": 1}
    counter.reset()
    assert counter.total == 0 and counter.by_name() == {}

    counted_swtpm.swtpm.restart()
    with Esapi(counted_swtpm.tcti) as ctx:
        ctx.get_random(4)
    assert counter.by_name() == {"GetRandom": 1}


@pytest.mark.swtpm
def test_counter_stop_closes_its_ports(swtpm):
    counter = TpmCommandCounter(swtpm)
    port = counter.port
    with Esapi(counter.tcti) as ctx:
        ctx.get_random(4)
    counter.stop()
    for p in (port, port + 1):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
    assert counter.total == 1
