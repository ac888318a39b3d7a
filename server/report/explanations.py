"""Integrated gradients (Captum) of the test patients, aggregated per class.

Same convention as the inference service's ``/v1/explain``: attributions of the target
class probability with respect to the standardized input, from an all-zeros baseline
(every feature at its training mean), Gauss-Legendre steps. Completeness: a patient's
attributions add up to ``p(patient) - p(baseline with the patient's modalities)``; the
largest gap over all patients and classes is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.dataset.multiomics import MultiOmicsData

STEPS = 32
INTERNAL_BATCH = 2048


@dataclass(frozen=True)
class FeatureScore:
    modality: str
    feature: str
    mean_attribution: float  # signed mean over the class's patients
    mean_abs_attribution: float
    # Mean standardized value in the class's patients: > 0 means the class has it higher
    # than the average training patient.
    mean_value: float


@dataclass
class ClassExplanation:
    label: str
    n_patients: int
    top_features: list[FeatureScore]
    modality_share: dict[str, float]  # share of the summed |attribution| per modality


@dataclass
class Explanations:
    classes: list[ClassExplanation]
    steps: int
    max_completeness_gap: float  # max |sum(attr) - (p(x) - p(baseline))| over patients
    max_probability_change: float  # max |p(x) - p(baseline)|, the scale of the gap


def explain_classes(model: torch.nn.Module, data: MultiOmicsData, labels: np.ndarray,
                    label_names: tuple[str, ...] | list[str], *, top_k: int = 10,
                    steps: int = STEPS, max_patients: int = 40) -> Explanations:
    """Per class: integrated gradients of that class's probability for its own test
    patients (at most ``max_patients``, the first ones), ranked by mean |attribution|."""
    from captum.attr import IntegratedGradients  # 0.7 s to import

    from common.training import tensors

    x, mask, _ = tensors(data)
    names = [(m, f) for m in data.schema.modality_names for f in data.schema.features(m)]
    sizes = [len(data.schema.features(m)) for m in data.schema.modality_names]
    model.eval()

    def prob(inputs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inputs, m), dim=-1)

    ig = IntegratedGradients(prob)
    classes, gap, scale = [], 0.0, 0.0
    for k, label in enumerate(label_names):
        idx = np.flatnonzero(labels == k)[:max_patients]
        if len(idx) == 0:
            classes.append(ClassExplanation(label, 0, [], {}))
            continue
        xb, mb = x[idx], mask[idx]
        baseline = torch.zeros_like(xb)
        with torch.enable_grad():
            attr, _ = ig.attribute(xb, baselines=baseline, target=k,
                                   additional_forward_args=(mb,), n_steps=steps,
                                   method="gausslegendre", return_convergence_delta=True,
                                   internal_batch_size=INTERNAL_BATCH)
        a = attr.detach().numpy().astype(np.float64)
        with torch.inference_mode():
            change = (prob(xb, mb)[:, k] - prob(baseline, mb)[:, k]).numpy()
        gap = max(gap, float(np.abs(a.sum(axis=1) - change).max()))
        scale = max(scale, float(np.abs(change).max()))
        classes.append(_summarize(label, a, xb.numpy(), names, sizes,
                                  data.schema.modality_names, top_k))
    return Explanations(classes, steps, gap, scale)


def _summarize(label: str, a: np.ndarray, x: np.ndarray, names: list[tuple[str, str]],
               sizes: list[int], modalities: list[str], top_k: int) -> ClassExplanation:
    mean_abs = np.abs(a).mean(axis=0)
    mean = a.mean(axis=0)
    values = x.mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")[:top_k]
    top = [FeatureScore(names[j][0], names[j][1], float(mean[j]), float(mean_abs[j]),
                        float(values[j])) for j in order]
    per_modality = [part.sum() for part in np.split(mean_abs, np.cumsum(sizes)[:-1])]
    total = float(sum(per_modality)) or 1.0
    share = {m: float(s) / total for m, s in zip(modalities, per_modality, strict=True)}
    return ClassExplanation(label, len(a), top, share)
