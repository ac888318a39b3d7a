"""Start a hospital's Flower SuperNode from its ``site.toml``.

``cancer-alpha site start --config site.toml`` runs :func:`run_site`: pre-flight checks
(:func:`preflight`), then ``flower-supernode`` in the foreground with

* TLS: ``--root-certificates`` = the consortium CA (the SuperLink's certificate must
  chain to it; Flower 1.41 speaks HTTPS to the Fleet API, TLS is never switched off);
* node authentication: ``--auth-supernode-private-key`` (the SuperLink accepts only
  public keys the coordinator registered);
* ``--node-config FILE``: a TOML file written into the site's state directory, so the
  ClientApp reads the site's own data directory and privacy budget from node config;
* ``--isolation process`` and the site worker (:mod:`client.worker`) beside it: one
  long-lived process that keeps Flower, torch and the site's data loaded and runs every
  task (Flower's own ``flwr-clientapp`` would start a fresh process per message);
  ``CANCER_ALPHA_CLIENTAPP=subprocess`` goes back to Flower's process per message;
* the Runtime API between SuperNode and ClientApp bound to 127.0.0.1;
* an offline environment: Flower installs nothing at run time and never phones home.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import write_text_atomic
from common.flower import flower_executable, flower_process_env
from common.pki import (
    PkiError,
    check_private_key_permissions,
    check_valid_now,
    load_certificate,
    load_private_key,
    load_site_public_key,
    probe_tls,
    public_key_fingerprint,
)
from common.site_config import SiteConfig, node_config_toml

logger = logging.getLogger(__name__)

NODE_CONFIG_FILE = "node-config.toml"
# How the SuperNode's tasks run: "worker" (one long-lived site worker) or "subprocess"
# (Flower's fresh flwr-clientapp process per message).
CLIENTAPP_ENV = "CANCER_ALPHA_CLIENTAPP"
CLIENTAPP_MODES = ("worker", "subprocess")
_OPENSSH = b"-----BEGIN OPENSSH PRIVATE KEY-----"


@dataclass
class Preflight:
    """What :func:`preflight` found: errors stop the site, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def preflight(cfg: SiteConfig, *, check_data: bool = True, probe_coordinator: bool = False,
              unreachable_ok: bool = False, check_ports: bool = True,
              other_configs: Iterable[Path] = ()) -> Preflight:
    """Check keys, certificates, local ports and data before joining; never sends any data.

    ``check_ports``: the SuperNode's local port must be free, and no other site of this
    host (the site configurations beside this one, and ``other_configs``) may use the
    same port or state directory (see :mod:`client.ports`).

    ``probe_coordinator`` opens a TLS connection to the coordinator and verifies its
    certificate against the site's CA (expired, wrong CA, wrong name are reported in
    plain words); it sends nothing beyond the TLS handshake. With ``unreachable_ok`` a
    coordinator that is not up yet is only a warning (the SuperNode keeps trying).
    """
    out = Preflight()
    try:
        ca = load_certificate(cfg.root_certificates, "CA certificate")
        check_valid_now(ca, "CA certificate", cfg.root_certificates)
        out.info.append(f"CA {ca.subject.rfc4514_string()}, valid until "
                        f"{ca.not_valid_after_utc:%Y-%m-%d}")
    except PkiError as e:
        out.errors.append(str(e))
    try:
        key = load_private_key(cfg.private_key, "node-auth private key")
        if not cfg.private_key.read_bytes().lstrip().startswith(_OPENSSH):
            out.errors.append(f"[tls] private-key {cfg.private_key} is a PEM key; Flower reads "
                              "node-auth keys in OpenSSH format only (convert it in place "
                              f"with: ssh-keygen -p -N '' -f {cfg.private_key})")
        warning = check_private_key_permissions(cfg.private_key)
        if warning:
            out.warnings.append(warning)
        if cfg.public_key is not None:
            public = load_site_public_key(cfg.public_key)
            if public.public_numbers() != key.public_key().public_numbers():
                out.errors.append(f"[tls] public-key {cfg.public_key} is not the public half "
                                  f"of private-key {cfg.private_key}")
            else:
                out.info.append(f"node-auth key {public_key_fingerprint(public)} (the "
                                "coordinator must have registered this fingerprint)")
    except PkiError as e:
        out.errors.append(str(e))
    if check_ports:
        _check_ports(cfg, other_configs, out)
    if check_data:
        out.errors += _data_errors(cfg, out)
    if probe_coordinator and out.ok:
        try:
            cert = probe_tls(cfg.coordinator, cfg.root_certificates)
            out.info.append(f"coordinator {cfg.coordinator}: TLS certificate verified, valid "
                            f"until {cert.not_valid_after_utc:%Y-%m-%d}")
        except PkiError as e:
            if unreachable_ok and "cannot reach" in str(e):
                out.warnings.append(f"{e} (not up yet? the site keeps trying)")
            else:
                out.errors.append(str(e))
    return out


