"""``site.toml``: everything one hospital needs to join the consortium.

::

    [site]
    id = "hospital-a"                       # the name its key was issued under
    data-dir = "/srv/cancer-alpha/data"     # the site's own dataset (see common.dataset)
    manifest = ""                           # optional dataset.toml kept elsewhere
    device = "auto"                         # auto, cpu, cuda, cuda:1, mps
    state-dir = "/var/lib/cancer-alpha"     # privacy ledger, node config, logs

    [coordinator]
    address = "coordinator.example.org:9092"

    [tls]
    root-certificates = "certs/ca.crt"      # the consortium CA (verifies the coordinator)
    private-key = "certs/site.key"          # node-authentication key (OpenSSH EC, 0600)
    public-key = "certs/site.pub"           # optional: checked against private-key

    [privacy]                               # local DP budget (used when the run has dp=local)
    epsilon = 8.0
    delta = 0.0                             # 0: 1e-5
    max-noise-multiplier = 10.0

    [supernode]                             # optional
    port = 9094                             # local Runtime API port (127.0.0.1 only)
    max-retries = 0                         # reconnection attempts, 0 = forever
    max-wait-time = 0.0                     # seconds of reconnecting, 0 = forever

    [demo]                                  # optional, demonstrations and tests only:
    partition-id = 0                        # hospital k of num-partitions of data-dir,
    num-partitions = 3                      # split as the simulation engine splits it
    partition = "iid"

Relative paths are relative to the file's directory. Unknown sections or keys are
errors, so a typo never passes silently.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.pki import SITE_ID

DEVICES = ("auto", "cpu", "cuda", "mps")


class SiteConfigError(ValueError):
    """site.toml is missing, malformed, or names something that does not exist."""


@dataclass(frozen=True)
class PrivacySettings:
    # A site's defaults are the run configuration's.
    epsilon: float = RunConfig.epsilon
    delta: float = RunConfig.delta
    max_noise_multiplier: float = RunConfig.max_noise_multiplier


@dataclass(frozen=True)
class DemoPartition:
    partition_id: int
    num_partitions: int
    partition: str = "iid"


@dataclass(frozen=True)
class SiteConfig:
    """A validated site.toml; paths are absolute."""

    site_id: str
    data_dir: Path
    coordinator: str  # host:port
    root_certificates: Path
    private_key: Path
    state_dir: Path
    public_key: Path | None = None
    manifest: Path | None = None
    device: str = "auto"
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    port: int = 9094
    max_retries: int = 0
    max_wait_time: float = 0.0
    demo: DemoPartition | None = None
    source: Path | None = None

    def node_config(self) -> dict[str, Any]:
        """Flower node config for this site's SuperNode (read by client.site / client.dp)."""
        out: dict[str, Any] = {
            "site-name": self.site_id,
            "data-dir": str(self.data_dir),
            "device": self.device,
            "state-dir": str(self.state_dir),
            "epsilon": self.privacy.epsilon,
            "delta": self.privacy.delta,
            "max-noise-multiplier": self.privacy.max_noise_multiplier,
        }
        if self.manifest is not None:
            out["manifest"] = str(self.manifest)
        if self.demo is not None:
            out.update({"partition-id": self.demo.partition_id,
                        "num-partitions": self.demo.num_partitions,
                        "partition": self.demo.partition})
        return out


_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "site": {"id": str, "data-dir": str, "manifest": str, "device": str, "state-dir": str},
    "coordinator": {"address": str},
    "tls": {"root-certificates": str, "private-key": str, "public-key": str},
    "privacy": {"epsilon": (int, float), "delta": (int, float),
                "max-noise-multiplier": (int, float)},
    "supernode": {"port": int, "max-retries": int, "max-wait-time": (int, float)},
    "demo": {"partition-id": int, "num-partitions": int, "partition": str},
}
_REQUIRED = {"site": ("id", "data-dir"), "coordinator": ("address",),
             "tls": ("root-certificates", "private-key")}


