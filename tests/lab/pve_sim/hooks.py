"""Hookscripts as PVE::GuestHelpers runs them.

``hookscript: local:snippets/<file>`` names ``<file>`` in the snippets
directory of the node-local storage ``local``, i.e. ``/var/lib/vz/snippets/``
on the node that runs the VM. It runs as ``<script> <vmid> <phase>`` at
``pre-start``, ``post-start``, ``pre-stop`` and ``post-stop``; its output goes to
the task output (stdout of ``qm``). A failing ``pre-start`` aborts the start;
a failure in any other phase is only reported.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from pve_sim import paths
from pve_sim.errors import PveError

STORAGES = ("local",)


def check_hookscript(volid: str):
    """The script's path, or PveError with Proxmox's messages (GuestHelpers::check_hookscript)."""
    storage, sep, volname = volid.partition(":")
    if not sep or not storage:
        raise PveError(f"unable to parse volume ID '{volid}'")
    if storage not in STORAGES:
        raise PveError(f"storage '{storage}' does not exist")
    match = re.fullmatch(r"(images|iso|vztmpl|backup|snippets|import)/(.+)", volname)
    if not match:
        raise PveError(f"unable to parse directory volume name '{volname}'")
    if match[1] != "snippets":
        raise PveError(f"'{volid}' is not in the snippets directory")
    path = paths.storage_local() / "snippets" / match[2]
    if not path.is_file():
        raise PveError(f"script '{volid}' does not exist")
    if not os.access(path, os.X_OK):
        raise PveError(f"script '{volid}' is not executable")
    return path


def run_hookscript(options: dict[str, str], vmid: int, phase: str, stop_on_error: bool = False) -> None:
    volid = options.get("hookscript")
    if not volid:
        return
    try:
        path = check_hookscript(volid)
        argv = [str(path), str(vmid), phase]
        sys.stdout.flush()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stdout, check=False)
        if proc.returncode < 0:
            raise PveError(f"command '{shlex.join(argv)}' failed: got signal {-proc.returncode}")
        if proc.returncode:
            raise PveError(f"command '{shlex.join(argv)}' failed: exit code {proc.returncode}")
    except PveError as err:
        message = f"hookscript error for {vmid} on {phase}: {err.message}\n"
        if stop_on_error:
            raise PveError(message) from None
        # A warning inside a task goes to the task output.
        sys.stdout.write(message)
        sys.stdout.flush()
