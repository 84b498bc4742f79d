"""Count the TPM commands that reach a swtpm, whichever process sends them.

:class:`TpmCommandCounter` is a loopback TCP proxy with the same port layout as
swtpm (commands on P, control on P+1), so a ``swtpm:`` TCTI string pointing at
the proxy works anywhere the real one does, including in module processes
started by Ansible. Control traffic is relayed unchanged. On the command
channel every frame is parsed (``tag u16 | size u32 | commandCode u32 | ...``,
big-endian, size counting the whole frame), counted and relayed, then the
response frame is relayed back.

The tss2 ``swtpm`` TCTI opens a new TCP connection for every command, so the
proxy serves many short connections, each on its own thread.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading

from .swtpm import HOST, bind_port_pair

HEADER = struct.Struct(">HII")  # tag, size, commandCode (responseCode in replies)
MAX_FRAME = 1 << 20  # far above any TPM's buffer: larger means a broken stream

# TPM2_CC values (TPM 2.0 Library Part 2, table "TPM_CC"); test_rig checks them
# against tpm2_pytss.constants.TPM2_CC.
COMMAND_NAMES = {
    0x120: "EvictControl",
    0x121: "HierarchyControl",
    0x122: "NV_UndefineSpace",
    0x12A: "NV_DefineSpace",
    0x131: "CreatePrimary",
    0x134: "NV_Increment",
    0x137: "NV_Write",
    0x144: "Startup",
    0x147: "ActivateCredential",
    0x148: "Certify",
    0x145: "Shutdown",
    0x149: "PolicyNV",
    0x14B: "Duplicate",
    0x14E: "NV_Read",
    0x151: "PolicySecret",
    0x153: "Create",
    0x156: "Import",
    0x157: "Load",
    0x158: "Quote",
    0x15E: "Unseal",
    0x161: "ContextLoad",
    0x162: "ContextSave",
    0x165: "FlushContext",
    0x167: "LoadExternal",
    0x169: "NV_ReadPublic",
    0x16A: "PolicyAuthorize",
    0x16C: "PolicyCommandCode",
    0x171: "PolicyOR",
    0x173: "ReadPublic",
    0x176: "StartAuthSession",
    0x177: "VerifySignature",
    0x17A: "GetCapability",
    0x17B: "GetRandom",
    0x17E: "PCR_Read",
    0x17F: "PolicyPCR",
    0x180: "PolicyRestart",
    0x182: "PCR_Extend",
    0x188: "PolicyDuplicationSelect",
    0x189: "PolicyGetDigest",
}


def command_name(code: int) -> str:
    return COMMAND_NAMES.get(code, f"0x{code:x}")


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly size bytes; None on EOF before the first byte."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            if buf:
                raise ConnectionError(f"stream ended inside a frame ({len(buf)} of {size} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """Read one TPM frame; return (command or response code, whole frame), None on clean EOF."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    _tag, size, code = HEADER.unpack(header)
    if not HEADER.size <= size <= MAX_FRAME:
        raise ConnectionError(f"frame size {size} out of range")
    body = _recv_exact(sock, size - HEADER.size) if size > HEADER.size else b""
    if body is None:
        raise ConnectionError("stream ended after a frame header")
    return code, header + body


class TpmCommandCounter:
    """Proxy in front of ``target`` (anything with ``.host`` and ``.port``, e.g. a Swtpm).

    The target's port is read on every new connection, so the proxy keeps
    working across ``Swtpm.restart()``.
    """

    def __init__(self, target, host: str = HOST) -> None:
        self.target = target
        self.host = host
        self._lock = threading.Lock()
        self._commands: list[str] = []
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._die_at: int | None = None
        self._on_death = None
        self._cmd_listener, self._ctrl_listener = bind_port_pair(host)
        for listener in (self._cmd_listener, self._ctrl_listener):
            listener.listen(64)
        self.port = self._cmd_listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"tpm-counter-{self.port}", daemon=True)
        self._acceptor.start()

    # -- public API ----------------------------------------------------------
    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._commands)

    def by_name(self) -> dict[str, int]:
        return dict(self.snapshot())

    def snapshot(self) -> collections.Counter:
        """Counts so far; subtract two snapshots to count what happened in between."""
        with self._lock:
            return collections.Counter(self._commands)

    def commands(self) -> list[str]:
        """Command names in the order the TPM received them."""
        with self._lock:
            return list(self._commands)

    def reset(self) -> None:
        with self._lock:
            self._commands.clear()

    def die_at(self, n: int | None, then=None) -> None:
        """Make the n-th command from now (1-based) never reach the TPM: the proxy drops the connection, as a
        TPM that dies mid-operation does, then calls ``then`` (e.g. the Swtpm's ``stop``). None disarms it.

        Commands are counted again from zero, so ``commands()`` afterwards lists the ones up to the death."""
        with self._lock:
            self._commands.clear()
            self._die_at, self._on_death = n, then

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join()
        for listener in (self._cmd_listener, self._ctrl_listener):
            listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> TpmCommandCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TpmCommandCounter {self.tcti} -> {self.target.host}:{self.target.port} total={self.total}>"

    # -- plumbing ------------------------------------------------------------
    def _accept_loop(self) -> None:
        handlers = {self._cmd_listener: self._relay_commands, self._ctrl_listener: self._relay_raw}
        with selectors.DefaultSelector() as selector:
            for listener in handlers:
                selector.register(listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _events in selector.select(timeout=0.1):
                    client, _addr = key.fileobj.accept()
                    is_ctrl = key.fileobj is self._ctrl_listener
                    thread = threading.Thread(target=self._serve, args=(handlers[key.fileobj], client, is_ctrl))
                    thread.daemon = True
                    with self._lock:
                        self._threads.add(thread)
                    thread.start()

    def _serve(self, handler, client: socket.socket, is_ctrl: bool) -> None:
        upstream = None
        try:
            upstream = socket.create_connection((self.target.host, self.target.port + int(is_ctrl)), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            handler(client, upstream)
        except OSError:
            pass  # the client sees its connection close, as with a dead TPM
        finally:
            with self._lock:
                self._conns.difference_update((client, upstream))
                self._threads.discard(threading.current_thread())
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def _relay_commands(self, client: socket.socket, upstream: socket.socket) -> None:
        while True:
            request = _recv_frame(client)
            if request is None:
                return
            code, frame = request
            # Counted before the TPM sees it, so a caller that got its answer
            # always finds its command already counted.
            with self._lock:
                self._commands.append(command_name(code))
                dies = self._die_at is not None and len(self._commands) == self._die_at
                if dies:
                    self._die_at, on_death = None, self._on_death
            if dies:
                if on_death is not None:
                    on_death()
                return
            upstream.sendall(frame)
            response = _recv_frame(upstream)
            if response is None:
                return
            client.sendall(response[1])

    @staticmethod
    def _relay_raw(client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        open_ends = 2
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            while open_ends:
                for key, _events in selector.select():
                    data = key.fileobj.recv(65536)
                    if data:
                        peer[key.fileobj].sendall(data)
                    else:
                        selector.unregister(key.fileobj)
                        peer[key.fileobj].shutdown(socket.SHUT_WR)
                        open_ends -= 1