def _check_ports(cfg: SiteConfig, other_configs: Iterable[Path], out: Preflight) -> None:
    from client.ports import clash_errors, port_error, sibling_configs

    others = sibling_configs(cfg, other_configs)
    clashes = clash_errors(cfg, others)
    out.errors += clashes
    taken = port_error(cfg)
    if taken:
        out.errors.append(taken)
    elif not clashes:
        out.info.append(f"SuperNode port {cfg.port} is free"
                        + (f" and no other of the {len(others)} site(s) configured beside "
                           "this one uses it" if others else ""))


def _data_errors(cfg: SiteConfig, out: Preflight) -> list[str]:
    from common.dataset import inspect_dataset

    _, report = inspect_dataset(cfg.data_dir, manifest=cfg.manifest)
    out.info.append(f"data {cfg.data_dir}: {report.n_patients} patients, "
                    f"{len(report.modalities)} modalities, {len(report.warnings)} warning(s)")
    errors = [f"data {cfg.data_dir}: {f}" for f in report.errors]
    if not errors and report.n_patients and not report.classes:
        errors.append(f"data {cfg.data_dir}: no labels found; training needs labels.csv")
    return errors


def write_node_config(cfg: SiteConfig) -> Path:
    """The node config TOML in the state directory (0600: it names local paths)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / NODE_CONFIG_FILE
    write_text_atomic(path, node_config_toml(cfg.node_config()), private=True)
    return path


def clientapp_mode() -> str:
    """``worker`` unless ``CANCER_ALPHA_CLIENTAPP`` says ``subprocess``."""
    mode = os.environ.get(CLIENTAPP_ENV, "worker").strip().lower() or "worker"
    if mode not in CLIENTAPP_MODES:
        raise ValueError(f"{CLIENTAPP_ENV}={mode!r}: expected one of {CLIENTAPP_MODES}")
    return mode


def supernode_command(cfg: SiteConfig, node_config: Path, mode: str = "worker") -> list[str]:
    isolation = "process" if mode == "worker" else "subprocess"
    # Beside the worker, Flower's SuperNode with shorter waits (client.worker_supernode).
    program = ([sys.executable, "-m", "client.worker_supernode"] if mode == "worker"
               else [flower_executable("flower-supernode")])
    cmd = [
        *program,
        "--superlink", cfg.coordinator,
        "--root-certificates", str(cfg.root_certificates),
        "--auth-supernode-private-key", str(cfg.private_key),
        "--node-config", str(node_config),
        "--isolation", isolation,
        "--host", "127.0.0.1", "--port", str(cfg.port),
    ]
    if cfg.max_retries:
        cmd += ["--max-retries", str(cfg.max_retries)]
    if cfg.max_wait_time:
        cmd += ["--max-wait-time", str(cfg.max_wait_time)]
    return cmd


def site_environment(cfg: SiteConfig) -> dict[str, str]:
    """The SuperNode's environment: offline Flower, its own FLWR_HOME, GPU selection."""
    env = flower_process_env()
    # Flower unpacks each app into FLWR_HOME; keep it with the site's state, not in $HOME.
    env.setdefault("FLWR_HOME", str(cfg.state_dir / "flwr-home"))
    if cfg.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # never touch a GPU other users may hold
    return env


