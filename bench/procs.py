"""Count the processes a measured step creates, with the kernel's process events connector.

The proc connector (netlink, ``NETLINK_CONNECTOR``/``CN_IDX_PROC``, root only)
reports every fork, exec and exit on the machine. A thread follows the tree of
processes descended from this one and, between :meth:`ProcessCounter.start`
and :meth:`ProcessCounter.stop`, counts new processes (threads excluded: a
thread's pid differs from its tgid) and exec calls. Both ends of the window are
marked by a sentinel ``/bin/true`` whose exit event the thread must see, so
every event of the step, which ended before the second sentinel started, has
been read when the count is returned.

A measurement is exact or absent: if the kernel dropped events (``ENOBUFS``,
a busy machine) or the connector is unavailable, the count is ``None``.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import struct
import threading

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_EXIT = 0x80000000

NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
EVENT_DATA = NLMSG.size + CN_MSG.size + EVENT.size
FORK = struct.Struct("=IIII")  # parent_pid, parent_tgid, child_pid, child_tgid
PID_TGID = struct.Struct("=II")  # exec and exit start with process_pid, process_tgid
RCVBUF = 64 << 20
SENTINEL = "/bin/true"
SENTINEL_TIMEOUT = 30.0
RECV_TIMEOUT = 0.2


class ProcessCounter:
    """``with ProcessCounter() as procs:`` then ``procs.start()`` … ``procs.stop()`` → (processes, execs) or None."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._tracked = {os.getpid()}
        self._counting = False
        self._lost = False
        self._processes = self._execs = 0
        self._exited: collections.deque = collections.deque(maxlen=64)
        self._sentinel: int | None = None
        self._sentinel_seen = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        try:
            self._sock = self._subscribe()
        except OSError as exc:
            self.error = f"process events connector unavailable ({exc}); process counts not measured"
            return
        self._thread = threading.Thread(target=self._read_events, name="proc-events", daemon=True)
        self._thread.start()

    @staticmethod
    def _subscribe() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root): above rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn_msg = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(NLMSG.pack(NLMSG.size + len(cn_msg), NLMSG_DONE, 0, 0, 0) + cn_msg)
            sock.settimeout(RECV_TIMEOUT)  # so that close() can end the reading thread
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def available(self) -> bool:
        return self._sock is not None

    # -- window ----------------------------------------------------------------
    def start(self) -> None:
        """Open the window: processes created from now on count."""
        if not self.available:
            return
        self._mark()
        with self._lock:
            self._counting, self._lost = True, False
            self._processes = self._execs = 0

    def stop(self) -> tuple[int, int] | None:
        """Close the window; (processes, execs) created in it, or None if events were lost."""
        if not self.available:
            return None
        seen = self._mark()
        with self._lock:
            self._counting = False
            if self._lost or not seen:
                return None
            # The closing sentinel forked and exec'd inside the window; it is not part of the step.
            return self._processes - 1, self._execs - 1

    def _mark(self) -> bool:
        """Run a sentinel process and wait until its exit event (its last) has been read."""
        with self._lock:
            self._sentinel = None
            self._sentinel_seen.clear()
            # Pids are handed out cyclically: none that exits from now on is the sentinel's, but the sentinel.
            self._exited.clear()
        pid = os.posix_spawn(SENTINEL, [SENTINEL], {})
        with self._lock:
            self._sentinel = pid
            if pid in self._exited:  # its exit was read before posix_spawn returned
                self._sentinel_seen.set()
        os.waitpid(pid, 0)
        return self._sentinel_seen.wait(SENTINEL_TIMEOUT)

    # -- events ------------------------------------------------------------------
    def _read_events(self) -> None:
        me = os.getpid()
        while not self._stopping.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                with self._lock:
                    self._lost = True
                continue
            if len(data) < EVENT_DATA:
                continue
            what, _cpu, _ts = EVENT.unpack_from(data, NLMSG.size + CN_MSG.size)
            with self._lock:
                if what == PROC_EVENT_FORK:
                    _ppid, ptgid, pid, tgid = FORK.unpack_from(data, EVENT_DATA)
                    if ptgid in self._tracked and pid == tgid:
                        self._tracked.add(tgid)
                        if self._counting:
                            # Counted, not collected: a window can see more processes than there are pids.
                            self._processes += 1
                elif what == PROC_EVENT_EXEC:
                    _pid, tgid = PID_TGID.unpack_from(data, EVENT_DATA)
                    if tgid in self._tracked and self._counting:
                        self._execs += 1
                elif what == PROC_EVENT_EXIT:
                    pid, tgid = PID_TGID.unpack_from(data, EVENT_DATA)
                    if pid == tgid and tgid in self._tracked and tgid != me:
                        self._tracked.discard(tgid)
                        # Our sentinel may exit before posix_spawn has returned its pid.
                        self._exited.append(tgid)
                        if tgid == self._sentinel:
                            self._sentinel_seen.set()

    def close(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ProcessCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
