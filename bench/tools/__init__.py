"""The tools compared: each seals and unseals N secrets of one VM against one TPM.

A tool is a class; the benchmark makes a new instance for every run, against a
fresh swtpm. The constructor does the one-time setup a user does once per
node (not timed, its TPM commands reported apart), then ``seal()`` and
``unseal()`` are timed and counted, and ``check()`` (not timed) proves that
what was unsealed is what was sealed. Whenever a client of the TPM (a
process, or an in-process context) has finished, the tool calls
``released()``, which cleans up as /dev/tpmrm0 would (see bench.tpmrm).
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import time
from pathlib import Path

from bench import tpmrm

SECRET_BYTES = 64


class BenchError(RuntimeError):
    """A tool failed or returned something else than it was given."""


@dataclasses.dataclass(frozen=True)
class Secret:
    name: str
    data: bytes


def make_secrets(count: int) -> list[Secret]:
    """count secrets of SECRET_BYTES bytes; hex text, so a playbook can pass them inline."""
    return [Secret(f"secret-{i:04d}", secrets.token_hex(SECRET_BYTES // 2).encode()) for i in range(count)]


@dataclasses.dataclass(frozen=True)
class CountedTpm:
    """Where a tool finds its TPM: ``tcti`` goes through the command counter, host:port is the swtpm itself."""

    tcti: str
    host: str
    port: int


class Tool:
    key = ""  # in the JSON
    label = ""  # in the table and the plot
    binaries: tuple[str, ...] = ()
    # One process (and its own TPM session) per secret: a full run at N=1000 takes minutes.
    per_secret_process = False

    def __init__(self, tpm: CountedTpm, workdir: Path, secrets: list[Secret]) -> None:
        self.tpm = tpm
        self.tcti = tpm.tcti
        self.workdir = workdir
        self.secrets = secrets
        # Processes the benchmark itself started (a cross-check of the measured count).
        self.launches = 0
        # Sessions and objects its clients left in the TPM, and the time spent flushing them (not timed).
        self.leftovers = 0
        self.untimed_seconds = 0.0

    def released(self) -> None:
        """A client of the TPM has finished: flush what it left there, as /dev/tpmrm0 does on close."""
        start = time.perf_counter()
        self.leftovers += tpmrm.flush_leftovers(self.tpm.host, self.tpm.port)
        self.untimed_seconds += time.perf_counter() - start

    @classmethod
    def missing(cls) -> str | None:
        """Why this tool cannot run on this machine, or None."""
        absent = [name for name in cls.binaries if shutil.which(name) is None]
        return f"not installed: {', '.join(absent)}" if absent else None

    def seal(self) -> None:
        raise NotImplementedError

    def unseal(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError
