"""docs/reference/config.md is checked against the declarations: every table lists exactly
the keys its dataclass declares, every literal default in the docs is the declared default,
and the "every key" example names every key and is a valid file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from webpubsub.config import SECTIONS, ServiceConfig, config_keys, parse_config

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md"
_HEADING = re.compile(r"^#{2,3} `\[{1,2}([A-Za-z_.]+)\]{1,2}`\s*$")
_ROW = re.compile(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|")
_LITERAL = re.compile(r"`([^`]+)`")


def _tables() -> dict[str, list[tuple[str, str]]]:
    """Each documented table: its (key, default column) rows, in order."""
    tables: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if heading := _HEADING.match(line):
            current = tables.setdefault(heading.group(1), [])
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := _ROW.match(line)):
            current.append((row.group(1), row.group(2).strip()))
    return tables


def test_every_table_documents_exactly_its_declared_keys() -> None:
    documented = {name: [key for key, _ in rows] for name, rows in _tables().items()}
    declared = {name: list(config_keys(cls)) for name, cls in SECTIONS.items()}
    assert documented == declared


def _setting(config: ServiceConfig, section: str, key: str) -> object:
    match section:
        case "hubs.NAME":
            return getattr(config.hub("h"), key)
        case "hubs.NAME.event_handlers":
            return getattr(config.hub("h").event_handlers[0], key)
        case _:
            return getattr(getattr(config, section), key)


def _file(section: str, line: str) -> str:
    match section:
        case "hubs.NAME":
            return f"[hubs.h]\n{line}\n"
        case "hubs.NAME.event_handlers":
            return f'[[hubs.h.event_handlers]]\nurl_template = "http://x.test/"\n{line}\n'
        case _:
            return f"[{section}]\n{line}\n"


_DEFAULTS = [
    (section, key, literal.group(1))
    for section, rows in _tables().items()
    for key, default in rows
    if (literal := _LITERAL.match(default)) and not default.startswith("`[")
]


def test_the_defaults_of_every_table_are_checked() -> None:
    # The literal defaults reach every table (the others say "none", "generated", ...).
    assert {section for section, _, _ in _DEFAULTS} == set(SECTIONS)


@pytest.mark.parametrize(("section", "key", "default"), _DEFAULTS)
def test_a_documented_default_is_the_declared_default(section: str, key: str, default: str) -> None:
    given = parse_config(tomllib.loads(_file(section, f"{key} = {default}")))
    declared = parse_config(tomllib.loads(_file(section, "")))  # the key left out
    assert _setting(given, section, key) == _setting(declared, section, key)


def test_the_every_key_example_names_every_key_and_is_valid() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    example = text.split("## Example: every key", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"^#? ?([a-z_]+) = ", example, re.MULTILINE))
    named |= set(re.findall(r"^\[+[^\]]*\.([a-z_]+)\]+$", example, re.MULTILINE))  # tables
    declared = {key for cls in SECTIONS.values() for key in config_keys(cls)}
    assert declared - named == set()
    config = parse_config(tomllib.loads(example))
    assert config.hub("chat").event_handlers
