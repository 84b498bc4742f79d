"""A real software TPM (``swtpm socket --tpm2``) for tests.

Each :class:`Swtpm` is its own process with its own state directory, listening
on loopback on two consecutive ports: the TPM command channel on ``port`` and
the control channel on ``port + 1``. That layout is what the tss2 ``swtpm:``
TCTI expects: it is given one port and opens the control channel at port+1.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 20


class RigError(RuntimeError):
    """The rig could not provide what a test asked for."""


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bind_port_pair(host: str = HOST) -> tuple[socket.socket, socket.socket]:
    """Two sockets bound to host:P and host:P+1, P picked at random below the ephemeral range.

    Below it because the swtpm TCTI opens a new connection for every TPM
    command, so ephemeral ports are taken and left in TIME_WAIT all the time;
    one of them could otherwise take a TPM's port while it restarts.
    """
    high = _ephemeral_ports_start() - 2
    low = 10000 if high > 11000 else 1024
    for _attempt in range(200):
        port = random.randrange(low, high)
        first, second = socket.socket(), socket.socket()
        try:
            first.bind((host, port))
            second.bind((host, port + 1))
        except OSError:
            first.close()
            second.close()
            continue
        return first, second
    raise RigError(f"no two consecutive free TCP ports on {host} in {low}-{high + 1}")


def free_port_pair(host: str = HOST) -> int:
    """Return P such that P and P+1 were both free on host a moment ago.

    Another process may still take one before the caller binds it, so callers
    retry on collision.
    """
    first, second = bind_port_pair(host)
    port = first.getsockname()[1]
    first.close()
    second.close()
    return port


def wait_for_port(host: str, port: int, deadline: float, alive=lambda: True) -> bool:
    """Poll until host:port accepts a connection; False if alive() turns false or time runs out."""
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def reap(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Terminate proc, kill it if it does not exit in time, and reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class Swtpm:
    """One swtpm process; ``with Swtpm() as tpm:`` or call :meth:`close`.

    ``restart()`` is a reboot: the process ends and a new one starts on the
    same state directory and ports, so PCRs and loaded objects are reset while
    NV indices and persistent objects survive.

    ``manufacture``, if given, is called with the empty state directory before
    the first start, e.g. ``rig.ekca.EkCa.manufacture`` for a TPM whose EK
    certificates a test CA signed; without it swtpm starts on a blank state.
    """

    def __init__(
        self, host: str = HOST, binary: str = "swtpm", state_from: Path | None = None, manufacture=None
    ) -> None:
        """`state_from`: start from a copy of that state directory (a stopped swtpm's), as a TPM that was moved;
        `manufacture`: see the class docstring (not with `state_from`)."""
        if state_from is not None and manufacture is not None:
            raise RigError("state_from and manufacture exclude each other: a copied state is already manufactured")
        self.host = host
        self.binary = shutil.which(binary) or binary
        self.root = Path(tempfile.mkdtemp(prefix="ironclaw-swtpm-"))
        self.state_dir = self.root / "state"
        if state_from is None:
            self.state_dir.mkdir()
        else:
            shutil.copytree(state_from, self.state_dir)
        self.log_path = self.root / "swtpm.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._procs: list[subprocess.Popen] = []
        # Safety net for objects that are never closed (interpreter exit, GC).
        self._finalizer = weakref.finalize(self, Swtpm._cleanup, self._procs, self.root)
        if manufacture is not None:
            try:
                manufacture(self.state_dir)
            except BaseException:
                self.close()
                raise
        self.start()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self.running:
            raise RigError(f"swtpm already running as pid {self.proc.pid}")
        keep_port = self.port is not None
        for _attempt in range(PORT_ATTEMPTS):
            if not keep_port:
                self.port = free_port_pair(self.host)
            if self._spawn():
                return
            # Ports are kept across restarts so a TCTI string stays valid; the
            # old listener may linger a moment, so retry the same pair first.
            if keep_port:
                time.sleep(0.1)
        raise RigError(f"swtpm did not start on {self.host}:{self.port}/{self.port + 1}; log:\n{self.log_text()}")

    def _spawn(self) -> bool:
        cmd = [
            self.binary,
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--server",
            f"type=tcp,port={self.port},bindaddr={self.host}",
            "--ctrl",
            f"type=tcp,port={self.port + 1},bindaddr={self.host}",
            "--flags",
            "not-need-init,startup-clear",
            "--log",
            f"file={self.log_path},level=1",
        ]
        # If the test process dies without cleaning up (SIGKILL, a hard
        # timeout), the kernel ends swtpm too. The signal follows the thread
        # that started it, so start TPMs from a thread that outlives them.
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._procs.append(self.proc)
        deadline = time.monotonic() + START_TIMEOUT

        def alive() -> bool:
            return self.running

        if wait_for_port(self.host, self.port + 1, deadline, alive) and wait_for_port(
            self.host, self.port, deadline, alive
        ):
            return True
        reap(self.proc)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the process (SIGTERM, then SIGKILL after timeout seconds) and reap it."""
        if self.proc is not None:
            reap(self.proc, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the state directory and log."""
        self._finalizer()

    @staticmethod
    def _cleanup(procs: list[subprocess.Popen], root: Path) -> None:
        for proc in procs:
            reap(proc)
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Swtpm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- facts -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Swtpm {self.tcti} {state} state={self.state_dir}>"


def pid_exists(pid: int) -> bool:
    """True if a process (not a reaped zombie's leftover) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
