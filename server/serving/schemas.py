"""Request and response models of the serving API (they make the OpenAPI schema).

Feature values are strict, finite numbers: a string, a boolean, ``null``, ``NaN`` or
``Infinity`` is refused with the location of the value. Unknown top-level fields are
refused too, so a misspelt field name cannot be silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Stage = Literal["candidate", "production", "archived"]
RoleName = Literal["admin", "lead", "researcher", "site"]

_MODALITIES_DOC = (
    "Modality name -> {feature name -> value}: any non-empty subset of the model's "
    "modalities (GET /v1/schema lists them and their features). A modality is sent with "
    "all its features, or left out when the patient lacks it; a model that reads feature "
    "masks also accepts a modality with at most half of its features missing (they are "
    "masked, not imputed). Values are raw, as in the dataset files; the service "
    "standardizes them."
)
_EXAMPLE = {"mrna": {"FOXA1_3169": 12.1, "ESR1_2099": 10.4}, "clinical": {"years_to_birth": 57}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientInput(_Strict):
    """One patient's measurements."""

    patient_id: str | None = Field(
        default=None, max_length=200,
        description="Optional caller's identifier, echoed back; never stored or logged.")
    modalities: dict[str, dict[str, FiniteNumber]] = Field(
        description=_MODALITIES_DOC, examples=[_EXAMPLE])


class PredictRequest(PatientInput):
    """``POST /v1/predict``: one patient."""


class BatchPredictRequest(_Strict):
    """``POST /v1/predict/batch`` (JSON form): several patients."""

    patients: list[PatientInput] = Field(
        min_length=1, description="Patients; at most the service's max_batch (default 256).")


class ExplainRequest(PatientInput):
    """``POST /v1/explain``: one patient, and what to explain."""

    target: str | None = Field(
        default=None, max_length=200,
        description="Class to explain (a label name); default: the predicted class.")
    top_k: int = Field(default=10, ge=1, le=500, description="Top features to return.")
    steps: int = Field(default=32, ge=4, le=1024,
                       description="Integrated-gradients steps (service maximum applies).")


class ModelRef(BaseModel):
    """The model that answered."""

    model_id: str = Field(description="NAME:VERSION in the registry, or bundle:<sha> when "
                          "served from a path.")
    name: str
    version: int | None
    stage: str | None
    schema_sha256: str


class Prediction(BaseModel):
    patient_id: str | None
    label: str = Field(description="Most probable class.")
    probabilities: dict[str, float] = Field(description="Class name -> probability.")
    modalities_used: list[str]
    modalities_missing: list[str] = Field(description="Model modalities the input lacked.")


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    prediction: Prediction


class BatchPredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    predictions: list[Prediction]
    warnings: list[str] = Field(default_factory=list,
                                description="Dataset warnings (CSV upload), e.g. an absent "
                                "modality file.")


class FeatureAttributionOut(BaseModel):
    modality: str
    feature: str
    value: float = Field(description="The value sent.")
    attribution: float = Field(description="Integrated-gradients attribution to the target "
                               "class probability.")


class ModalityContributionOut(BaseModel):
    modality: str
    attribution: float = Field(description="Sum of the modality's feature attributions.")
    share: float = Field(description="Share of the summed absolute attributions.")
    fusion_weight: float = Field(description="Learned fusion weight over this patient's "
                                 "modalities.")


class ExplainResponse(BaseModel):
    request_id: str
    model: ModelRef
    prediction: Prediction
    method: Literal["integrated_gradients"] = "integrated_gradients"
    baseline: str = Field(default="training mean of every feature (standardized zero)")
    target: str
    target_probability: float
    baseline_probability: float
    convergence_delta: float = Field(description="|sum(attributions) - (p - p_baseline)|")
    steps: int
    modalities: list[ModalityContributionOut]
    top_features: list[FeatureAttributionOut]
    learned_modality_weights: dict[str, float] = Field(
        description="Fusion weights when every modality is present.")
    completeness_gap: float = Field(
        description="|sum(attributions) - (target_probability - baseline_probability)|, "
        "the report's completeness check for this patient.")
    attention: dict[str, dict[str, float]] | None = Field(
        default=None, description="Cross-modal attention of this patient: query modality "
        "-> key modality -> attention averaged over blocks, heads and the query's tokens "
        "(rows sum to 1; absent modalities get 0). Null for a model without attention "
        "blocks.")
    attention_check: float | None = Field(
        default=None, description="Max |recomputed attention-block output - actual|.")


class SchemaResponse(BaseModel):
    model: ModelRef
    label_names: list[str]
    modalities: dict[str, list[str]] = Field(description="Modality -> ordered feature names.")
    required_modalities: list[str]
    max_batch: int


class ModelInfo(BaseModel):
    model_id: str
    name: str
    version: int
    stage: str
    serving: bool = Field(description="True for the model this server answers with.")
    run_id: str | None
    round: int | None
    strategy: str | None
    dp: str | None
    per_site_epsilon: dict[str, float] | None
    central_dp: dict | None
    data_fingerprints: dict
    metrics: dict
    label_names: list[str]
    modalities: dict[str, int]
    bundle_sha256: str
    schema_sha256: str
    created_at: str | None
    registered_by: str
    stage_changed_at: str | None


class ModelsResponse(BaseModel):
    serving: str
    models: list[ModelInfo]


class PromoteRequest(_Strict):
    stage: Stage = "production"


class TokenRequest(_Strict):
    subject: str = Field(min_length=1, max_length=200)
    role: RoleName
    ttl_seconds: int | None = Field(default=None, ge=1,
                                    description="Default and maximum come from the service.")


class TokenResponse(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    subject: str
    role: str
    expires_in: int


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model_id: str | None = None
    reason: str | None = None
