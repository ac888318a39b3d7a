"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _bundled(alias: str) -> Path:
    from common.paths import resolve_data_dir

    try:
        return resolve_data_dir(alias)
    except FileNotFoundError as e:
        pytest.skip(f"bundled data not available: {e}")


@pytest.fixture
def bundled_dir() -> Callable[[str], Path]:
    """``bundled_dir("brca")``: a bundled dataset directory (read in place), or skip."""
    return _bundled


@pytest.fixture
def write_files(tmp_path: Path) -> Callable[..., Path]:
    """``write_files({"rna.csv": "text", ...}, name="site")``: a directory of small files."""

    def write(files: dict[str, str], name: str = "site") -> Path:
        directory = tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (directory / fname).write_text(text, encoding="utf-8")
        return directory

    return write


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waiting on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundled_dir_module() -> Callable[[str], Path]:
    """Module-scoped :func:`bundled_dir`, for module-scoped fixtures."""
    return _bundled
