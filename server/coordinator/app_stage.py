"""A minimal copy of the Flower app for ``flwr run``.

``flwr run`` walks every file under the app directory before it applies
``fab-include`` (a checkout's .venv and node_modules: tens of thousands of files,
over a minute), so runs are submitted from a temporary copy that holds only the
app's ``pyproject.toml`` and the packages its ``fab-include`` names.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

# Files next to pyproject.toml that the package metadata may read.
_TOP_FILES = ("pyproject.toml", "README.md")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", "dist")


def app_packages(app_dir: Path) -> list[str]:
    """Top-level folders named by the app's ``[tool.flwr.app] fab-include``."""
    meta = tomllib.loads((app_dir / "pyproject.toml").read_text())
    patterns = meta.get("tool", {}).get("flwr", {}).get("app", {}).get("fab-include", [])
    folders = {Path(pattern).parts[0] for pattern in patterns if len(Path(pattern).parts) > 1}
    return sorted(folder for folder in folders if (app_dir / folder).is_dir())


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy the app's pyproject, README and ``fab-include`` packages into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in _TOP_FILES:
        if (app_dir / name).is_file():
            shutil.copy2(app_dir / name, dest / name)
    for folder in app_packages(app_dir):
        shutil.copytree(app_dir / folder, dest / folder, ignore=_IGNORE)
    return dest


@contextlib.contextmanager
def staged_app(app_dir: Path) -> Iterator[Path]:
    """A temporary staged copy of ``app_dir``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cancer-alpha-app-") as tmp:
        yield stage_app(app_dir, Path(tmp) / "app")
