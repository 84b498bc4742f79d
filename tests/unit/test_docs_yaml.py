"""Every module's DOCUMENTATION, EXAMPLES and RETURN, and every changelog fragment, is YAML that loads (a ': ' in a
plain scalar turns a sentence into a mapping): caught here in seconds rather than by ansible-test sanity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / "plugins" / "modules").glob("*.py"))
FRAGMENTS = sorted((ROOT / "changelogs" / "fragments").glob("*.yml"))


def _doc_strings(path: Path) -> dict[str, str]:
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                found[node.targets[0].id] = node.value.value
    return found


def _descriptions_are_text(doc, where: str) -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "description":
                for item in value if isinstance(value, list) else [value]:
                    assert isinstance(item, str), f"{where}: a description item is not text: {item!r}"
            else:
                _descriptions_are_text(value, f"{where}.{key}")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_documentation_loads(path):
    docs = _doc_strings(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, f"{path.name} lacks one of its documentation blocks"
    for name, text in docs.items():
        loaded = yaml.safe_load(text)
        assert loaded, f"{path.name} {name} is empty"
        _descriptions_are_text(loaded, f"{path.name} {name}")


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_changelog_fragment_loads(path):
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict) and loaded, f"{path.name} is not a mapping of sections"
    for section, entries in loaded.items():
        if section == "release_summary":
            assert isinstance(entries, str), f"{path.name}: release_summary is not text"
            continue
        assert isinstance(entries, list) and all(isinstance(e, str) for e in entries), f"{path.name}: {section}"
