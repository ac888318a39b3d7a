"""The consortium coordinator: a Flower SuperLink with TLS and node authentication, the
site registry, and one federated run submitted to it.

``cancer-alpha coordinator start`` runs :func:`run_coordinator`:

1. pre-flight: the server certificate is valid now, issued by the CA, matches its key;
2. ``flower-superlink`` with ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and
   ``--enable-supernode-auth`` (Flower 1.41: every SuperNode must be registered by its
   public key through the Control API; unknown keys are refused), a persistent
   ``--database`` (registrations and run state survive a restart) and no runtime
   dependency installation;
3. site registry sync (:func:`sync_sites`): registers every non-revoked
   ``pki/sites/*/site.pub`` with ``flwr supernode register`` and unregisters revoked or
   rotated keys (a revoked SuperNode's next heartbeat is refused and it stops);
4. ``flwr run`` of the project's Flower app with the run config written to the run
   directory, then follows its log until it finishes.

State directory layout: ``superlink.db`` (Flower's link state), ``flwr-home/`` (the
Flower CLI's connection config and unpacked apps), ``sites.json`` (site -> node id and
key fingerprint), ``logs/superlink.log``, ``runs/<name>/`` (run config, coordinator
record, checkpoint, outputs).

Resume: the ServerApp checkpoints after every completed round (``server.federation``).
``--resume`` reuses the run's stored config with ``resume=true``, stops the killed
Flower run if the link state still shows it running, and submits a new Flower run that
continues after the last completed round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import RunConfig, offline_flower_env
from common.pki import (
    Pki,
    PkiError,
    check_server_files,
    load_site_public_key,
    probe_tls,
    public_key_fingerprint,
    write_atomic,
)
from common.processes import stop_process

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "consortium"  # the Flower CLI's name for this SuperLink
RUN_CONFIG_FILE = "run-config.toml"
RECORD_FILE = "coordinator.json"
REGISTRY_FILE = "sites.json"
DATABASE = "superlink.db"


class CoordinatorError(RuntimeError):
    """The coordinator cannot start or the run cannot be submitted; says why."""


@dataclass
class CoordinatorConfig:
    pki_dir: Path
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = 9092
    run_name: str = "consortium"
    # Flower run config overrides (kebab-case keys, as in pyproject's [tool.flwr.app.config])
    run_config: dict[str, Any] = field(default_factory=dict)
    app_dir: Path = PROJECT_ROOT
    resume: bool = False
    keep_alive: bool = False  # keep the SuperLink up after the run (e.g. for more runs)
    startup_timeout: float = 60.0
    # Prometheus endpoint of the run's metrics (server.monitoring); port 0: none.
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Flower's CLI runs with its own working directory: every path must be absolute.
        self.pki_dir = Path(self.pki_dir).expanduser().resolve()
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.app_dir = Path(self.app_dir).expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "runs" / self.run_name

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    @property
    def local_address(self) -> str:
        """Where this machine reaches its own SuperLink (the CLI and the probes)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass
class RunResult:
    run_id: int
    status: str  # Flower's, e.g. "finished:completed"
    run_dir: Path
    metrics: dict | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed" and self.metrics is not None


