# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pre-start hookscript as one file: a Python zipapp holding the module_utils the hook imports.

A Proxmox VE node runs it as ``/usr/bin/python3 <file> <vmid> <phase>`` without the
collection installed there, so the archive carries its code under the collection's import
path (``ansible_collections/ironclaw/sealed/plugins/module_utils/...``) and its settings as
the member ``ironclaw-hook.json``. Only what the hook imports goes in, found by following
its imports from the source; the ``_ansible`` and ``_tpm`` areas (Ansible, tpm2-pytss) must
never be among them. The bytes depend only on the sources and the settings (fixed
timestamps and modes, sorted members, no compression), so installing the same thing twice
changes nothing.
"""

from __future__ import annotations

import ast
import io
import os
import zipfile

from ansible_collections.ironclaw.sealed.plugins import module_utils
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.config import (
    CONFIG_MEMBER,
    check_config,
    config_to_bytes,
)

SHEBANG = b"#!/usr/bin/python3\n"
PACKAGE = "ansible_collections.ironclaw.sealed.plugins.module_utils"
ENTRY = f"{PACKAGE}._hook.prestart"
EXCLUDED = ("_ansible", "_tpm")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_MAIN = f'''"""Proxmox VE pre-start hookscript of ironclaw.sealed: <vmid> <phase>."""
import os
import sys
import zipfile

from {ENTRY} import main


def read_config():
    with zipfile.ZipFile(os.path.dirname(os.path.abspath(__file__))) as archive:
        return archive.read("{CONFIG_MEMBER}")


sys.exit(main(sys.argv[1:], read_config))
'''


def _source_root() -> str:
    """The directory that holds ``ansible_collections`` (module_utils is five levels below it)."""
    path = os.path.dirname(os.path.abspath(module_utils.__file__))
    for _level in PACKAGE.split("."):
        path = os.path.dirname(path)
    return path


def _module_file(root: str, name: str) -> str | None:
    """The source of a module_utils module (or package) by dotted name, or None if there is none."""
    base = os.path.join(root, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imported(tree: ast.AST, name: str) -> set[str]:
    """The module_utils modules a module imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(PACKAGE + "."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            if node.level:
                raise ValueError(f"{name}: relative imports are not used in module_utils")
            found.add(node.module)
            # `from <package> import <module>` imports a module, not a name.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def hook_modules(root: str | None = None) -> list[str]:
    """Dotted names of the module_utils modules the hook needs, its entry point first followed."""
    root = root or _source_root()
    needed, todo = set(), [ENTRY]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        path = _module_file(root, name)
        if path is None:
            continue  # a name imported from a module, not a module
        area = name[len(PACKAGE) + 1 :].split(".", 1)[0]
        if area in EXCLUDED:
            raise ValueError(f"the hookscript must not need {name}: {area} imports what nodes may lack")
        needed.add(name)
        with open(path, "rb") as fh:
            todo.extend(_imported(ast.parse(fh.read(), path), name))
    return sorted(needed)


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.create_system = 3  # Unix, so the mode below is read
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


def build_hookscript(config: dict) -> bytes:
    """The hookscript's bytes: ``#!/usr/bin/python3`` and a zip with the hook's code and `config`.

    `config` holds state_dir and cluster, and optionally qm and pvesh (absolute paths).
    """
    settings = config_to_bytes(check_config(config))
    root = _source_root()
    members = {CONFIG_MEMBER: settings, "__main__.py": _MAIN.encode()}
    for name in hook_modules(root):
        path = _module_file(root, name)
        with open(path, "rb") as fh:
            members[os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
        # Every package level needs its __init__.py, so the archive's packages are regular ones and
        # take precedence over any other ansible_collections on the node.
        parts = name.split(".")
        for depth in range(1, len(parts)):
            package = "/".join(parts[:depth]) + "/__init__.py"
            if package not in members:
                source = _module_file(root, ".".join(parts[:depth]))
                if source is not None and source.endswith("__init__.py"):
                    with open(source, "rb") as fh:
                        members[package] = fh.read()
                else:
                    members[package] = b""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            archive.writestr(_member(name), members[name])
    return SHEBANG + buffer.getvalue()
