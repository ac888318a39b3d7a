"""JWT issuing and verification (signature, expiry, issuer, audience, claims,
algorithms), and who may call what over HTTP: the role matrix of every endpoint, role
checks as replaceable dependencies, and the security requirements in OpenAPI."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from test_serving_helpers import (
    ENDPOINTS,
    SECRET,
    call,
    create_app_for,
    patient_json,
    serve_test_model,
)
from typer.testing import CliRunner

from server.serving.auth import ROLES, AuthError, Principal, Role, TokenService
from server.serving.revocation import RevocationList
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


# ------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread) -> dict[str, Any]:
    return serve_test_model(tmp_path_factory.mktemp("auth"))


def valid_request(served, method: str, path: str) -> dict[str, Any]:
    p = patient_json(served["data"], 0)
    bodies = {
        "/v1/predict": p,
        "/v1/predict/batch": {"patients": [p, patient_json(served["data"], 1)]},
        "/v1/explain": {**p, "steps": 8},
        "/v1/models/{model_id}/promote": {"stage": "production"},
        "/v1/tokens": {"subject": "new-user", "role": "researcher", "ttl_seconds": 60},
    }
    return {"json": bodies[path]} if path in bodies else {}


def test_matrix_covers_every_route(served) -> None:
    from fastapi.routing import iter_route_contexts

    docs = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    routes = {(m, r.path) for r in iter_route_contexts(served["app"].routes)
              if r.path not in docs for m in (r.methods or ()) if m != "HEAD"}
    assert routes == {(m, p) for m, p, _ in ENDPOINTS}


@pytest.mark.parametrize("method, path, allowed", ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_auth_matrix(served, method: str, path: str, allowed: set[str] | None) -> None:
    url = path.replace("{model_id}", served["ref"]).replace("{jti}", uuid.uuid4().hex)
    kw = valid_request(served, method, path)
    if allowed is None:
        assert call(served, method, url, None, **kw).status_code == 200
        return
    anonymous = call(served, method, url, None, **kw)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert call(served, method, url, None, headers={"Authorization": "Bearer x.y.z"},
                **kw).status_code == 401
    assert call(served, method, url, None, headers={"Authorization": "Basic YTpi"},
                **kw).status_code == 401
    for role in ROLES:
        r = call(served, method, url, role, **kw)
        if role in allowed:
            assert r.status_code in (200, 204), (role, r.text)
        else:
            assert r.status_code == 403, (role, r.text)
            assert f"role '{role}' may not" in r.json()["detail"]


def test_expired_token_is_refused(served) -> None:
    old = TokenService(served["settings"].auth).issue("eve", "researcher", 10, now=0)
    r = served["client"].post("/v1/predict", json=patient_json(served["data"], 0),
                              headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401 and r.json()["detail"] == "token expired"


def test_role_checks_can_be_overridden(served) -> None:
    """``app.dependency_overrides`` replaces one role check (or the token check) and
    nothing else; removing the override restores it."""
    from server.serving.api.deps import current_principal, require_role

    app, client = served["app"], served["client"]
    body = {"subject": "override-user", "role": "site", "ttl_seconds": 60}
    assert require_role(Role.LEAD, Role.ADMIN) is require_role("admin", "lead")
    assert client.post("/v1/tokens", json=body).status_code == 401
    app.dependency_overrides[require_role("admin")] = lambda: Principal(
        "stand-in-admin", Role.ADMIN, "t-1")
    try:
        r = client.post("/v1/tokens", json=body)  # no token at all
        assert r.status_code == 200, r.text
        rec = app.state.serving.audit.records()[-1]
        assert (rec.action, rec.actor, rec.role) == ("auth.issue_token", "stand-in-admin",
                                                     "admin")
        assert client.get("/v1/models").status_code == 401  # other checks stay
    finally:
        app.dependency_overrides.clear()
    assert client.post("/v1/tokens", json=body).status_code == 401

    app.dependency_overrides[current_principal] = lambda: Principal(
        "stand-in-researcher", Role.RESEARCHER, "t-2")
    try:  # the caller is replaced; the role checks still apply to it
        assert client.get("/v1/schema").status_code == 200
        r = client.post("/v1/tokens", json=body)
        assert r.status_code == 403 and "role 'researcher' may not" in r.json()["detail"]
    finally:
        app.dependency_overrides.clear()


def test_openapi_lists_every_endpoint_with_its_security(served, tmp_path: Path) -> None:
    spec = served["client"].get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "JWT from `cancer-alpha auth issue-token`"}
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert listed == {(m, p) for m, p, _ in ENDPOINTS}
    for method, path, allowed in ENDPOINTS:
        op = spec["paths"][path][method.lower()]
        expected = [{"HTTPBearer": []}] if allowed else None
        assert op.get("security") == expected, (method, path)
        if allowed:
            assert {"401", "403"} <= set(op["responses"]), (method, path)

    public = create_app_for(tmp_path, served, metrics_public=True)
    spec = TestClient(public).get("/openapi.json").json()
    assert "security" not in spec["paths"]["/metrics"]["get"]
    assert spec["paths"]["/v1/schema"]["get"]["security"] == [{"HTTPBearer": []}]
    assert TestClient(public).get("/metrics").status_code == 200


# ------------------------------------------------------------------- revocation
def test_one_token_is_revoked_by_its_id_durably_and_audited(served):
    svc = TokenService(served["settings"].auth)
    doomed, other = (svc.issue("rita", "researcher", 600) for _ in range(2))
    client, body = served["client"], patient_json(served["data"], 0)

    def predict(token: str) -> int:
        return client.post("/v1/predict", json=body,
                           headers={"Authorization": f"Bearer {token}"}).status_code

    assert predict(doomed) == predict(other) == 200
    admin = {"Authorization": f"Bearer {served['tokens']['admin']}"}
    jti = svc.token_id(doomed)
    assert client.delete(f"/v1/tokens/{jti}", headers=admin).status_code == 204
    r = client.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {doomed}"})
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    assert predict(other) == 200  # the same user's other token still works
    assert client.delete(f"/v1/tokens/{jti}", headers=admin).status_code == 404
    record = [r for r in served["app"].state.serving.audit.records()
              if r.action == "auth.revoke_token"][-1]
    assert json.loads(record.detail) == {"jti": jti} and record.role == "admin"
    # Durable: a fresh process's list (same database) knows it.
    from server.serving.database import open_database

    _, sessions = open_database(served["settings"].database_url)
    assert RevocationList(sessions).is_revoked(jti)


def test_revoke_command_takes_the_token_itself(served):
    from server.serving.__main__ import app as cli

    svc = TokenService(served["settings"].auth)
    token = svc.issue("carl", "researcher", 600)
    env = {"CANCER_ALPHA_DATABASE_URL": served["settings"].database_url,
           "CANCER_ALPHA_JWT_SECRET": SECRET}
    out = CliRunner().invoke(cli, ["auth", "revoke-token", "--token", token], env=env)
    assert out.exit_code == 0, out.output
    assert "revoked" in out.output
    time.sleep(1.05)  # other processes' lists refresh within a second
    r = served["client"].post("/v1/predict", json=patient_json(served["data"], 0),
                              headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    out = CliRunner().invoke(cli, ["auth", "revoke-token", "--token", "x.y.z"], env=env)
    assert out.exit_code == 2
