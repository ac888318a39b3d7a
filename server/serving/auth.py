"""JWT bearer authentication and role checks.

Tokens are signed with HS256/384/512 (a shared secret of at least 32 bytes) or an
asymmetric algorithm (RS*, PS*, ES*, EdDSA: the server needs only the public key).
Only the configured algorithm is accepted (no ``none``, no algorithm confusion), and
every token must carry ``sub``, ``role``, ``iss``, ``aud``, ``iat``, ``exp`` and ``jti``.

Time: a token is expired from its ``exp`` second on, exactly (no leeway). Clock skew
between the issuing and the verifying machine is allowed for ``iat`` and ``nbf`` only
(``leeway_seconds``, default 10 s, at most 300). The lifetime cap
(``max_token_ttl_seconds``) holds at verification too: a token whose ``exp - iat``, or
whose remaining life, exceeds it is refused whoever signed it. A single token is
revoked by its ``jti`` (:mod:`server.serving.revocation`).

Roles and what they may do on the service:

* ``admin``: the registry (list, show, promote), issuing tokens for users, metrics
* ``lead``: read models and their lineage, promote, metrics
* ``researcher``: predict and explain
* ``site``: nothing on the serving API (a hospital's identity in the federation)
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import jwt

from server.serving.settings import AuthSettings, SettingsError

MIN_HMAC_SECRET_BYTES = 32
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "role"]
# Tokens whose signature was checked, kept per process; far more than the callers of one
# service, small enough that clearing it now and then costs nothing.
_VERIFIED_TOKENS = 4096


class Role(StrEnum):
    ADMIN = "admin"
    LEAD = "lead"
    RESEARCHER = "researcher"
    SITE = "site"


ROLES = tuple(r.value for r in Role)


class AuthError(Exception):
    """The request is not authenticated (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    token_id: str


class TokenService:
    """Verifies tokens and, when it holds a signing key, issues them."""

    def __init__(self, cfg: AuthSettings) -> None:
        self.cfg = cfg
        self._verified: dict[str, dict] = {}  # token -> claims with a valid signature
        alg = cfg.algorithm
        if alg not in jwt.algorithms.get_default_algorithms() or alg == "none":
            raise SettingsError(f"JWT algorithm {alg!r} is not supported")
        if alg.startswith("HS"):
            if not cfg.secret:
                raise SettingsError(
                    f"{alg} needs a secret: set CANCER_ALPHA_JWT_SECRET or "
                    "CANCER_ALPHA_JWT_SECRET_FILE (or auth.secret_file in the config)")
            if len(cfg.secret.encode()) < MIN_HMAC_SECRET_BYTES:
                raise SettingsError(
                    f"the JWT secret must be at least {MIN_HMAC_SECRET_BYTES} bytes; generate "
                    "one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
            self._verify_key: str = cfg.secret
            self._sign_key: str | None = cfg.secret
        else:
            if not cfg.public_key and not cfg.private_key:
                raise SettingsError(
                    f"{alg} needs a public key to verify tokens: set "
                    "CANCER_ALPHA_JWT_PUBLIC_KEY_FILE (or auth.public_key_file)")
            self._sign_key = cfg.private_key or None
            self._verify_key = cfg.public_key or _public_from_private(cfg.private_key)

    @property
    def can_issue(self) -> bool:
        return self._sign_key is not None

    def issue(self, subject: str, role: Role | str, ttl_seconds: int | None = None,
              now: float | None = None) -> str:
        """A signed token for ``subject`` with ``role``, valid for ``ttl_seconds``."""
        if self._sign_key is None:
            raise SettingsError("no signing key configured (set a private key or HMAC secret)")
        role = Role(role)
        if not subject or len(subject) > 200:
            raise ValueError("subject must be 1-200 characters")
        ttl = self.cfg.token_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= self.cfg.max_token_ttl_seconds:
            raise ValueError(f"ttl must be in 1..{self.cfg.max_token_ttl_seconds} seconds")
        iat = int(time.time() if now is None else now)
        claims = {"sub": subject, "role": role.value, "iss": self.cfg.issuer,
                  "aud": self.cfg.audience, "iat": iat, "nbf": iat, "exp": iat + ttl,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._sign_key, algorithm=self.cfg.algorithm)

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The token's principal; :class:`AuthError` with the reason otherwise.

        A token's signature, audience and issuer are checked once and the claims kept
        (a client sends the same token with every request); its times and claims are
        checked on every call.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= _VERIFIED_TOKENS:
                self._verified.clear()  # bounded: a flood of tokens costs a re-check, no memory
            self._verified[token] = claims
        self._check_lifetime(claims, time.time() if now is None else now)
        try:
            role = Role(claims["role"])
        except ValueError as exc:
            raise AuthError(f"unknown role {claims['role']!r}") from exc
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise AuthError("token subject is empty")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthError("token lacks the 'jti' claim")
        return Principal(claims["sub"], role, jti)

    def _decode(self, token: str) -> dict:
        """The claims of a token whose signature, audience, issuer and required claims
        are valid; :class:`AuthError` otherwise."""
        try:
            return jwt.decode(
                token, self._verify_key, algorithms=[self.cfg.algorithm],
                audience=self.cfg.audience, issuer=self.cfg.issuer,
                # Times are checked in verify against one clock: exp exactly, iat/nbf with skew.
                options={"require": _REQUIRED_CLAIMS, "verify_exp": False,
                         "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token audience is not this service") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token issuer is not trusted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token ({exc.__class__.__name__})") from exc

    def _check_lifetime(self, claims: dict, now: float) -> None:
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not all(isinstance(v, int | float) and not isinstance(v, bool)
                   for v in (exp, iat, nbf)):
            raise AuthError("token times are not numbers")
        if now >= exp:
            raise AuthError("token expired")
        if max(iat, nbf) > now + self.cfg.leeway_seconds:
            raise AuthError("token is not valid yet (iat or nbf in the future)")
        cap = self.cfg.max_token_ttl_seconds
        if exp - iat > cap or exp - now > cap + self.cfg.leeway_seconds:
            raise AuthError(f"token lifetime exceeds the maximum of {cap} s")

    def token_id(self, token: str) -> str:
        """The ``jti`` of a token this service signed (signature checked, not expiry)."""
        return self.identify(token)[0]

    def identify(self, token: str) -> tuple[str, int]:
        """``jti`` and ``exp`` of a token this service signed (signature checked, not
        expiry): what revoking it needs."""
        try:
            claims = jwt.decode(token, self._verify_key, algorithms=[self.cfg.algorithm],
                                audience=self.cfg.audience, issuer=self.cfg.issuer,
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"not a token of this service ({exc.__class__.__name__})") from exc
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise AuthError("token lacks the 'jti' claim")
        exp = claims.get("exp")
        return claims["jti"], int(exp) if isinstance(exp, int | float) else 0


def _public_from_private(pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
