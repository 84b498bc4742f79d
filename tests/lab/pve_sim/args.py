"""Command-line parsing the way Proxmox's CLIs take arguments (PVE::JSONSchema::get_options).

Positional arguments first, then ``--name value``, ``--name=value`` or
``-name value``; a boolean may stand alone (``--online``) or take 0/1.
"""

from __future__ import annotations

import re

from pve_sim.errors import PveError, param_error

VMID_MIN = 100
VMID_MAX = 999_999_999
_BOOL_VALUES = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_INT = re.compile(r"-?[0-9]+")


class Command:
    """One command: its positional arguments and typed options ("int", "str", "bool")."""

    def __init__(self, prog: str, positional: list[str], options: dict[str, str]):
        self.prog = prog
        self.positional = positional
        self.options = options

    @property
    def usage(self) -> str:
        args = " ".join(f"<{name}>" for name in self.positional)
        return f"{self.prog} {args} [OPTIONS]".replace("  ", " ")

    def parse(self, argv: list[str]) -> dict:
        values: dict = {}
        rest = list(argv)
        for name in self.positional:
            if not rest or rest[0].startswith("-"):
                raise PveError(f"400 not enough arguments\n{self.usage}")
            values[name] = rest.pop(0)
        while rest:
            token = rest.pop(0)
            if not token.startswith("-") or token in ("-", "--"):
                raise PveError(f"400 too many arguments\n{self.usage}")
            name, _sep, inline = token.lstrip("-").partition("=")
            kind = self.options.get(name)
            if kind is None:
                raise PveError(f"Unknown option: {name}\n400 unable to parse option")
            if kind == "bool":
                if _sep:
                    raw = inline
                elif rest and rest[0].lower() in _BOOL_VALUES:
                    raw = rest.pop(0)
                else:
                    raw = "1"
                if raw.lower() not in _BOOL_VALUES:
                    raise param_error({name: f"type check ('boolean') failed - got '{raw}'"}, self.usage)
                values[name] = _BOOL_VALUES[raw.lower()]
                continue
            if _sep:
                raw = inline
            elif rest:
                raw = rest.pop(0)
            else:
                raise PveError(f"Option {name} requires an argument\n400 unable to parse option")
            if kind == "int":
                if not _INT.fullmatch(raw):
                    raise param_error({name: f"type check ('integer') failed - got '{raw}'"}, self.usage)
                values[name] = int(raw)
            else:
                values[name] = raw
        if "vmid" in values:
            values["vmid"] = self.vmid(values["vmid"])
        return values

    def vmid(self, raw: str) -> int:
        if not re.fullmatch(r"[0-9]+", raw):
            raise param_error({"vmid": f"type check ('integer') failed - got '{raw}'"}, self.usage)
        vmid = int(raw)
        if vmid < VMID_MIN:
            raise param_error({"vmid": f"value must have a minimum value of {VMID_MIN}"}, self.usage)
        if vmid > VMID_MAX:
            raise param_error({"vmid": f"value may have a maximum value of {VMID_MAX}"}, self.usage)
        return vmid
