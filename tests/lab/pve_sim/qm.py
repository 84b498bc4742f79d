"""``qm``: the VM commands of the simulator (see README.md for what each one does).

Messages and exit codes follow qemu-server (PVE/CLI/qm.pm, PVE/API2/Qemu.pm,
PVE/QemuServer.pm, PVE/QemuMigrate.pm) and pve-guest-common. Commands that
Proxmox runs as a foreground task (start, stop, shutdown, migrate, create)
report errors the way a failed task does (see errors.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

from pve_sim import cluster, hooks, paths, runstate, vmconfig
from pve_sim.args import Command
from pve_sim.errors import PveError, config_missing, fail, param_error

SMBIOS1_UUID = re.compile(r"[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}")
SMBIOS1_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
SMBIOS1_KEYS = ("uuid", "version", "serial", "manufacturer", "product", "sku", "family", "base64")
DNS_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)*")
LOCKS = ("backup", "clone", "create", "migrate", "rollback", "snapshot", "snapshot-delete", "suspending", "suspended")
DEFAULT_SHUTDOWN_TIMEOUT = 60
# Options `qm create` and `qm set` accept besides hookscript/delete, with their types.
VM_OPTIONS = {"name": "str", "smbios1": "str", "acpi": "bool", "memory": "int", "onboot": "bool", "description": "str"}


class _Task:
    """Marks errors raised inside a task, which the CLI reports differently."""

    def __init__(self):
        self.started = False


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _log(message: str, error: bool = False) -> None:
    """One line of a migration task log (AbstractMigrate's log format)."""
    prefix = f"{_now()} ERROR:" if error else _now()
    for line in message.rstrip("\n").split("\n"):
        sys.stdout.write(f"{prefix} {line}\n")
    sys.stdout.flush()


def _load_local(vmid: int) -> vmconfig.VmConfig:
    config = vmconfig.load(paths.config_path(paths.nodename(), vmid))
    if config is None:
        raise config_missing(paths.nodename(), vmid)
    return config


def _check_lock(config: vmconfig.VmConfig) -> None:
    if config.options.get("lock"):
        raise PveError(f"VM is locked ({config.options['lock']})")


def _check_vm_options(values: dict, usage: str) -> dict[str, str]:
    """Validate the VM options of create/set; their config form (booleans as 0/1)."""
    options = {}
    for key, kind in VM_OPTIONS.items():
        if key not in values:
            continue
        value = values[key]
        if key == "name" and not DNS_NAME.fullmatch(value):
            raise param_error({key: "value does not look like a valid DNS name"}, usage)
        if key == "smbios1":
            problem = smbios1_problem(value)
            if problem:
                raise param_error({key: f"invalid format - {problem}"}, usage)
        if key == "memory" and value < 16:
            raise param_error({key: "value must have a minimum value of 16"}, usage)
        options[key] = str(int(value)) if kind == "bool" else str(value)
    return options


def smbios1_problem(value: str) -> str | None:
    """Why `value` is not a valid smbios1 property string (QemuServer's $smbios1_fmt), or None."""
    seen = set()
    for item in value.split(","):
        key, sep, text = item.partition("=")
        if not sep:
            return f"value without key, but schema does not define a default key: '{item}'"
        if key not in SMBIOS1_KEYS:
            return f"property is not defined in schema and the schema does not allow additional properties: '{key}'"
        if key in seen:
            return f"duplicate key in comma-separated list property: {key}"
        seen.add(key)
        if key == "uuid" and not SMBIOS1_UUID.fullmatch(text):
            return f"value does not match the regex pattern: uuid '{text}'"
        if key == "base64" and text not in ("0", "1"):
            return f"type check ('boolean') failed - got '{text}'"
        if key not in ("uuid", "base64") and not SMBIOS1_BASE64.fullmatch(text):
            return f"value does not match the regex pattern: {key} '{text}'"
    return None


# -- commands -----------------------------------------------------------------


def cmd_config(argv: list[str], task: _Task) -> int:
    values = Command("qm config", ["vmid"], {"current": "bool", "snapshot": "str"}).parse(argv)
    config = _load_local(values["vmid"])
    for key, value in sorted(config.for_display().items()):
        sys.stdout.write(f"{key}: {value}\n")
    return 0


def cmd_status(argv: list[str], task: _Task) -> int:
    values = Command("qm status", ["vmid"], {"verbose": "bool"}).parse(argv)
    _load_local(values["vmid"])
    status = "running" if runstate.is_running(values["vmid"]) else "stopped"
    sys.stdout.write(f"status: {status}\n")
    return 0


def cmd_start(argv: list[str], task: _Task) -> int:
    command = Command("qm start", ["vmid"], {"migratedfrom": "str", "skiplock": "bool", "timeout": "int"})
    values = command.parse(argv)
    vmid = values["vmid"]
    source = values.get("migratedfrom")
    task.started = True
    # On a migration target the config is still on the source node.
    node = source or paths.nodename()
    config = vmconfig.load(paths.config_path(node, vmid))
    if config is None:
        raise config_missing(node, vmid)
    if not values.get("skiplock") and not source:
        _check_lock(config)
    if runstate.is_running(vmid):
        raise PveError(f"VM {vmid} already running")
    hooks.run_hookscript(config.options, vmid, "pre-start", stop_on_error=True)
    runstate.set_running(vmid)
    cluster.publish_status(vmid, paths.nodename(), "running")
    hooks.run_hookscript(config.options, vmid, "post-start")
    return 0


def _stop(vmid: int, *, shutdown: bool, timeout: int | None, force: bool, skiplock: bool) -> None:
    """QemuServer::_do_vm_stop: nothing to do for a stopped VM; pre-stop, stop, post-stop otherwise."""
    node = paths.nodename()
    config = vmconfig.load(paths.config_path(node, vmid))
    if config is None:
        raise PveError(f"unable to find configuration file for VM {vmid} on node '{node}'")
    if not runstate.is_running(vmid):
        return
    if not skiplock:
        _check_lock(config)
    hooks.run_hookscript(config.options, vmid, "pre-stop")
    # A guest without ACPI ignores the powerdown request: shutdown waits, then gives up (or kills).
    if shutdown and config.options.get("acpi") == "0":
        time.sleep(DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout)
        if not force:
            raise PveError("VM quit/powerdown failed - got timeout")
        sys.stdout.write("VM still running - terminating now with SIGTERM\n")
    runstate.set_stopped(vmid)
    cluster.publish_status(vmid, node, "stopped")
    hooks.run_hookscript(config.options, vmid, "post-stop")


def cmd_shutdown(argv: list[str], task: _Task) -> int:
    options = {"timeout": "int", "forceStop": "bool", "skiplock": "bool", "keepActive": "bool"}
    values = Command("qm shutdown", ["vmid"], options).parse(argv)
    task.started = True
    _stop(
        values["vmid"],
        shutdown=True,
        timeout=values.get("timeout"),
        force=values.get("forceStop", False),
        skiplock=values.get("skiplock", False),
    )
    return 0


def cmd_stop(argv: list[str], task: _Task) -> int:
    options = {"timeout": "int", "skiplock": "bool", "keepActive": "bool", "overrule-shutdown": "bool"}
    values = Command("qm stop", ["vmid"], options).parse(argv)
    task.started = True
    _stop(values["vmid"], shutdown=False, timeout=values.get("timeout"), force=True, skiplock=values.get("skiplock"))
    return 0


def cmd_set(argv: list[str], task: _Task) -> int:
    command = Command("qm set", ["vmid"], {"hookscript": "str", "delete": "str", "lock": "str", **VM_OPTIONS})
    values = command.parse(argv)
    vmid = values.pop("vmid")
    if "hookscript" in values:
        try:
            hooks.check_hookscript(values["hookscript"])
        except PveError as err:
            raise param_error({"hookscript": err.message}, command.usage) from None
    if "lock" in values and values["lock"] not in LOCKS:
        raise param_error({"lock": f"value '{values['lock']}' does not have a value in the enumeration"}, command.usage)
    changes = _check_vm_options(values, command.usage)
    for key in ("hookscript", "lock"):
        if key in values:
            changes[key] = values[key]
    deletions = [key for key in values.get("delete", "").split(",") if key]
    if not changes and not deletions:
        raise PveError("no options specified")
    config = _load_local(vmid)
    if "lock" not in changes:
        _check_lock(config)
    shown = []
    for key in sorted(values):
        shown += [f"-{key}", str(int(values[key])) if isinstance(values[key], bool) else str(values[key])]
    sys.stdout.write(f"update VM {vmid}: {' '.join(shown)}\n")
    for key in deletions:
        if key == "description":
            config.description = None
        config.options.pop(key, None)
    if "description" in changes:
        config.description = changes.pop("description")
    config.options.update(changes)
    vmconfig.write(paths.config_path(paths.nodename(), vmid), config)
    return 0


def cmd_create(argv: list[str], task: _Task) -> int:
    command = Command("qm create", ["vmid"], dict(VM_OPTIONS))
    values = command.parse(argv)
    vmid = values.pop("vmid")
    options = _check_vm_options(values, command.usage)
    description = options.pop("description", None)
    holder = cluster.locate(vmid)
    if holder is not None:
        raise PveError(f"unable to create VM {vmid} - VM {vmid} already exists on node '{holder}'")
    task.started = True
    options["meta"] = f"creation-qemu={paths.QEMU_VERSION},ctime={int(time.time())}"
    options.setdefault("smbios1", f"uuid={uuid.uuid4()}")
    options["vmgenid"] = str(uuid.uuid4())
    node = paths.nodename()
    vmconfig.write(paths.config_path(node, vmid), vmconfig.VmConfig(options, description))
    cluster.publish_status(vmid, node, "stopped")
    return 0


def cmd_destroy(argv: list[str], task: _Task) -> int:
    values = Command("qm destroy", ["vmid"], {"purge": "bool", "skiplock": "bool"}).parse(argv)
    vmid = values["vmid"]
    config = _load_local(vmid)
    if not values.get("skiplock"):
        _check_lock(config)
    if runstate.is_running(vmid):
        raise PveError(f"VM {vmid} is running - destroy failed")
    task.started = True
    paths.config_path(paths.nodename(), vmid).unlink()
    (paths.etc_pve() / cluster.STATUS_DIR / f"{vmid}.json").unlink(missing_ok=True)
    return 0


def cmd_migrate(argv: list[str], task: _Task) -> int:
    options = {"online": "bool", "force": "bool", "with-local-disks": "bool", "targetstorage": "str", "bwlimit": "int"}
    command = Command("qm migrate", ["vmid", "target"], options)
    values = command.parse(argv)
    vmid, target, source = values["vmid"], values["target"], paths.nodename()
    if target == source:
        raise param_error({"target": "target is local node."}, command.usage)
    cluster.check_node_exists(target)
    config = _load_local(vmid)
    _check_lock(config)
    running = runstate.is_running(vmid)
    online = bool(values.get("online"))
    if running and not online:
        raise PveError("can't migrate running VM without --online")
    if not running and online:
        sys.stderr.write("VM isn't running. Doing offline migration instead.\n")
        online = False

    task.started = True
    started = time.monotonic()
    _log(f"starting migration of VM {vmid} to node '{target}' ({cluster.node_ip(target) or target})")
    if running:
        _log(f"starting VM {vmid} on remote node '{target}'")
        rc = _start_on_target(target, vmid, source)
        if rc:
            _log(f"online migrate failure - remote command failed with exit code {rc}", error=True)
            _log("aborting phase 2 - cleanup resources")
            _log(f"migration finished with problems (duration {_duration(started)})", error=True)
            raise PveError("migration problems")
    destination = paths.config_path(target, vmid)
    destination.parent.mkdir(parents=True, exist_ok=True)
    paths.config_path(source, vmid).rename(destination)
    if running:
        # The source QEMU ends; Proxmox skips the post-stop hookscript on a live-migration source.
        runstate.set_stopped(vmid)
    else:
        cluster.publish_status(vmid, target, "stopped")
    _log(f"migration finished successfully (duration {_duration(started)})")
    return 0


def _duration(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _start_on_target(target: str, vmid: int, source: str) -> int:
    """Start the VM on the target as QemuMigrate does: ``qm start --migratedfrom`` over the cluster's SSH."""
    address = cluster.node_ip(target)
    if address is None:
        _log(f"no address for node '{target}' in /etc/pve/{cluster.MEMBERS}", error=True)
        return 255
    known_hosts = paths.etc_pve() / "nodes" / target / "ssh_known_hosts"
    argv = [
        "/usr/bin/ssh",
        "-e",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        f"HostKeyAlias={target}",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=none",
        f"root@{address}",
        "qm",
        "start",
        str(vmid),
        "--migratedfrom",
        source,
    ]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        _log(f"[{target}] {line}")
    return proc.returncode


COMMANDS = {
    "config": cmd_config,
    "status": cmd_status,
    "start": cmd_start,
    "shutdown": cmd_shutdown,
    "stop": cmd_stop,
    "set": cmd_set,
    "create": cmd_create,
    "destroy": cmd_destroy,
    "migrate": cmd_migrate,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        problem = f"unknown command 'qm {argv[0]}'" if argv else "no command specified"
        sys.stderr.write(f"ERROR: {problem}\nsimulated commands: {' '.join(sorted(COMMANDS))}\n")
        return 255
    task = _Task()
    try:
        return COMMANDS[argv[0]](argv[1:], task)
    except PveError as err:
        return fail(err, in_task=task.started)
