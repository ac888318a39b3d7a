"""JWT issuing and verification: signature, expiry, issuer, audience, claims, algorithms."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from test_serving_helpers import SECRET

from server.serving.auth import AuthError, Role, TokenService
from server.serving.settings import AuthSettings, ServingSettings, SettingsError


def service(**kw) -> TokenService:
    return TokenService(AuthSettings(**{"secret": SECRET, **kw}))


def test_issue_and_verify_round_trip() -> None:
    svc = service()
    principal = svc.verify(svc.issue("alice", "researcher", ttl_seconds=60))
    assert principal.subject == "alice" and principal.role is Role.RESEARCHER
    assert len(principal.token_id) == 32
    claims = jwt.decode(svc.issue("bob", Role.LEAD), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600  # default ttl
    assert {claims["iss"], claims["aud"], claims["role"]} == {"cancer-alpha",
                                                              "cancer-alpha-serving", "lead"}


@pytest.mark.parametrize("case, reason", [
    ("expired", "token expired"),
    ("audience", "audience"),
    ("issuer", "issuer"),
    ("signature", "signature is invalid"),
    ("alg-none", "invalid token"),
    ("no-role", "'role' claim"),
    ("bad-role", "unknown role 'superuser'"),
    ("garbage", "invalid token"),
])
def test_rejected_tokens_name_the_reason(case: str, reason: str) -> None:
    svc = service(leeway_seconds=0)
    now = int(time.time())
    claims = {"sub": "mallory", "role": "admin", "iss": "cancer-alpha",
              "aud": "cancer-alpha-serving", "iat": now, "exp": now + 60}
    if case == "expired":
        token = svc.issue("mallory", "admin", ttl_seconds=5, now=now - 100)
    elif case == "audience":
        token = jwt.encode({**claims, "aud": "another-service"}, SECRET, algorithm="HS256")
    elif case == "issuer":
        token = jwt.encode({**claims, "iss": "someone-else"}, SECRET, algorithm="HS256")
    elif case == "signature":
        token = jwt.encode(claims, SECRET + "x", algorithm="HS256")
    elif case == "alg-none":
        token = jwt.encode(claims, None, algorithm="none")
    elif case == "no-role":
        token = jwt.encode({k: v for k, v in claims.items() if k != "role"}, SECRET,
                           algorithm="HS256")
    elif case == "bad-role":
        token = jwt.encode({**claims, "role": "superuser"}, SECRET, algorithm="HS256")
    else:
        token = "not-a-jwt"
    with pytest.raises(AuthError, match=reason):
        svc.verify(token)


def test_only_the_configured_algorithm_is_accepted() -> None:
    svc = service()
    now = int(time.time())
    claims = {"sub": "x", "role": "admin", "iss": "cancer-alpha", "aud": "cancer-alpha-serving",
              "iat": now, "exp": now + 60}
    with pytest.raises(AuthError):  # same secret, different HMAC algorithm
        svc.verify(jwt.encode(claims, SECRET, algorithm="HS512"))


def test_weak_or_missing_keys_are_refused() -> None:
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        TokenService(AuthSettings(secret="short"))
    with pytest.raises(SettingsError, match="needs a secret"):
        TokenService(AuthSettings())
    with pytest.raises(SettingsError, match="public key"):
        TokenService(AuthSettings(algorithm="ES256"))
    with pytest.raises(ValueError, match="ttl"):
        service(max_token_ttl_seconds=100).issue("a", "lead", ttl_seconds=101)


def test_asymmetric_keys_from_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv = tmp_path / "jwt.key"
    pub = tmp_path / "jwt.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    issuer = TokenService(ServingSettings.load(env={
        "CANCER_ALPHA_JWT_ALGORITHM": "ES256",
        "CANCER_ALPHA_JWT_PRIVATE_KEY_FILE": str(priv)}).auth)
    verifier = TokenService(ServingSettings.load(env={
        "CANCER_ALPHA_JWT_ALGORITHM": "ES256",
        "CANCER_ALPHA_JWT_PUBLIC_KEY_FILE": str(pub)}).auth)
    assert issuer.can_issue and not verifier.can_issue  # a server needs only the public key
    token = issuer.issue("site-lead", "lead")
    assert verifier.verify(token).role is Role.LEAD
    with pytest.raises(SettingsError, match="no signing key"):
        verifier.issue("x", "admin")
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(jwt.decode(token, options={"verify_signature": False}), other,
                        algorithm="ES256")
    with pytest.raises(AuthError, match="signature"):
        verifier.verify(forged)