# --- environment and commands ---------------------------------------------------------
def coordinator_env(cfg: CoordinatorConfig) -> dict[str, str]:
    """Offline Flower with its own FLWR_HOME; the venv's bin first on PATH."""
    offline_flower_env()
    env = dict(os.environ)
    env["FLWR_HOME"] = str(cfg.flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    # The SuperLink starts flower-superexec and flwr-serverapp by name.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def write_flower_home(cfg: CoordinatorConfig) -> Path:
    """The Flower CLI's config: one TLS connection to this SuperLink, no insecure mode."""
    pki = Pki(cfg.pki_dir)
    text = (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{cfg.local_address}"\n'
            f"root-certificates = {json.dumps(str(pki.ca_cert.resolve()))}\n")
    path = cfg.flwr_home / "config.toml"
    write_atomic(path, text.encode())
    return path


def superlink_command(cfg: CoordinatorConfig) -> list[str]:
    from client.launcher import flower_executable

    pki = Pki(cfg.pki_dir)
    return [
        flower_executable("flower-superlink"),
        "--ssl-ca-certfile", str(pki.ca_cert.resolve()),
        "--ssl-certfile", str(pki.server_cert.resolve()),
        "--ssl-keyfile", str(pki.server_key.resolve()),
        "--enable-supernode-auth",
        "--database", str((cfg.state_dir / DATABASE).resolve()),
        "--host", cfg.host, "--port", str(cfg.port),
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
    ]


def flwr(args: list[str], env: dict[str, str], *, timeout: float = 120.0,
         json_out: bool = True) -> dict:
    """Run a ``flwr`` CLI command against this SuperLink; its JSON answer."""
    from client.launcher import flower_executable

    cmd = [flower_executable("flwr"), *args, *(["--format", "json"] if json_out else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env.get("FLWR_HOME"))
    out = proc.stdout.strip()
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if proc.returncode != 0 or data.get("success") is False:
        reason = data.get("error-message") or (proc.stderr.strip() or out)[-800:]
        raise CoordinatorError(f"`flwr {' '.join(args[:2])}` failed: {reason}")
    return data


# --- SuperLink process -------------------------------------------------------------------
def start_superlink(cfg: CoordinatorConfig, env: dict[str, str]) -> subprocess.Popen:
    """Start the SuperLink (same process group as the coordinator) and wait until it
    serves TLS; errors quote its log."""
    log_dir = cfg.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "superlink.log"
    _refuse_stale_superlink(cfg)
    cmd = superlink_command(cfg)
    logger.info("starting: %s", " ".join(cmd))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cfg.state_dir)
    write_atomic(cfg.state_dir / "superlink.pid", f"{proc.pid}\n".encode())
    deadline = time.monotonic() + cfg.startup_timeout
    ca = Pki(cfg.pki_dir).ca_cert
    while True:
        if proc.poll() is not None:
            raise CoordinatorError(f"flower-superlink exited with code {proc.returncode}:\n"
                                   + _tail(log_path))
        try:
            probe_tls(cfg.local_address, ca, timeout=2.0)
            return proc
        except PkiError as e:
            if "cannot reach" not in str(e):
                stop_process(proc)
                raise CoordinatorError(str(e)) from None
        if time.monotonic() > deadline:
            stop_process(proc)
            raise CoordinatorError(f"flower-superlink did not listen on {cfg.local_address} "
                                   f"within {cfg.startup_timeout:.0f} s:\n" + _tail(log_path))
        time.sleep(0.5)


def _refuse_stale_superlink(cfg: CoordinatorConfig) -> None:
    pid_file = cfg.state_dir / "superlink.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "flower-superlink" in cmdline:
            raise CoordinatorError(
                f"a SuperLink started from {cfg.state_dir} is still running (PID {pid}); "
                f"stop it first (kill {pid}) or use another --state-dir")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- site registry -------------------------------------------------------------------------
@dataclass
class SyncReport:
    registered: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # site -> node id


def sync_sites(cfg: CoordinatorConfig, env: dict[str, str]) -> SyncReport:
    """Make the SuperLink's registry equal the PKI's non-revoked site keys."""
    pki = Pki(cfg.pki_dir)
    registry_path = cfg.state_dir / REGISTRY_FILE
    registry: dict[str, dict] = json.loads(registry_path.read_text()) \
        if registry_path.exists() else {}
    authorized = {site: public_key_fingerprint(load_site_public_key(path))
                  for site, path in pki.authorized_sites().items()}
    report = SyncReport()
    # What the SuperLink really knows: a wiped database must not pass for registered.
    known = {str(n["node-id"]) for n in flwr(["supernode", "ls", CONNECTION], env)
             .get("nodes", []) if n.get("status") != "deleted"}
    for site in [s for s, e in registry.items() if e["node_id"] not in known]:
        logger.warning("site %s (node %s) is not in the SuperLink's database; registering "
                       "it again", site, registry[site]["node_id"])
        del registry[site]
    for site, entry in sorted(registry.items()):
        if authorized.get(site) != entry["fingerprint"]:  # revoked, removed or rotated
            with contextlib.suppress(CoordinatorError):  # already gone is fine
                flwr(["supernode", "unregister", str(entry["node_id"]), CONNECTION], env)
            del registry[site]
            report.unregistered.append(site)
            _save_registry(registry_path, registry)
    for site, fingerprint in sorted(authorized.items()):
        if site in registry:
            report.kept.append(site)
            continue
        answer = flwr(["supernode", "register", str(pki.site_public_key(site).resolve()),
                       CONNECTION, "--name", site], env)
        registry[site] = {"node_id": str(answer["node-id"]), "fingerprint": fingerprint}
        report.registered.append(site)
        _save_registry(registry_path, registry)
    report.nodes = {s: e["node_id"] for s, e in registry.items()}
    return report


def _save_registry(path: Path, registry: dict) -> None:
    write_atomic(path, (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode())


# --- the run ---------------------------------------------------------------------------------
def prepare_run_config(cfg: CoordinatorConfig) -> tuple[Path, dict[str, Any]]:
    """Write (or, on resume, reuse) the run's Flower run config; validate it up front."""
    run_dir = cfg.run_dir
    path = run_dir / RUN_CONFIG_FILE
    checkpoint = run_dir / "checkpoint" / "checkpoint.pt"
    if cfg.resume:
        if not path.exists():
            raise CoordinatorError(f"nothing to resume: no run {cfg.run_name!r} in "
                                   f"{cfg.state_dir / 'runs'} (start it without --resume)")
        if (run_dir / "metrics.json").exists():
            raise CoordinatorError(f"run {cfg.run_name!r} already finished "
                                   f"({run_dir / 'metrics.json'}); nothing to resume")
        flat = tomllib.loads(path.read_text())
        flat["resume"] = True
        if cfg.run_config:
            logger.warning("--resume continues run %r with its stored config; ignoring %s",
                           cfg.run_name, ", ".join(sorted(cfg.run_config)))
    else:
        if checkpoint.exists() or (run_dir / "metrics.json").exists():
            raise CoordinatorError(
                f"run {cfg.run_name!r} already exists in {run_dir}; continue it with --resume "
                "or choose another --run-name")
        # The coordinator holds no patient data: no global test split (data = "").
        flat = {"data": "", **cfg.run_config, "out": str(run_dir.resolve())}
    try:
        RunConfig.from_flower(flat)
    except (ValueError, TypeError) as e:
        raise CoordinatorError(str(e)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        write_atomic(path, _flat_toml({k: v for k, v in flat.items() if k != "resume"}))
    submitted = run_dir / "submitted-run-config.toml"
    write_atomic(submitted, _flat_toml(flat))
    return submitted, flat


def _flat_toml(flat: dict[str, Any]) -> bytes:
    from common.site_config import flat_toml

    return flat_toml(flat, quote_keys=True).encode()


def stop_previous_run(cfg: CoordinatorConfig, env: dict[str, str]) -> None:
    """On resume: stop the killed coordinator's Flower run if the link state kept it."""
    record = _read_record(cfg)
    for run_id in record.get("flower_runs", []):
        with contextlib.suppress(CoordinatorError):
            status = run_status(run_id, env)
            if not status.startswith("finished"):
                flwr(["stop", str(run_id), CONNECTION], env)
                logger.info("stopped the interrupted Flower run %s (%s)", run_id, status)


def _read_record(cfg: CoordinatorConfig) -> dict:
    path = cfg.run_dir / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _append_record(cfg: CoordinatorConfig, **event: Any) -> None:
    record = _read_record(cfg)
    if "run_id" in event:
        record.setdefault("flower_runs", []).append(event["run_id"])
    record.setdefault("events", []).append({"time": time.time(), **event})
    write_atomic(cfg.run_dir / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())


def submit_run(cfg: CoordinatorConfig, env: dict[str, str], run_config: Path) -> int:
    """``flwr run`` of the app with the run config file; the Flower run id."""
    answer = flwr(["run", str(cfg.app_dir), CONNECTION, "--run-config", str(run_config)], env,
                  timeout=300)
    return int(answer["run-id"])


def run_status(run_id: int, env: dict[str, str]) -> str:
    runs = flwr(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs", [])
    return str(runs[0]["status"]) if runs else "unknown"


def run_details(run_id: int, env: dict[str, str]) -> dict:
    runs = flwr(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs", [])
    return runs[0] if runs else {}


def follow_run(run_id: int, env: dict[str, str], log_path: Path,
               echo: Callable[[str], None] | None = None) -> str:
    """Stream the run's log into ``log_path`` (and ``echo``) until it finishes."""
    from client.launcher import flower_executable

    cmd = [flower_executable("flwr"), "log", str(run_id), CONNECTION, "--stream"]
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=env.get("FLWR_HOME"))
        assert proc.stdout is not None
        for line in proc.stdout:
            clean = _ANSI.sub("", line)
            log.write(clean)
            log.flush()
            if echo is not None:
                echo(clean.rstrip("\n"))
        proc.wait()
    deadline = time.monotonic() + 60
    status = run_status(run_id, env)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1)
        status = run_status(run_id, env)
    return status


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_coordinator(cfg: CoordinatorConfig,
                    echo: Callable[[str], None] | None = None) -> RunResult:
    """Everything ``coordinator start`` does; returns when the run has finished."""
    pki = Pki(cfg.pki_dir)
    try:
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key,
                           host=None if cfg.host in ("0.0.0.0", "::", "") else cfg.host)
    except PkiError as e:
        raise CoordinatorError(str(e)) from None
    if not pki.authorized_sites():
        # Sites can still be registered by hand (`flwr supernode register`); say how.
        logger.warning("no site keys in %s: no site can join until keys are issued "
                       "(`cancer-alpha pki issue-site`) and synced "
                       "(`cancer-alpha coordinator sync-sites`)", cfg.pki_dir / "sites")
    if not (cfg.app_dir / "pyproject.toml").is_file():
        raise CoordinatorError(f"{cfg.app_dir} is not a Flower app (no pyproject.toml); "
                               "pass the project's source directory with --app (or "
                               "CANCER_ALPHA_APP)")
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    run_config, flat = prepare_run_config(cfg)
    env = coordinator_env(cfg)
    metrics_server = None
    if cfg.metrics_port:
        from server.monitoring import MULTIPROC_ENV, serve_coordinator_metrics

        # Each run's ServerApp is its own short-lived process: they write the metrics
        # to files in this directory, which this process serves summed.
        directory = cfg.state_dir / "metrics"
        env[MULTIPROC_ENV] = str(directory)
        metrics_server, _ = serve_coordinator_metrics(cfg.metrics_port, cfg.metrics_addr,
                                                      directory)
        logger.info("metrics at http://%s:%d/metrics", cfg.metrics_addr, cfg.metrics_port)
    write_flower_home(cfg)
    superlink = start_superlink(cfg, env)
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM,)}
    try:
        report = sync_sites(cfg, env)
        logger.info("sites: registered %s, kept %s, unregistered %s", report.registered,
                    report.kept, report.unregistered)
        if cfg.resume:
            stop_previous_run(cfg, env)
        started = time.perf_counter()
        run_id = submit_run(cfg, env, run_config)
        _append_record(cfg, run_id=run_id, resume=cfg.resume,
                       rounds=flat.get("rounds"), sites=report.nodes)
        logger.info("run %s submitted (%s)", run_id, cfg.run_dir)
        status = follow_run(run_id, env, cfg.run_dir / "coordinator.log", echo)
        details = run_details(run_id, env)
        metrics_path = cfg.run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        _append_record(cfg, finished=run_id, status=status,
                       traffic=details.get("network-traffic"),
                       compute=details.get("compute-time"))
        result = RunResult(run_id, status, cfg.run_dir, metrics,
                           time.perf_counter() - started)
        if cfg.keep_alive and not stop_requested:
            logger.info("run finished (%s); SuperLink stays up (Ctrl-C to stop)", status)
            with contextlib.suppress(KeyboardInterrupt):
                superlink.wait()
        return result
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_process(superlink)
        if metrics_server is not None:
            metrics_server.shutdown()
        (cfg.state_dir / "superlink.pid").unlink(missing_ok=True)
