"""The real coordinator service on loopback for end-to-end tests of the console:
``cancer-alpha coordinator serve`` (SuperLink with TLS and node authentication, the
console API on a free port) and two real sites (``site start``), each holding one
half of the bundled BRCA data (read in place).

* pytest: the session fixture ``console_service`` (conftest.py) yields ``(base_url,
  lead_token, admin_token, site_token)`` (the site token is site-a's).
* other test runners (the console's browser tests): ``python tests/console_fixtures.py
  ROOT`` starts the same, prints one JSON line ``{"base_url", "lead_token",
  "admin_token", "site_token", "site_b_token"}`` and runs until SIGTERM or Ctrl-C.

The ``e2e`` template (2 rounds, 1 local epoch, no DP, a small model) finishes in well
under a minute with two sites. Every process is stopped, with its descendants, at the end.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from common.processes import free_port  # noqa: E402
from simulations.consortium import DemoPartition, LoopbackConsortium, make_pki  # noqa: E402

SITES = ("site-a", "site-b")
E2E_TEMPLATE = {
    "description": "Two short rounds on two sites, no DP, a small model (end-to-end tests).",
    "config": {"rounds": 2, "local-epochs": 1, "min-sites": 2, "dp": "none",
               "round-timeout": 120.0, "model.kind": "mmt", "model.d-model": 32,
               "model.n-heads": 2, "train.batch-size": 32},
}
STARTUP_TIMEOUT = 120.0
@contextlib.contextmanager
def running_console(root: Path, data: Path) -> Iterator[dict[str, str]]:
    """The service and its two sites under ``root``; yields the base URL and tokens."""
    from server.console_api.security import AUDIENCE, SECRET_ENV
    from server.serving.auth import TokenService
    from server.serving.settings import AuthSettings

    secret = secrets.token_urlsafe(48)
    pki = make_pki(root / "pki", SITES)
    api_port = free_port()
    with LoopbackConsortium(root, pki, env={SECRET_ENV: secret, "OMP_NUM_THREADS": "1",
                                            "MKL_NUM_THREADS": "1"}) as consortium:
        templates = consortium.state / "templates"
        templates.mkdir(parents=True, exist_ok=True)
        (templates / "e2e.json").write_text(json.dumps(E2E_TEMPLATE))
        service = consortium.spawn("service", [
            sys.executable, "-m", "common.cli", "coordinator", "serve",
            "--pki", str(pki.root), "--state-dir", str(consortium.state),
            "--host", "127.0.0.1", "--port", str(consortium.port),
            "--api-host", "127.0.0.1", "--api-port", str(api_port)])
        base_url = f"http://127.0.0.1:{api_port}"
        consortium.wait_registered(service, SITES, STARTUP_TIMEOUT)
        _wait_healthy(base_url, service, consortium)
        for index, site in enumerate(SITES):
            toml = consortium.site_toml(site, data, demo=DemoPartition(index, len(SITES)))
            consortium.site(site, toml)
        tokens = TokenService(AuthSettings(secret=secret, audience=AUDIENCE))
        yield {"base_url": base_url,
               "lead_token": tokens.issue("lena", "lead"),
               "admin_token": tokens.issue("ada", "admin"),
               "site_token": tokens.issue("site-a", "site"),
               "site_b_token": tokens.issue("site-b", "site")}


def _wait_healthy(base_url: str, service, consortium: LoopbackConsortium) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError("the coordinator service stopped:\n" + consortium.log(service))
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"{base_url}/api/health", timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError("the console API did not answer in time:\n" + consortium.log(service))


def shared_console(tmp_path_factory) -> Iterator[tuple[str, str, str, str]]:
    """``(base_url, lead_token, admin_token, site_token)`` of a running service; behind
    the session fixture ``console_service`` (conftest.py), so that every test of a
    session shares one service (starting one takes ~20 s)."""
    from common.paths import resolve_data_dir
    from common.processes import command_line, processes_mentioning, send_signal

    try:
        data = resolve_data_dir("brca")
    except FileNotFoundError as e:
        pytest.skip(f"bundled data not available: {e}")
    root = tmp_path_factory.mktemp("console-service")
    with running_console(root, data) as info:
        yield info["base_url"], info["lead_token"], info["admin_token"], info["site_token"]
    leftover = processes_mentioning(str(root))
    send_signal(leftover, signal.SIGKILL)
    assert not leftover, [command_line(p) for p in leftover]


def main() -> None:
    """``python tests/console_fixtures.py ROOT``: serve until SIGTERM or Ctrl-C."""
    from common.paths import resolve_data_dir

    root = Path(sys.argv[1]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with running_console(root, resolve_data_dir("brca")) as info:
        print(json.dumps(info), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
