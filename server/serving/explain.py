"""Explanations: integrated gradients (Captum) plus the model's modality fusion weights.

Attributions are computed for the probability of the target class with respect to the
standardized input, from an all-zeros baseline. Zero is every feature's training mean,
so an attribution says how much a value's distance from the average training patient
moved the probability, and the attributions add up (to the convergence delta) to
``p(patient) - p(average patient with the same modalities)``. Only the patient's
present modalities are attributed; a missing modality contributes nothing by
construction (its tokens are masked out of attention and fusion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from server.serving.predictor import Predictor


@dataclass(frozen=True)
class FeatureAttribution:
    modality: str
    feature: str
    value: float  # the raw value sent
    attribution: float


@dataclass(frozen=True)
class ModalityContribution:
    modality: str
    attribution: float  # sum of the modality's feature attributions
    share: float  # its share of the summed absolute attributions
    fusion_weight: float  # the model's learned weight for it, over this patient's modalities


@dataclass(frozen=True)
class Explanation:
    target: str
    target_probability: float
    baseline_probability: float
    convergence_delta: float
    steps: int
    modalities: list[ModalityContribution]
    top_features: list[FeatureAttribution]
    learned_modality_weights: dict[str, float]
    # |sum(attributions) - (target_probability - baseline_probability)|, as in the report
    completeness_gap: float
    # query modality -> key modality -> mean attention (rows sum to 1), as in the report;
    # None for a model without cross-modal attention blocks
    attention: dict[str, dict[str, float]] | None
    attention_check: float | None


def explain(
    predictor: Predictor,
    x: np.ndarray,
    mask: np.ndarray,
    raw: np.ndarray,
    *,
    target: int,
    steps: int = 32,
    top_k: int = 10,
) -> Explanation:
    """Explain one patient: ``x`` standardized ``[1, F]``, ``mask [1, M]``, ``raw`` values."""
    from captum.attr import IntegratedGradients  # 0.7 s to import: only when explaining

    model = predictor.model

    def prob(inputs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inputs, m), dim=-1)

    xt, mt = predictor.model_input(np.ascontiguousarray(x, dtype=np.float32), mask)
    baseline = torch.zeros_like(xt)
    with torch.enable_grad():
        attr = IntegratedGradients(prob).attribute(
            xt, baselines=baseline, target=target, additional_forward_args=(mt,),
            n_steps=steps, method="gausslegendre")
    a = attr.detach().numpy()[0].astype(np.float64)
    with torch.inference_mode():
        # Patient and baseline in one pass; Captum's own convergence delta would run
        # both again for the same number (sum of attributions minus this difference).
        ends = prob(torch.cat([xt, baseline]), torch.cat([mt, mt]))[:, target]
        p_x, p_base = float(ends[0]), float(ends[1])
        fusion = model.modality_weights(mt > 0.5)[0].tolist()
    gap = abs(float(a.sum()) - (p_x - p_base))
    present = [j for j, on in enumerate(mask[0]) if on]
    total_abs = float(sum(np.abs(a[predictor.slice_of(j)]).sum() for j in present)) or 1.0
    contributions = []
    for j in present:
        m = predictor.modalities[j]
        part = a[predictor.slice_of(j)]
        contributions.append(ModalityContribution(
            modality=m, attribution=float(part.sum()),
            share=float(np.abs(part).sum()) / total_abs, fusion_weight=float(fusion[j])))
    columns = np.concatenate([np.arange(predictor.n_features)[predictor.slice_of(j)]
                              for j in present])
    columns = columns[~np.isnan(x[0, columns])]  # a missing feature has no value to rank
    order = columns[np.argsort(-np.abs(a[columns]), kind="stable")[:top_k]]
    top = []
    for col in order:
        m, f = predictor.feature_at(int(col))
        top.append(FeatureAttribution(m, f, float(raw[0, col]), float(a[col])))
    attention, attention_check = _attention(model, xt, mt, predictor.modalities)
    return Explanation(
        target=predictor.label_names[target],
        target_probability=p_x,
        baseline_probability=p_base,
        convergence_delta=gap,
        steps=steps,
        modalities=contributions,
        top_features=top,
        learned_modality_weights=model.learned_modality_weights(),
        completeness_gap=gap,
        attention=attention,
        attention_check=attention_check,
    )


def _attention(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor,
               modalities: list[str]) -> tuple[dict[str, dict[str, float]] | None,
                                                float | None]:
    """The patient's cross-modal attention, by the report's own inspection."""
    from server.report.inspection import inspect_tensors

    if not all(hasattr(model, part) for part in ("blocks", "head", "tokens")):
        return None, None  # no attention over modality tokens
    outputs = inspect_tensors(model, x, mask)
    matrix = outputs.attention
    return ({q: {k: float(matrix[i, j]) for j, k in enumerate(modalities)}
             for i, q in enumerate(modalities)}, float(outputs.attention_check))
