"""A consortium on loopback: a coordinator and hospital sites as real processes.

What the deployment tests and the deployment benchmark both start: a PKI with one key
per site (:func:`make_pki`), ``cancer-alpha coordinator start`` (flower-superlink with
TLS and node authentication) and one ``cancer-alpha site start --config site.toml``
(flower-supernode) per site, each process in its own session with its output in a log
file. Every PID is remembered and stopped, with its descendants, at the end.

Linux only, like :mod:`common.processes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from common.pki import Pki, init_pki, issue_site, revoke_site
from common.processes import free_port, process_tree, send_signal, stop_pids

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CANCER_ALPHA = [PY, "-m", "common.cli"]  # the `cancer-alpha` command of this checkout
COORDINATOR_DIR = "coordinator"  # the coordinator's state directory inside the root
REGISTRY_FILE = "sites.json"  # written by the coordinator once it has registered sites


class ConsortiumError(RuntimeError):
    """A process of the consortium stopped or did not get there in time; quotes its log."""


def make_pki(root: Path, sites: Iterable[str], *, revoked: Iterable[str] = ()) -> Pki:
    """A fresh CA and server certificate, a key pair for each site (and for each of
    ``revoked``, then revoked)."""
    revoked = list(revoked)
    pki = init_pki(root)
    for site in [*sites, *revoked]:
        issue_site(pki, site)
    for site in revoked:
        revoke_site(pki, site)
    return pki


@dataclass(frozen=True)
class DemoPartition:
    """``[demo]`` of a site.toml: hospital ``partition_id`` of a shared dataset."""

    partition_id: int
    num_partitions: int
    partition: str = ""  # "" leaves the site's default ("iid")


class LoopbackConsortium:
    """A coordinator and its sites under ``root``, on 127.0.0.1.

    Use it as a context manager (or call :meth:`stop_all`): leaving stops every process
    it started. ``coordinator_options`` are added to every ``coordinator start``;
    ``env`` extends the processes' environment.
    """

    def __init__(self, root: Path, pki: Pki, *, env: Mapping[str, str] | None = None,
                 coordinator_options: Iterable[str] = ()) -> None:
        self.root, self.pki = Path(root), pki
        self.port = free_port()
        self.state = self.root / COORDINATOR_DIR
        self.coordinator_options = list(coordinator_options)
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}
        self.env = {
            **os.environ,
            # The sites and the coordinator start Flower's programs by name.
            "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            **(env or {}),
        }

    def __enter__(self) -> LoopbackConsortium:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    # --- configuration -------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def site_toml(self, site: str, data_dir: Path, *, key: Path | None = None,
                  demo: DemoPartition | None = None) -> Path:
        """``ROOT/<site>.toml``: the site's data, its state in ``ROOT/state/<site>``, this
        coordinator, the consortium CA and the site's key (or ``key``)."""
        path = self.root / f"{site}.toml"
        text = (f'[site]\nid = "{site}"\ndata-dir = "{data_dir}"\nstate-dir = "state/{site}"\n'
                f'device = "cpu"\n\n[coordinator]\naddress = "{self.address}"\n\n'
                f'[tls]\nroot-certificates = "{self.pki.ca_cert}"\n'
                f'private-key = "{key or self.pki.site_private_key(site)}"\n\n'
                f"[supernode]\nport = {free_port()}\n")
        if demo is not None:
            text += (f"\n[demo]\npartition-id = {demo.partition_id}\n"
                     f"num-partitions = {demo.num_partitions}\n")
            if demo.partition:
                text += f'partition = "{demo.partition}"\n'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # --- processes -----------------------------------------------------------------------
    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start ``cmd`` in its own session, output to ``ROOT/logs/<name>-<n>.log``."""
        log = self.root / "logs" / f"{name}-{len(self.procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def coordinator(self, run_name: str, *args: str) -> subprocess.Popen:
        """``coordinator start`` of run ``run_name`` with ``args`` (e.g. ``--rounds 2``)."""
        return self.spawn("coordinator", [
            *CANCER_ALPHA, "coordinator", "start", "--pki", str(self.pki.root),
            "--state-dir", str(self.state), "--host", "127.0.0.1", "--port", str(self.port),
            "--run-name", run_name, *self.coordinator_options, *args])

    def site(self, site: str, toml: Path, *args: str) -> subprocess.Popen:
        """``site start --config toml`` with ``args`` (e.g. ``--quiet``)."""
        return self.spawn(site, [*CANCER_ALPHA, "site", "start", "--config", str(toml), *args])

    # --- waiting -------------------------------------------------------------------------
    def wait_registered(self, coordinator: subprocess.Popen, sites: Iterable[str],
                        timeout: float = 120.0) -> dict:
        """The coordinator's registry once it holds exactly ``sites``: a site may only
        start once the coordinator has registered its key."""
        expected = set(sites)
        path = self.state / REGISTRY_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if coordinator.poll() is not None:
                raise ConsortiumError("the coordinator stopped:\n" + self.log(coordinator))
            with contextlib.suppress(OSError, ValueError):
                registry = json.loads(path.read_text())
                if set(registry) == expected:
                    return registry
            time.sleep(0.3)
        raise ConsortiumError("sites were not registered in time:\n" + self.log(coordinator))

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        """``proc``'s exit code; :class:`ConsortiumError` with its log after ``timeout``."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ConsortiumError(f"still running after {timeout:.0f} s:\n"
                                  + self.log(proc)) from None

    def wait_run(self, coordinator: subprocess.Popen, sites: list[subprocess.Popen],
                 timeout: float | None = None) -> int:
        """The coordinator's exit code once its run ends; an error when every site has
        stopped first (nobody left to train) or after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := coordinator.poll()) is None:
            if sites and all(p.poll() is not None for p in sites):
                raise ConsortiumError("every site stopped:\n" + "\n".join(
                    self.log(p, lines=25) for p in sites))
            if deadline is not None and time.monotonic() > deadline:
                raise ConsortiumError(f"the run did not end within {timeout:.0f} s:\n"
                                      + self.log(coordinator))
            time.sleep(0.5)
        return code

    def log(self, proc: subprocess.Popen, lines: int = 60) -> str:
        """The last ``lines`` of ``proc``'s output."""
        text = self.logs[proc.pid].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # --- results and stopping ------------------------------------------------------------
    def run_dir(self, run_name: str) -> Path:
        return self.state / "runs" / run_name

    def metrics(self, run_name: str) -> dict:
        return json.loads((self.run_dir(run_name) / "metrics.json").read_text())

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process and everything it started: a crash, not a shutdown."""
        send_signal(process_tree(proc.pid), signal.SIGKILL)
        proc.wait(30)

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every process started here and its descendants, SIGKILL after
        ``grace`` seconds."""
        stop_pids([p for proc in self.procs for p in process_tree(proc.pid)], grace=grace)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
