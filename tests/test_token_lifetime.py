"""Token lifetime and revocation.

* a token is expired from its ``exp`` on, whatever the clock-skew leeway;
* the lifetime cap holds at verification: a correctly signed 100-year token is refused;
* clock skew is allowed for ``iat``/``nbf`` only, up to the configured leeway;

Revocation by token id over HTTP and by command is tested with the served model in
``test_serving_auth.py``.
"""

from __future__ import annotations

import jwt
import pytest
from test_serving_helpers import SECRET

from server.serving.auth import AuthError, TokenService
from server.serving.settings import AuthSettings, ServingSettings, SettingsError

NOW = 1_800_000_000


def _service(**kw) -> TokenService:
    return TokenService(AuthSettings(secret=SECRET, **kw))


def _forged(ttl: int, iat: int = NOW, **extra) -> str:
    """A token signed with the real secret (a leaked or misused signing key)."""
    claims = {"sub": "eve", "role": "researcher", "iss": "cancer-alpha",
              "aud": "cancer-alpha-serving", "iat": iat, "exp": iat + ttl, "jti": "j1",
              **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_expired_token_is_refused_exactly_despite_the_leeway():
    svc = _service(leeway_seconds=10)
    token = svc.issue("eve", "researcher", ttl_seconds=60, now=NOW)
    assert svc.verify(token, now=NOW + 59).subject == "eve"
    for late in (60, 61, 63):  # expired 0, 1 and 3 s ago
        with pytest.raises(AuthError, match="token expired"):
            svc.verify(token, now=NOW + late)


def test_lifetime_cap_holds_at_verification():
    svc = _service(max_token_ttl_seconds=30 * 24 * 3600)
    with pytest.raises(AuthError, match="lifetime exceeds the maximum"):
        svc.verify(_forged(100 * 365 * 24 * 3600), now=NOW + 1)
    # Backdated iat with a far exp: the remaining life counts too.
    with pytest.raises(AuthError, match="lifetime exceeds the maximum"):
        svc.verify(_forged(30 * 24 * 3600, iat=NOW - 10, exp=NOW + 365 * 24 * 3600),
                   now=NOW)
    assert svc.verify(_forged(30 * 24 * 3600), now=NOW + 1).subject == "eve"


def test_clock_skew_applies_to_iat_only():
    svc = _service(leeway_seconds=10)
    assert svc.verify(_forged(600, iat=NOW + 8), now=NOW).subject == "eve"
    with pytest.raises(AuthError, match="not valid yet"):
        svc.verify(_forged(600, iat=NOW + 30), now=NOW)
    with pytest.raises(SettingsError, match="leeway_seconds"):
        ServingSettings(auth=AuthSettings(secret=SECRET, leeway_seconds=3600)).validate()


def test_token_without_an_id_is_refused():
    with pytest.raises(AuthError, match="'jti' claim"):
        _service().verify(_forged(600, jti=""), now=NOW)
