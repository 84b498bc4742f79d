"""The machine and the versions a result was measured with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

DEBIAN_PACKAGES = (
    "swtpm",
    "libtss2-esys-3.0.2-0",
    "python3-tpm2-pytss",
    "clevis",
    "clevis-tpm2",
    "tpm2-tools",
    "systemd",
)
PYTHON_PACKAGES = ("ansible-core", "tpm2-pytss", "cryptography")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _debian_version(package: str) -> str | None:
    done = subprocess.run(  # noqa: S603 - fixed argument list
        ["/usr/bin/dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _python_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    debian = Path("/etc/debian_version")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "debian": debian.read_text().strip() if debian.exists() else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "debian_packages": {name: _debian_version(name) for name in DEBIAN_PACKAGES},
        "venv_packages": {name: _python_version(name) for name in PYTHON_PACKAGES},
    }
