"""Local port and state clashes between sites on one host.

Each site's SuperNode binds its Runtime API on 127.0.0.1 at ``[supernode] port``. Two
sites on one host with the same port cannot both run: the second SuperNode dies and the
coordinator later times out waiting for it. Two sites sharing a state directory would
write one privacy ledger. The other sites of a host are the other site configurations
in the same directory as this one (e.g. ``/etc/cancer-alpha/sites/*.toml``) and any named
explicitly; sites in separate containers or network namespaces do not share ports, so
keep their configurations in separate directories.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from pathlib import Path

from common.site_config import SiteConfig, SiteConfigError, load_site_config

LOCAL_HOST = "127.0.0.1"


def sibling_configs(cfg: SiteConfig, extra: Iterable[Path] = ()) -> list[SiteConfig]:
    """The other site configurations beside ``cfg``'s file, plus ``extra``; files that
    are not site configurations are skipped."""
    paths: set[Path] = {Path(p).resolve() for p in extra}
    if cfg.source is not None:
        paths |= {p.resolve() for p in Path(cfg.source).resolve().parent.glob("*.toml")}
        paths.discard(Path(cfg.source).resolve())
    out = []
    for path in sorted(paths):
        try:
            out.append(load_site_config(path, check_files=False))
        except SiteConfigError:
            continue  # another kind of TOML file (a manifest, a node config)
    return out


def clash_errors(cfg: SiteConfig, others: Iterable[SiteConfig]) -> list[str]:
    """A sentence for each other site that uses this site's port or state directory."""
    errors = []
    here = f"{cfg.site_id} ({cfg.source})"
    for other in others:
        there = f"{other.site_id} ({other.source})"
        if other.port == cfg.port:
            errors.append(f"[supernode] port {cfg.port} is configured for both {here} and "
                          f"{there}: on one host the second SuperNode cannot start; give "
                          "each site its own port")
        if other.state_dir == cfg.state_dir:
            errors.append(f"[site] state-dir {cfg.state_dir} is configured for both {here} "
                          f"and {there}: they would write one privacy ledger; give each "
                          "site its own state directory")
    return errors


def port_in_use(port: int, host: str = LOCAL_HOST) -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A listener refuses the bind; a stopped SuperNode's connections in TIME_WAIT
        # do not (the SuperNode itself could bind again).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def port_error(cfg: SiteConfig) -> str | None:
    """An error when this site's SuperNode port is taken on this host."""
    if port_in_use(cfg.port):
        return (f"[supernode] port {cfg.port} on {LOCAL_HOST} is already in use (another "
                "site's SuperNode, this site already running, or another program): the "
                "SuperNode could not start; choose a free port")
    return None
