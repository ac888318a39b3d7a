"""Request-path shortcuts keep their guarantees: a token verified once is still checked
for expiry and identity on every call, and answers built without re-validation equal the
validated ones."""

from __future__ import annotations

import time
from dataclasses import asdict

import jwt
import pytest

from server.serving import schemas as s
from server.serving.api.records import prediction_of
from server.serving.auth import AuthError, Role, TokenService
from server.serving.predictor import PatientResult
from server.serving.settings import AuthSettings

SECRET = "s" * 48


def service() -> TokenService:
    return TokenService(AuthSettings(secret=SECRET))


def test_a_token_verified_before_still_expires_exactly():
    tokens = service()
    now = time.time()
    token = tokens.issue("alice", Role.RESEARCHER, ttl_seconds=60, now=now)
    assert tokens.verify(token, now=now).subject == "alice"
    assert tokens.verify(token, now=now + 59).subject == "alice"  # from the verified claims
    with pytest.raises(AuthError, match="token expired"):
        tokens.verify(token, now=now + 60)


def test_a_token_differing_from_a_verified_one_is_checked_in_full():
    tokens = service()
    token = tokens.issue("alice", Role.RESEARCHER, ttl_seconds=60)
    tokens.verify(token)
    head, payload, signature = token.split(".")
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False}),
                         "role": "admin"}, "f" * 48, algorithm="HS256")
    for bad in (f"{head}.{payload}.{signature[:-2]}AA", forged):
        with pytest.raises(AuthError, match="signature"):
            tokens.verify(bad)


def test_a_prediction_built_without_validation_serializes_as_a_validated_one():
    result = PatientResult("P-17", "Luminal A", {"Luminal A": 0.656, "Basal-like": 5e-07},
                           ["mrna"], ["mirna", "clinical"])
    validated = s.Prediction(**asdict(result))
    assert prediction_of(result).model_dump_json() == validated.model_dump_json()
    response = s.PredictResponse(request_id="r", model=s.ModelRef(
        model_id="m:1", name="m", version=1, stage=None, schema_sha256="0" * 64),
        prediction=prediction_of(result))
    assert s.PredictResponse.model_validate_json(response.model_dump_json()) == \
        s.PredictResponse(request_id="r", model=response.model, prediction=validated)
