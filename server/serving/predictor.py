"""The served model: request validation, standardization and the forward pass.

Requests name features rather than positions, so every value is checked against the
bundle's schema (unknown modality or feature, a modality sent with features missing,
non-finite or out-of-range values) and each problem is reported with its location,
FastAPI-style (``["body", "modalities", "mrna", "FOXA1_3169"]``).

A modality may be sent with some features missing when the served model reads
per-feature presence masks (:func:`common.model.accepts_feature_mask`), up to
:data:`MAX_MISSING_SHARE` of the modality's features: the missing ones are masked, as
at a site that does not measure them, never imputed. In the encoded input ``x`` a
missing feature is NaN; :meth:`Predictor.model_input` turns that into the model's mask.

Standardization here is the bundle's own (``(x - mean) / std`` in float32, zeros for
a missing modality), so predictions equal :meth:`ModelBundle.predict_proba`. The
forward pass runs under ``torch.inference_mode`` through a frozen TorchScript trace of
the network, which removes Python dispatch overhead (about 15 % at batch 1 on this
project's 2-core CPU machine; nothing at batch 64, where the matrix products dominate);
the trace is checked against the eager network on load and dropped if it disagrees.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.bundle import ModelBundle
from common.dataset.multiomics import MultiOmicsData
from common.model import accepts_feature_mask

logger = logging.getLogger(__name__)

Loc = tuple[str | int, ...]
_MAX_ERRORS = 20  # per request: enough to fix a payload, bounded for huge ones
_PREVIEW = 5
# Beyond this many standard deviations a value cannot be a measurement of the kind the
# model was trained on (and float32 arithmetic in the network starts to overflow).
MAX_ABS_Z = 1e6
# At most this share of a modality's features may be missing from a request (models that
# read feature masks only): beyond it the modality is mostly unmeasured, and the patient
# is better served without it.
MAX_MISSING_SHARE = 0.5


class InputError(ValueError):
    """Invalid request content; ``errors`` are ``{"loc", "msg", "type"}`` dicts."""

    def __init__(self, errors: list[dict[str, Any]], status_code: int = 422) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors
        self.status_code = status_code


@dataclass(frozen=True)
class ServedModel:
    """Identity of the served model, as reported in every response."""

    model_id: str
    name: str
    version: int | None
    stage: str | None
    schema_sha256: str


@dataclass(frozen=True)
class PatientResult:
    patient_id: str | None
    label: str
    probabilities: dict[str, float]
    modalities_used: list[str]
    modalities_missing: list[str]


def configure_torch(threads: int) -> None:
    """Intra-op threads for this process; one inter-op thread (requests give parallelism)."""
    torch.set_num_threads(max(1, threads))
    # Raises once set or once parallel work has started: then keep what is there.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


class Predictor:
    """Validates named-feature input and runs the bundle's network on it."""

    def __init__(
        self,
        bundle: ModelBundle,
        identity: ServedModel,
        *,
        required_modalities: Sequence[str] = (),
        torchscript: bool = True,
    ) -> None:
        schema = bundle.schema
        self.bundle = bundle
        self.identity = identity
        self.schema = schema
        self.modalities = list(schema.modality_names)
        self.label_names = list(schema.label_names)
        self.features = {m: schema.features(m) for m in self.modalities}
        self._index = {m: {f: i for i, f in enumerate(fs)} for m, fs in self.features.items()}
        unknown = [m for m in required_modalities if m not in self.features]
        if unknown:
            raise ValueError(f"required modalities {unknown} are not in the model's schema "
                             f"{self.modalities}")
        self.required = tuple(required_modalities)
        sizes = [len(self.features[m]) for m in self.modalities]
        self._slices = dict(zip(self.modalities, _slices(sizes), strict=True))
        self.n_features = sum(sizes)
        std = bundle.standardizer
        self._mean = np.concatenate([std.mean[m] for m in self.modalities]).astype(np.float32)
        self._std = np.concatenate([std.std[m] for m in self.modalities]).astype(np.float32)
        self.model = bundle.build_model()
        self.accepts_feature_mask = accepts_feature_mask(self.model)
        # Explanations need gradients with respect to inputs only, never to weights.
        self.model.requires_grad_(False)
        self._forward: Any = self.model
        if torchscript:
            self._forward = self._trace() or self.model

    # ---------------------------------------------------------------- encoding
    def encode(
        self, patients: Sequence[Mapping[str, Any]], loc: Loc = ("body",), *,
        indexed: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw named values -> standardized ``x [n, F]`` float32 and ``mask [n, M]`` bool.

        ``patients[i]`` maps modality -> {feature -> value}; a feature the patient lacks
        (accepted: see :meth:`max_missing`) is NaN in ``x``. Error locations start with
        ``loc``, then the patient's index when ``indexed`` (a list of patients), then
        ``"modalities"``, the modality and the feature.
        """
        _, z, mask = self.encode_raw(patients, loc, indexed=indexed)
        return z, mask

    def encode_raw(
        self, patients: Sequence[Mapping[str, Any]], loc: Loc = ("body",), *,
        indexed: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`encode`, also returning the raw float32 values ``[n, F]`` (NaN
        where a feature is missing)."""
        n = len(patients)
        x = np.zeros((n, self.n_features), dtype=np.float64)
        mask = np.zeros((n, len(self.modalities)), dtype=bool)
        errors: list[dict[str, Any]] = []
        for i, modalities in enumerate(patients):
            where = (*_where(loc, i, indexed), "modalities")
            self._encode_one(modalities, where, x[i], mask[i], errors)
            if len(errors) >= _MAX_ERRORS:
                break
        if errors:
            raise InputError(errors[:_MAX_ERRORS])
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, per value
            raw = x.astype(np.float32)
            z = (raw - self._mean) / self._std
        missing = np.isnan(raw)
        if not (np.isfinite(raw) | missing).all():
            bad = np.argwhere(~np.isfinite(raw) & ~missing)
            raise InputError([self._value_error(int(i), int(j), loc, indexed, "value exceeds "
                              "the float32 range") for i, j in bad[:_MAX_ERRORS]])
        for j, m in enumerate(self.modalities):
            z[~mask[:, j], self._slices[m]] = 0.0
        far = ~(np.abs(z) <= MAX_ABS_Z) & ~missing
        if far.any():
            raise InputError([self._value_error(
                int(i), int(j), loc, indexed,
                f"value is more than {MAX_ABS_Z:g} standard deviations from the training "
                "mean of this feature") for i, j in np.argwhere(far)[:_MAX_ERRORS]])
        return raw, z.astype(np.float32, copy=False), mask

    def _encode_one(
        self, modalities: Mapping[str, Any], where: Loc, row: np.ndarray, present: np.ndarray,
        errors: list[dict[str, Any]],
    ) -> None:
        if not isinstance(modalities, Mapping):
            errors.append(_err(where, "must be an object mapping modality -> features",
                               "type_error"))
            return
        if not modalities:
            errors.append(_err(where, "at least one modality is needed; the model knows "
                               f"{self.modalities}", "missing"))
            return
        for m in self.required:
            if m not in modalities:
                errors.append(_err(where, f"modality {m!r} is required by this service",
                                   "missing"))
        for m, values in modalities.items():
            if m not in self._index:
                errors.append(_err((*where, m), f"unknown modality {m!r}; the model knows "
                                   f"{self.modalities}", "unknown_modality"))
                continue
            if not isinstance(values, Mapping):
                errors.append(_err((*where, m), "must be an object mapping feature name -> "
                                   "number", "type_error"))
                continue
            feats = self.features[m]
            cols = self._slices[m]
            try:
                if len(values) != len(feats):
                    raise KeyError
                row[cols] = [values[f] for f in feats]
            except (KeyError, TypeError, ValueError):
                found = len(errors)
                self._diagnose(m, values, (*where, m), errors)
                if len(errors) > found:
                    continue
                row[cols] = [values.get(f, np.nan) for f in feats]  # NaN: masked
            present[self.modalities.index(m)] = True
            if not np.isfinite(row[cols]).all():
                for f, v in zip(feats, row[cols], strict=True):
                    if f in values and not np.isfinite(v):
                        errors.append(_err((*where, m, f), "must be a finite number",
                                           "finite_number"))

    def _diagnose(self, m: str, values: Mapping[str, Any], where: Loc,
                  errors: list[dict[str, Any]]) -> None:
        index = self._index[m]
        unknown = [f for f in values if f not in index]
        for f in unknown[:_PREVIEW]:
            errors.append(_err((*where, f), f"unknown feature {f!r} for modality {m!r}",
                               "unknown_feature"))
        if len(unknown) > _PREVIEW:
            errors.append(_err(where, f"{len(unknown)} unknown features in total",
                               "unknown_feature"))
        for f, v in values.items():
            if f in index and (isinstance(v, bool) or not isinstance(v, int | float)):
                errors.append(_err((*where, f), "must be a number", "type_error"))
        missing = [f for f in self.features[m] if f not in values]
        limit = self.max_missing(m)
        if len(missing) > limit:
            shown = ", ".join(repr(f) for f in missing[:_PREVIEW])
            more = ", ..." if len(missing) > _PREVIEW else ""
            allowed = (f"this model accepts at most {limit} missing features of modality "
                       f"{m!r}; send more of them," if self.accepts_feature_mask else
                       "send every feature of a modality,")
            errors.append(_err(
                where, f"modality {m!r}: {len(missing)} of {len(self.features[m])} features "
                f"are missing ({shown}{more}); {allowed} or leave the modality out if the "
                "patient lacks it", "missing_features"))

    def max_missing(self, modality: str) -> int:
        """How many of ``modality``'s features a request may leave out (they are then
        masked): :data:`MAX_MISSING_SHARE` of them when the model reads feature masks,
        else none."""
        if not self.accepts_feature_mask:
            return 0
        return int(len(self.features[modality]) * MAX_MISSING_SHARE)

    def _value_error(self, i: int, j: int, loc: Loc, indexed: bool, msg: str) -> dict[str, Any]:
        m, f = self.feature_at(j)
        return _err((*_where(loc, i, indexed), "modalities", m, f), msg, "value_error")

    def slice_of(self, j: int) -> slice:
        """Columns of the ``j``-th modality in the concatenated input."""
        return self._slices[self.modalities[j]]

    def feature_at(self, column: int) -> tuple[str, str]:
        """(modality, feature) of a column of the concatenated input."""
        m = next(m for m, s in self._slices.items() if s.start <= column < s.stop)
        return m, self.features[m][column - self._slices[m].start]

    # --------------------------------------------------------------- inference
    def model_input(self, x: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's ``(x, mask)`` tensors for encoded input: a missing feature (NaN)
        becomes 0 and, for a model that reads feature masks, the mask goes on with the
        per-feature presence mask (always, so that every batch has one width)."""
        missing = np.isnan(x)
        model_mask = mask.astype(np.float32)
        if self.accepts_feature_mask:
            model_mask = np.concatenate([model_mask, (~missing).astype(np.float32)], axis=1)
        values = np.where(missing, np.float32(0.0), x).astype(np.float32, copy=False)
        return torch.from_numpy(values), torch.from_numpy(model_mask)

    def forward(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, C]`` (float32) for standardized input."""
        with torch.inference_mode():
            logits = self._forward(*self.model_input(x, mask))
            return torch.softmax(logits.float(), dim=-1).numpy()

    def predict(
        self, patients: Sequence[Mapping[str, Any]], ids: Sequence[str | None] | None = None,
        loc: Loc = ("body",), *, indexed: bool = False,
    ) -> list[PatientResult]:
        x, mask = self.encode(patients, loc, indexed=indexed)
        return self.results(self.forward(x, mask), mask, ids, loc, indexed=indexed)

    def prepare_data(self, data: MultiOmicsData) -> tuple[np.ndarray, np.ndarray]:
        """Standardized ``x`` and ``mask`` of a loaded dataset (e.g. an uploaded CSV batch),
        by the bundle's own :meth:`~common.bundle.ModelBundle.prepare`."""
        prepared = self.bundle.prepare(data)
        x = np.ascontiguousarray(prepared.concat(), dtype=np.float32)
        far = np.argwhere(~(np.abs(x) <= MAX_ABS_Z))  # also catches inf/NaN
        if len(far):
            raise InputError([_err(
                ("body", "files", *self.feature_at(int(j))),
                f"patient {data.patient_ids[i]!r}: value is not finite or is more than "
                f"{MAX_ABS_Z:g} standard deviations from the training mean of this feature",
                "value_error") for i, j in far[:_MAX_ERRORS]])
        return x, prepared.mask

    def results(self, proba: np.ndarray, mask: np.ndarray, ids: Sequence[str | None] | None,
                loc: Loc, *, indexed: bool = False) -> list[PatientResult]:
        bad = ~np.isfinite(proba).all(axis=1)
        if bad.any():  # large but finite inputs can still overflow inside the network
            raise InputError([_err(_where(loc, int(i), indexed),
                                   "the model produced no finite probabilities for this "
                                   "patient: values lie far outside the training range",
                                   "value_error") for i in np.flatnonzero(bad)[:_MAX_ERRORS]])
        ids = ids if ids is not None else [None] * len(proba)
        out = []
        for p, row_mask, pid in zip(proba.tolist(), mask, ids, strict=True):
            k = max(range(len(p)), key=p.__getitem__)
            out.append(PatientResult(
                patient_id=pid,
                label=self.label_names[k],
                probabilities=dict(zip(self.label_names, p, strict=True)),
                modalities_used=[m for m, on in zip(self.modalities, row_mask, strict=True)
                                 if on],
                modalities_missing=[m for m, on in zip(self.modalities, row_mask, strict=True)
                                    if not on],
            ))
        return out

    # ------------------------------------------------------------------ helpers
    def _trace(self) -> Any | None:
        """Frozen TorchScript trace of the network, or None if it does not match eager."""
        rng = np.random.default_rng(0)
        probe = rng.normal(size=(5, self.n_features)).astype(np.float32)
        probe[2, ::3] = np.nan  # exercise missing features (models that read them)
        probe_mask = np.ones((5, len(self.modalities)), dtype=bool)
        probe_mask[1:, 0] = False  # exercise the missing-modality path as well
        x, mk = self.model_input(probe, probe_mask)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarning on shape arithmetic
                traced = torch.jit.freeze(torch.jit.trace(self.model, (x[:3], mk[:3])))
            with torch.inference_mode():
                for rows in (slice(0, 1), slice(0, 5)):  # batch sizes other than the trace's
                    want = self.model(x[rows], mk[rows])
                    got = traced(x[rows], mk[rows])
                    if not torch.allclose(want, got, rtol=1e-5, atol=1e-6):
                        raise RuntimeError("traced output differs from the eager network")
        except Exception as exc:  # a trace that fails is a speed loss, never an outage
            logger.warning("TorchScript trace unavailable (%s); serving the eager network", exc)
            return None
        return traced


def _where(loc: Loc, i: int, indexed: bool) -> Loc:
    return (*loc, i) if indexed else loc


def _slices(sizes: list[int]) -> list[slice]:
    out, start = [], 0
    for k in sizes:
        out.append(slice(start, start + k))
        start += k
    return out


def _err(loc: Loc, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": [str(p) if not isinstance(p, int) else p for p in loc], "msg": msg,
            "type": kind}
