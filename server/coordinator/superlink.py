"""The SuperLink process: its command line, start-up until it serves TLS, and the
guard against a second SuperLink on the same state directory."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path

from common.atomic import write_text_atomic
from common.pki import Pki, PkiError, probe_tls
from common.processes import command_line, stop_process
from server.coordinator.guard import GUARD_MODULE, TOKEN_FILE, operator_token
from server.coordinator.settings import DATABASE, CoordinatorConfig, CoordinatorError

logger = logging.getLogger(__name__)

PID_FILE = "superlink.pid"


def superlink_command(cfg: CoordinatorConfig) -> list[str]:
    """`flower-superlink` with TLS, node authentication and a persistent database, behind
    the operator guard (:mod:`server.coordinator.guard`: run control needs the state
    directory's operator token, the runtime interface this host)."""
    pki = Pki(cfg.pki_dir)
    token_file = cfg.state_dir / TOKEN_FILE
    return [
        sys.executable, "-m", GUARD_MODULE, "--operator-token-file", str(token_file), "--",
        "--ssl-ca-certfile", str(pki.ca_cert.resolve()),
        "--ssl-certfile", str(pki.server_cert.resolve()),
        "--ssl-keyfile", str(pki.server_key.resolve()),
        "--enable-supernode-auth",
        "--database", str((cfg.state_dir / DATABASE).resolve()),
        "--host", cfg.host, "--port", str(cfg.port),
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
    ]


def start_superlink(cfg: CoordinatorConfig, env: dict[str, str]) -> subprocess.Popen:
    """Start the SuperLink (same process group as the coordinator) and wait until it
    serves TLS; errors quote its log."""
    log_dir = cfg.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "superlink.log"
    _refuse_stale_superlink(cfg)
    operator_token(cfg.state_dir)
    cmd = superlink_command(cfg)
    logger.info("starting: %s", " ".join(cmd))
    with open(log_path, "ab") as log:
        log_path.chmod(0o600)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cfg.state_dir)
    write_text_atomic(cfg.state_dir / PID_FILE, f"{proc.pid}\n")
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
    pid_file = cfg.state_dir / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if GUARD_MODULE in command_line(pid):
            raise CoordinatorError(
                f"a SuperLink started from {cfg.state_dir} is still running (PID {pid}); "
                f"stop it first (kill {pid}) or use another --state-dir")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
