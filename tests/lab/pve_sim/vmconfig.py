"""VM config files in the format of PVE::QemuServer::parse_vm_config / write_vm_config.

A file is the description as ``#`` comment lines, then ``key: value`` lines in
sorted key order, then optional sections (``[PENDING]``, snapshots) that the
simulator keeps as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.parse
from pathlib import Path

_OPTION = re.compile(r"([a-z][a-z_\-]*\d*):\s*(.+?)\s*")
# Printable ASCII except ':' and '%'.
_TEXT_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) not in ":%")


@dataclasses.dataclass
class VmConfig:
    options: dict[str, str]
    description: str | None = None
    sections: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, raw: str) -> VmConfig:
        options: dict[str, str] = {}
        description_lines: list[str] = []
        lines = raw.split("\n")
        for index, line in enumerate(lines):
            if re.fullmatch(r"\[[^\]]*\]\s*", line):
                sections = "\n".join(lines[index:])
                break
            if not line.strip():
                continue
            if line.startswith("#"):
                description_lines.append(urllib.parse.unquote(line[1:]))
                continue
            match = _OPTION.fullmatch(line)
            if match:
                options[match[1]] = match[2]
        else:
            sections = ""
        description = "\n".join(description_lines).rstrip() if description_lines else None
        return cls(options, description, sections, hashlib.sha1(raw.encode()).hexdigest())  # noqa: S324 - Proxmox's digest

    def dump(self) -> str:
        raw = ""
        if self.description:
            for line in self.description.split("\n"):
                raw += "#" + encode_text(line) + "\n"
        for key in sorted(self.options):
            raw += f"{key}: {self.options[key]}\n"
        if self.sections:
            raw += "\n" + self.sections.lstrip("\n")
        return raw

    def for_display(self) -> dict[str, str]:
        """What ``qm config`` shows: every option, and the description encoded on one line."""
        shown = dict(self.options)
        if self.description is not None:
            shown["description"] = encode_text(self.description)
        return shown


def encode_text(text: str) -> str:
    """PVE::ParseUtils::encode_text: control and non-ASCII characters, ':' and '%' as %XX."""
    return urllib.parse.quote(text.encode(), safe=_TEXT_SAFE)


def load(path: Path) -> VmConfig | None:
    try:
        return VmConfig.parse(path.read_text())
    except FileNotFoundError:
        return None


def write(path: Path, config: VmConfig) -> None:
    """Atomic replace, as pmxcfs makes every write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(config.dump())
    os.replace(tmp, path)
