"""Shared pytest fixtures, and the rule for tests whose bundled data are absent.

A test that needs the bundled data skips when :mod:`common.paths` cannot find them,
so that the suite runs on a checkout without ``shared/data``. In continuous
integration (``CI=true``) a missing dataset is a broken environment, not an optional
extra: :func:`pytest_runtest_makereport` turns those skips into failures naming the
path that was looked up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

CI_ENV = "CI"


def running_in_ci() -> bool:
    """True when ``$CI`` is set the way CI services set it (``true``, ``1``, ``yes``)."""
    return os.environ.get(CI_ENV, "").strip().lower() in {"true", "1", "yes"}


def _raised_by_data_lookup(exc: BaseException | None) -> bool:
    """True when ``exc`` is a FileNotFoundError raised inside :mod:`common.paths`."""
    if not isinstance(exc, FileNotFoundError):
        return False
    from common import paths

    origin = os.path.realpath(paths.__file__)
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == origin:
            return True
        tb = tb.tb_next
    return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Under CI, a skip caused by missing bundled data fails the test instead."""
    report = yield
    if not (report.skipped and running_in_ci() and call.excinfo is not None):
        return report
    # A test or fixture skips from inside ``except FileNotFoundError``, so the skip
    # exception's implicit context is the lookup error and its message.
    cause = call.excinfo.value.__context__
    if _raised_by_data_lookup(cause):
        report.outcome = "failed"
        report.longrepr = (
            f"bundled data missing under {CI_ENV}=true (tests needing them fail in CI "
            f"instead of skipping): {cause}"
        )
    return report


def _bundled(alias: str) -> Path:
    from common.paths import resolve_data_dir

    try:
        return resolve_data_dir(alias)
    except FileNotFoundError as e:
        pytest.skip(f"bundled data not available: {e}")


@pytest.fixture
def bundled_dir() -> Callable[[str], Path]:
    """``bundled_dir("brca")``: a bundled dataset directory (read in place), or skip
    (a failure under ``CI=true``)."""
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


@pytest.fixture(scope="session")
def console_service(tmp_path_factory):
    """The coordinator service with two real sites, shared by the session's console
    end-to-end tests (tests/console_fixtures.py)."""
    from console_fixtures import shared_console

    yield from shared_console(tmp_path_factory)


@pytest.fixture(scope="module")
def bundled_dir_module() -> Callable[[str], Path]:
    """Module-scoped :func:`bundled_dir`, for module-scoped fixtures."""
    return _bundled


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps every new Message with the process's task identity: fake one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