def load_site_config(path: Path | str, *, check_files: bool = True) -> SiteConfig:
    """Read and validate ``path``; raise :class:`SiteConfigError` listing every problem."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteConfigError(f"site config {path} does not exist") from None
    except OSError as e:
        raise SiteConfigError(f"cannot read site config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SiteConfigError(f"{path} is not valid TOML: {e}") from None
    return parse_site_config(raw, path.resolve().parent, source=path, check_files=check_files)


def parse_site_config(raw: dict[str, Any], base: Path, *, source: Path | None = None,
                      check_files: bool = True) -> SiteConfig:
    where = str(source) if source else "site config"
    problems: list[str] = []
    for section, table in raw.items():
        if section not in _SECTIONS:
            problems.append(f"unknown section [{section}] (known: {', '.join(_SECTIONS)})")
            continue
        if not isinstance(table, dict):
            problems.append(f"{section} must be a [section]")
            continue
        for key, value in table.items():
            expected = _SECTIONS[section].get(key)
            if expected is None:
                problems.append(f"[{section}] unknown key {key!r} "
                                f"(known: {', '.join(_SECTIONS[section])})")
            elif isinstance(value, bool) or not isinstance(value, expected):
                kind = {str: "a string", int: "an integer"}.get(expected, "a number")
                problems.append(f"[{section}] {key} must be {kind}, got {value!r}")
    for section, keys in _REQUIRED.items():
        table = raw.get(section)
        problems += [f"[{section}] {key} is required" for key in keys
                     if not isinstance(table, dict) or key not in table]
    if problems:
        raise SiteConfigError(f"{where}: " + "; ".join(problems))

    def get(section: str, key: str, default: Any = None) -> Any:
        return raw.get(section, {}).get(key, default)

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    site_id = get("site", "id")
    if not SITE_ID.match(site_id):
        problems.append(f"[site] id {site_id!r} must be 1-63 lowercase letters, digits, '-' or "
                        "'_' (the name its key was issued under)")
    address = get("coordinator", "address").strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"[coordinator] address {address!r} must be host:port, e.g. "
                        "coordinator.example.org:9092")
    elif "://" in host:
        problems.append(f"[coordinator] address {address!r} must not have a scheme "
                        "(TLS is always on)")
    device = get("site", "device", "auto")
    if device.split(":")[0] not in DEVICES:
        problems.append(f"[site] device {device!r} must be one of {', '.join(DEVICES)} "
                        "(cuda:N for a given GPU)")
    privacy = PrivacySettings(
        float(get("privacy", "epsilon", PrivacySettings.epsilon)),
        float(get("privacy", "delta", PrivacySettings.delta)),
        float(get("privacy", "max-noise-multiplier", PrivacySettings.max_noise_multiplier)))
    if not privacy.epsilon > 0:
        problems.append(f"[privacy] epsilon must be > 0, got {privacy.epsilon}")
    if not 0 <= privacy.delta < 1:
        problems.append(f"[privacy] delta must be in [0, 1), got {privacy.delta}")
    if not privacy.max_noise_multiplier > 0:
        problems.append("[privacy] max-noise-multiplier must be > 0")
    local_port = get("supernode", "port", 9094)
    if not 0 < local_port < 65536:
        problems.append(f"[supernode] port must be 1-65535, got {local_port}")
    max_retries = get("supernode", "max-retries", 0)
    max_wait = float(get("supernode", "max-wait-time", 0.0))
    if max_retries < 0 or max_wait < 0:
        problems.append("[supernode] max-retries and max-wait-time must be >= 0 (0 = forever)")
    demo = None
    if "demo" in raw:
        if {"partition-id", "num-partitions"} - set(raw["demo"]):
            problems.append("[demo] needs both partition-id and num-partitions")
        else:
            demo = DemoPartition(get("demo", "partition-id"), get("demo", "num-partitions"),
                                 get("demo", "partition", "iid"))
            if not 0 <= demo.partition_id < demo.num_partitions:
                problems.append(f"[demo] partition-id must be in [0, num-partitions), got "
                                f"{demo.partition_id} of {demo.num_partitions}")

    manifest = get("site", "manifest", "")
    public_key = get("tls", "public-key", "")
    cfg = SiteConfig(
        site_id=site_id, data_dir=resolve(get("site", "data-dir")), coordinator=address,
        root_certificates=resolve(get("tls", "root-certificates")),
        private_key=resolve(get("tls", "private-key")),
        public_key=resolve(public_key) if public_key else None,
        state_dir=resolve(get("site", "state-dir", f"state/{site_id}")),
        manifest=resolve(manifest) if manifest else None, device=device, privacy=privacy,
        port=local_port, max_retries=max_retries, max_wait_time=max_wait, demo=demo,
        source=source,
    )
    if check_files:
        problems += _missing_files(cfg)
    if problems:
        raise SiteConfigError(f"{where}: " + "; ".join(problems))
    return cfg


def _missing_files(cfg: SiteConfig) -> list[str]:
    out = []
    if not cfg.data_dir.is_dir():
        out.append(f"[site] data-dir {cfg.data_dir} is not a directory")
    if cfg.manifest is not None and not cfg.manifest.is_file():
        out.append(f"[site] manifest {cfg.manifest} does not exist")
    if not cfg.root_certificates.is_file():
        out.append(f"[tls] root-certificates {cfg.root_certificates} does not exist "
                   "(ask the coordinator for the consortium's ca.crt)")
    if not cfg.private_key.is_file():
        out.append(f"[tls] private-key {cfg.private_key} does not exist (the coordinator "
                   "issues it with `cancer-alpha pki issue-site`, or generate your own with "
                   "`ssh-keygen -t ecdsa -b 384` and send only the .pub)")
    if cfg.public_key is not None and not cfg.public_key.is_file():
        out.append(f"[tls] public-key {cfg.public_key} does not exist")
    return out


def toml_value(value: Any) -> str:
    """A scalar as TOML: booleans, numbers, or a string (JSON escapes are valid TOML)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def flat_toml(values: dict[str, Any], *, quote_keys: bool = False) -> str:
    """Flat ``key = value`` lines. Quoted keys keep dotted names (``"model.d-model"``)
    as one key instead of a nested table."""
    def key(k: str) -> str:
        bare = all(c.isalnum() or c in "-_" for c in k)
        return k if bare and not quote_keys else toml_value(k)

    return "".join(f"{key(k)} = {toml_value(v)}\n" for k, v in values.items())


def node_config_toml(node_config: dict[str, Any]) -> str:
    """The node config as the TOML file ``flower-supernode --node-config FILE`` reads."""
    return flat_toml(node_config)
