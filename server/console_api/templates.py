"""Saved run configurations (``STATE_DIR/templates/<name>.json`` or ``.toml``) a run
is started from. ``default`` (the project's :class:`~common.config.RunConfig`
defaults) is written when the directory has none of that name.

A JSON template is ``{"description": str, "config": {flat Flower run config}}``; a
TOML template is the flat config itself, with an optional ``description`` key.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT = "default"
# Set by the coordinator for every run, never by a template.
_COORDINATOR_KEYS = ("data", "out", "resume")


class TemplateError(ValueError):
    """No such template, or one that cannot be read; says which and why."""


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    config: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "config": self.config}


class Templates:
    """The template directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure_default(self) -> None:
        """Write ``default.json`` from RunConfig() unless a ``default`` exists."""
        from common.config import RunConfig

        self.directory.mkdir(parents=True, exist_ok=True)
        if not any(self.directory.glob(f"{DEFAULT}.*")):
            config = {k: v for k, v in RunConfig().to_flower().items()
                      if k not in _COORDINATOR_KEYS}
            save(self.directory, Template(DEFAULT, "The project's default run configuration "
                                          "(RunConfig()).", config))

    def all(self) -> list[Template]:
        out = []
        for path in sorted(self.directory.glob("*")):
            if path.suffix in (".json", ".toml") and NAME.match(path.stem):
                try:
                    out.append(_read(path))
                except TemplateError:
                    continue  # listed by get() with its reason
        return out

    def get(self, name: str) -> Template:
        if not NAME.match(name or ""):
            raise TemplateError(f"template name {name!r} is not valid (lowercase letters, "
                                "digits, '-', '_')")
        for suffix in (".json", ".toml"):
            path = self.directory / f"{name}{suffix}"
            if path.is_file():
                return _read(path)
        raise TemplateError(f"no template {name!r} in {self.directory}")


def save(directory: Path, template: Template) -> Path:
    """Write ``template`` as ``<name>.json``."""
    if not NAME.match(template.name):
        raise TemplateError(f"template name {template.name!r} is not valid")
    path = directory / f"{template.name}.json"
    write_json_atomic(path, {"description": template.description, "config": template.config})
    return path


def _read(path: Path) -> Template:
    try:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            config, description = doc.get("config"), doc.get("description", "")
        else:
            config = tomllib.loads(path.read_text())
            description = config.pop("description", "")
    except (OSError, ValueError, AttributeError) as e:
        raise TemplateError(f"template {path.name} cannot be read: {e}") from None
    if not isinstance(config, dict):
        raise TemplateError(f"template {path.name} has no config object")
    return Template(path.stem, str(description),
                    {k: v for k, v in config.items() if k not in _COORDINATOR_KEYS})
