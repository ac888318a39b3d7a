"""Serving configuration: dataclasses filled from defaults, a TOML file and the environment.

Precedence, lowest first: field defaults, the ``[serving]`` table of a TOML file (and
its ``[serving.auth]`` sub-table), environment variables, explicit overrides (CLI
options). Secret values (the JWT HMAC secret, private keys, the audit chain key) are
never written in code: they come from an environment variable or from a file whose
path the TOML file or the environment names.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Worker processes rebuild their settings from this variable (see ``to_worker_env``).
WORKER_SETTINGS_ENV = "CANCER_ALPHA_SERVE_SETTINGS_JSON"
DEFAULT_DATABASE_URL = "sqlite:///runs/serving.db"
MAX_LEEWAY_SECONDS = 300


class SettingsError(ValueError):
    """The serving configuration is incomplete or inconsistent."""


@dataclass
class AuthSettings:
    """JWT verification (and, where a signing key is configured, issuing)."""

    algorithm: str = "HS256"  # HS256/384/512 with ``secret``; RS*, PS*, ES*, EdDSA with keys
    secret: str = field(default="", repr=False)
    secret_file: str = ""
    private_key: str = field(default="", repr=False)  # PEM; only needed to issue tokens
    private_key_file: str = ""
    public_key: str = field(default="", repr=False)  # PEM; verifies tokens (asymmetric algs)
    public_key_file: str = ""
    issuer: str = "cancer-alpha"
    audience: str = "cancer-alpha-serving"
    token_ttl_seconds: int = 3600
    max_token_ttl_seconds: int = 30 * 24 * 3600
    leeway_seconds: int = 10  # clock skew allowed for iat/nbf; exp is exact


@dataclass
class ServingSettings:
    """Everything ``cancer-alpha serve`` and the registry commands need."""

    database_url: str = DEFAULT_DATABASE_URL
    # "production" (the production-stage model of ``model_name``), "NAME:VERSION", or a
    # run/bundle directory served without the registry.
    model: str = "production"
    model_name: str = "cancer-alpha"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    torch_threads: int = 0  # 0: cores / workers
    max_batch: int = 256  # patients per /v1/predict/batch request
    max_body_bytes: int = 32 * 1024 * 1024
    max_explain_steps: int = 256
    # Modalities every request must contain (empty: any non-empty subset is accepted).
    required_modalities: tuple[str, ...] = ()
    # Trace and freeze the network with TorchScript for serving (see predictor.py).
    torchscript: bool = True
    # In-process LRU of predictions per worker (prediction_cache.py): patients it holds.
    prediction_cache: bool = True
    prediction_cache_size: int = 10_000
    # Redis URL (redis://host:port/db) of a cache shared by workers; empty: the LRU above.
    prediction_cache_redis_url: str = ""
    metrics_public: bool = False  # /metrics without a token (scrape over a private network)
    ssl_keyfile: str = ""
    ssl_certfile: str = ""
    log_level: str = "info"
    audit_key: str = field(default="", repr=False)  # HMAC key for the audit chain
    audit_key_file: str = ""
    # Signed head of the audit chain, kept apart from the database (audit_log.AuditAnchor);
    # default: next to a SQLite database file; other databases must name one.
    audit_anchor_file: str = ""
    auth: AuthSettings = field(default_factory=AuthSettings)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        config_file: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServingSettings:
        """Defaults < TOML ``[serving]`` < environment < ``overrides`` (None values skipped)."""
        env = os.environ if env is None else env
        top: dict[str, Any] = {}
        auth: dict[str, Any] = {}
        if config_file:
            path = Path(config_file)
            try:
                doc = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{path}: cannot read the serving config ({exc})") from exc
            section = doc.get("serving", doc)
            section = dict(section)
            auth.update(_checked(section.pop("auth", {}), AuthSettings, f"{path} [serving.auth]"))
            top.update(_checked(section, cls, f"{path} [serving]"))
        for name, var in _ENV.items():
            if var in env:
                top[name] = _coerce(cls, name, env[var], var)
        for name, var in _AUTH_ENV.items():
            if var in env:
                auth[name] = _coerce(AuthSettings, name, env[var], var)
        auth_over = overrides.pop("auth", None)
        top.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**top, auth=AuthSettings(**auth))
        if isinstance(auth_over, AuthSettings):
            settings.auth = auth_over
        return settings.resolved()

    def resolved(self) -> ServingSettings:
        """A copy with secrets read from their files and derived values filled in."""
        auth = replace(
            self.auth,
            secret=self.auth.secret or _read_secret(self.auth.secret_file),
            private_key=self.auth.private_key or _read_secret(self.auth.private_key_file),
            public_key=self.auth.public_key or _read_secret(self.auth.public_key_file),
        )
        out = replace(
            self,
            auth=auth,
            audit_key=self.audit_key or _read_secret(self.audit_key_file),
            required_modalities=tuple(self.required_modalities),
        )
        out.validate()
        return out

    def validate(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.torch_threads < 0:
            problems.append(f"torch_threads must be >= 0, got {self.torch_threads}")
        if self.max_batch < 1:
            problems.append(f"max_batch must be >= 1, got {self.max_batch}")
        if self.prediction_cache and self.prediction_cache_size < 1:
            problems.append("prediction_cache_size must be >= 1 (or set prediction_cache "
                            f"= false), got {self.prediction_cache_size}")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            problems.append("ssl_keyfile and ssl_certfile must be given together")
        if self.auth.token_ttl_seconds < 1:
            problems.append("auth.token_ttl_seconds must be >= 1")
        if not 0 <= self.auth.leeway_seconds <= MAX_LEEWAY_SECONDS:
            problems.append(f"auth.leeway_seconds (clock skew allowed for iat/nbf) must be "
                            f"in 0..{MAX_LEEWAY_SECONDS}")
        if problems:
            raise SettingsError("invalid serving configuration: " + "; ".join(problems))

    def audit_anchor_path(self) -> Path | None:
        """Where the audit anchor lives; ``None`` when the database has no file to sit
        beside and none was named."""
        if self.audit_anchor_file:
            return Path(self.audit_anchor_file).expanduser()
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(f"{url.database}.audit-anchor.json").expanduser()
        return None

    def threads_per_worker(self) -> int:
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    # ----------------------------------------------------------- worker handoff
    def to_worker_env(self) -> str:
        """JSON of the settings without secret values (workers re-read those themselves)."""
        d = asdict(self)
        for name in _SECRET_FIELDS:
            d.pop(name, None)
            d["auth"].pop(name, None)
        return json.dumps(d)

    @classmethod
    def from_worker_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if env is None else env
        if WORKER_SETTINGS_ENV not in env:
            return cls.load(env=env)
        d = json.loads(env[WORKER_SETTINGS_ENV])
        auth = AuthSettings(**d.pop("auth"))
        for name, var in _AUTH_ENV.items():
            if name in _SECRET_FIELDS and var in env:
                setattr(auth, name, env[var])
        settings = cls(**d, auth=auth)
        if "CANCER_ALPHA_AUDIT_KEY" in env:
            settings.audit_key = env["CANCER_ALPHA_AUDIT_KEY"]
        return settings.resolved()


_SECRET_FIELDS = ("secret", "private_key", "public_key", "audit_key")

# Environment variable for each field. The database URL is shared with the registry and
# audit commands, hence its shorter name.
_ENV = {
    "database_url": "CANCER_ALPHA_DATABASE_URL",
    "audit_key": "CANCER_ALPHA_AUDIT_KEY",
    "audit_key_file": "CANCER_ALPHA_AUDIT_KEY_FILE",
    "audit_anchor_file": "CANCER_ALPHA_AUDIT_ANCHOR_FILE",
    **{
        f.name: f"CANCER_ALPHA_SERVE_{f.name.upper()}"
        for f in fields(ServingSettings)
        if f.name not in ("database_url", "audit_key", "audit_key_file", "audit_anchor_file",
                          "auth")
    },
}
_AUTH_ENV = {f.name: f"CANCER_ALPHA_JWT_{f.name.upper()}" for f in fields(AuthSettings)}


def env_variables() -> dict[str, str]:
    """Every recognised environment variable -> the setting it sets (for docs and --help)."""
    out = {var: name for name, var in _ENV.items()}
    out.update({var: f"auth.{name}" for name, var in _AUTH_ENV.items()})
    return out


def _checked(table: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: expected a table")
    known = {f.name for f in fields(cls)} - {"auth"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    inline = sorted(k for k in table if k in _SECRET_FIELDS)
    if inline:
        raise SettingsError(
            f"{where}: {inline} must not be written in a config file; name a file with "
            f"{[k + '_file' for k in inline]} or set the environment variable"
        )
    return dict(table)


def _coerce(cls: type, name: str, raw: str, var: str) -> Any:
    kind = type(getattr(cls(), name))
    try:
        if kind is bool:
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.strip().lower() in ("1", "true", "yes")
        if kind is int:
            return int(raw)
        if kind is tuple:
            return tuple(s.strip() for s in raw.split(",") if s.strip())
    except ValueError as exc:
        raise SettingsError(f"${var}={raw!r}: expected {kind.__name__}") from exc
    return raw


def _read_secret(path: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"cannot read secret file {path}: {exc}") from exc