def start_supernode(cfg: SiteConfig, *, stdout: Any = None,
                    mode: str = "worker") -> subprocess.Popen:
    """Launch the SuperNode in this process group: stopping the group (Ctrl-C, a service
    manager, a container runtime) stops the SuperNode with it."""
    node_config = write_node_config(cfg)
    cmd = supernode_command(cfg, node_config, mode)
    logger.info("starting: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=site_environment(cfg), cwd=cfg.state_dir,
                            stdout=stdout, stderr=subprocess.STDOUT)


def run_site(cfg: SiteConfig, *, log_file: Path | None = None, echo: bool = True) -> int:
    """Run the SuperNode in the foreground until it exits; SIGINT/SIGTERM stop it cleanly.

    Its output goes to ``log_file`` (default ``STATE_DIR/supernode.log``) and, with
    ``echo``, to this terminal; when it is refused, the reason is explained.
    """
    from client.worker_process import SiteWorker

    log_file = log_file or cfg.state_dir / "supernode.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    mode = clientapp_mode()
    proc = start_supernode(cfg, stdout=subprocess.PIPE, mode=mode)

    def forward(signum: int, _frame: object) -> None:
        # The SuperNode tells the SuperLink it is leaving (then it is offline at once,
        # instead of after missed heartbeats) and stops its ClientApp processes.
        if proc.poll() is None:
            os.kill(proc.pid, signum)

    tail: list[str] = []
    fatal: list[int] = []

    log = _SiteLog(log_file, echo)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = log.write(raw)
            tail[:] = [*tail[-200:], line]
            if not fatal and (match := _FATAL.search(line)):
                # Flower 1.41's SuperNode reports a refused connection but may keep
                # its process alive: stop it so the site's service manager sees it.
                fatal.append(int(match.group(1)))
                threading.Thread(target=_stop_later, args=(proc,), daemon=True).start()

    # Read the output in a thread and wait for the SuperNode here: its helper processes
    # hold the pipe open until they see the SuperNode gone, which needs it reaped first.
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    worker = SiteWorker(cfg, site_environment(cfg), log.write, alive=lambda: proc.poll() is None)
    if mode == "worker":
        worker.start()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        worker.stop()
    reader.join(timeout=15)
    log.close()
    if fatal:
        code = fatal[0]
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        logger.error("%s", explain_exit(code, "".join(tail)))
    return code


_FATAL = re.compile(r"Exit Code: (\d+)")


class _SiteLog:
    """The site's log file (a UTC timestamp on each line: Flower's lines carry no time)
    and, with ``echo``, this terminal; written from the SuperNode's and the worker's
    output threads."""

    def __init__(self, path: Path, echo: bool) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed by run_site
        self._echo = echo
        self._lock = threading.Lock()

    def write(self, raw: bytes) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")
        line = raw.decode(errors="replace")
        with self._lock:
            if not self._file.closed:
                self._file.write(stamp.encode() + raw)
                self._file.flush()
            if self._echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        return line

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _stop_later(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Give the SuperNode ``grace`` seconds to exit after a fatal error, then stop it."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


# Flower 1.41's messages for the ways a SuperNode is turned away, and what to do.
_REFUSALS = (
    ("Failed to activate SuperNode", "the coordinator refused this site's key: it is not "
     "registered (yet), or it was revoked or rotated; ask the coordinator to run `cancer-alpha "
     "pki issue-site` and `cancer-alpha coordinator sync-sites`. If this site crashed less "
     "than a minute ago, its previous session has not expired yet: start again in a minute"),
    ("must be registered via the CLI", "the coordinator requires node authentication and "
     "this SuperNode has no registered key: set [tls] private-key in site.toml"),
    ("SSL/TLS handshake error", "TLS failed: run `cancer-alpha site check --config site.toml "
     "--probe` to see whether the coordinator's certificate expired or was not issued by "
     "your CA"),
    ("Unable to parse the private key", "the [tls] private-key file is not an EC key in "
     "OpenSSH/PEM format"),
)


def explain_exit(code: int, log: str) -> str:
    """A sentence for the site's IT: why the SuperNode stopped and what to do."""
    for needle, advice in _REFUSALS:
        if needle in log:
            return f"the SuperNode stopped (exit code {code}): {advice}"
    return (f"the SuperNode stopped with exit code {code} (see "
            f"https://flower.ai/docs/framework/ref-exit-codes/{code}.html and its log)")
