"""What /dev/tpmrm0 does when a client closes it, for a swtpm that has no resource manager.

The kernel's TPM resource manager flushes every session and transient object
a process leaves in the TPM when it closes the device. The swtpm socket has
none, so leftovers pile up across processes until the TPM runs out of session
slots (systemd-creds 252's ``decrypt`` leaves one HMAC session per call: the
third call fails with "out of memory for session contexts"). After each client
the benchmark flushes them itself, talking to the swtpm directly, so these
commands are neither counted nor timed; how many there were is reported.
"""

from __future__ import annotations

import socket
import struct

HEADER = struct.Struct(">HII")  # tag, size, command or response code
TPM_ST_NO_SESSIONS = 0x8001
TPM_CC_FLUSH_CONTEXT = 0x165
TPM_CC_GET_CAPABILITY = 0x17A
TPM_CAP_HANDLES = 0x1
# Loaded sessions, saved sessions, transient objects.
HANDLE_RANGES = (0x02000000, 0x03000000, 0x80000000)
BATCH = 64
TIMEOUT = 10


class TpmrmError(RuntimeError):
    pass


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise TpmrmError("the swtpm closed the connection mid-response")
        data += chunk
    return bytes(data)


def _command(host: str, port: int, code: int, body: bytes) -> bytes:
    """Send one TPM command (no sessions) on a new connection, as the swtpm TCTI does; the response body."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(HEADER.pack(TPM_ST_NO_SESSIONS, HEADER.size + len(body), code) + body)
        _tag, size, rc = HEADER.unpack(_recv_exact(sock, HEADER.size))
        response = _recv_exact(sock, size - HEADER.size)
    if rc != 0:
        raise TpmrmError(f"TPM command 0x{code:x} failed with 0x{rc:x}")
    return response


def leftovers(host: str, port: int) -> list[int]:
    """Handles of the sessions and transient objects now in the TPM."""
    found = []
    for first in HANDLE_RANGES:
        start = first
        while True:
            body = _command(host, port, TPM_CC_GET_CAPABILITY, struct.pack(">III", TPM_CAP_HANDLES, start, BATCH))
            more, _capability, count = struct.unpack_from(">BII", body)
            handles = [h for h in struct.unpack_from(f">{count}I", body, 9) if h >> 24 == first >> 24]
            found += handles
            if not more or not handles:
                break
            start = handles[-1] + 1
    return found


def flush_leftovers(host: str, port: int) -> int:
    """Flush every session and transient object; how many there were."""
    handles = leftovers(host, port)
    for handle in handles:
        _command(host, port, TPM_CC_FLUSH_CONTEXT, struct.pack(">I", handle))
    return len(handles)
