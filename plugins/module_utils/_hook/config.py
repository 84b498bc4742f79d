# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pre-start hook's settings, the ``ironclaw-hook.json`` member of the hookscript zipapp.

Canonical JSON ``{"format": "ironclaw-hook/1", "state_dir", "cluster", "qm", "pvesh"}``; ``qm`` and
``pvesh`` are absolute paths, or null to look the commands up where Proxmox VE installs them.
"""

from __future__ import annotations

import dataclasses
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import check_cluster_name

CONFIG_MEMBER = "ironclaw-hook.json"
CONFIG_FORMAT = "ironclaw-hook/1"
_FIELDS = {"format": str, "state_dir": str, "cluster": str, "qm": (str, type(None)), "pvesh": (str, type(None))}
_SETTINGS = ("state_dir", "cluster", "qm", "pvesh")


@dataclasses.dataclass(frozen=True)
class HookConfig:
    state_dir: str
    cluster: str
    qm: str | None = None
    pvesh: str | None = None


def _absolute(value: object, what: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value:
        raise InputError(f"{what} must be an absolute path, found {canonical.show(value)}")
    return os.path.normpath(value)


def _tool(settings: dict, name: str) -> str | None:
    path = settings.get(name)
    return None if path is None else _absolute(path, f"hookscript setting {name}")


def check_config(settings: dict) -> HookConfig:
    """Settings ``{state_dir, cluster[, qm][, pvesh]}`` as the installer gives them; unknown keys are refused."""
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise InputError(f"hookscript settings: unknown key(s) {', '.join(unknown)}; expected {', '.join(_SETTINGS)}")
    if "state_dir" not in settings or "cluster" not in settings:
        raise InputError("hookscript settings: state_dir and cluster are required")
    return HookConfig(
        state_dir=_absolute(settings["state_dir"], "hookscript setting state_dir"),
        cluster=check_cluster_name(settings["cluster"]),
        qm=_tool(settings, "qm"),
        pvesh=_tool(settings, "pvesh"),
    )


def config_to_bytes(config: HookConfig) -> bytes:
    return canonical.dumps({"format": CONFIG_FORMAT, **dataclasses.asdict(config)})


def parse_config(data: bytes, what: str = CONFIG_MEMBER) -> HookConfig:
    doc = canonical.loads(data, what)
    canonical.require_format(doc, CONFIG_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    settings = {name: doc[name] for name in _SETTINGS}
    config = check_config(settings)
    if dataclasses.asdict(config) != settings:
        raise InputError(f"{what}: paths must be written in normal form, found {canonical.show(settings)}")
    return config
