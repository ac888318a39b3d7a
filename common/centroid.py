"""The class-centroid classifier: a linear model distributed DP fits in two releases.

Nearest class centroid with a shared spherical covariance (diagonal LDA) is a linear
model whose weights are class means. Under distributed DP it needs only two noised
consortium sums instead of tens of noised gradient steps, so each release gets a far
larger share of the privacy budget:

1. the sum of every training patient's feature vector ``z`` (norm at most 1), from which
   the coordinator takes the consortium's centre ``m``;
2. per class, the sum of ``clip(z - m, radius)``: sensitivity ``radius``, and the
   deviations from the centre are short, so the clipping radius (and the noise) is a
   fraction of what the uncentred vectors would need.

The coordinator divides each class sum by the class's noised count and shrinks each
centroid towards the centre by the share of its energy the noise explains
(:func:`fit_centroids`, James-Stein), so a rare class, whose centroid carries more noise,
neither wins nor loses every patient by chance.

When the noise would swamp the rarest class's centroid in the full feature space, both
sums are released in a seeded random projection ``P`` of few dimensions instead
(:func:`projection_for`, Johnson-Lindenstrauss): the noise's energy scales with the
number of dimensions, the centroids' distances barely change. The centre too: at a small
epsilon its noise over every feature would be longer than the clipping radius, and every
patient's deviation would be mostly the centre's error. The model then measures and clips
a deviation ``d`` by its projected length ``||P d||``, and the coordinator maps the
projected centre and centroids back (``P^+ c``, ``W = M P``), so the model keeps one
weight per feature and ``W . clip(d) = M . clip(P d)``.

``z`` gives every modality the same weight: each modality's per-patient standardized
features (mean 0, variance 1 over the patient's own values) are scaled to norm
``1 / sqrt(M)`` for ``M`` modalities. A missing modality contributes no deviation: the
patient sits at the centre in that part.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.config import (
    CENTROID_KIND,
    CENTROID_PROJECTION,
    CENTROID_PROJECTION_NOISE,
    CENTROID_RADIUS,
)
from common.model import ModelSpec

__all__ = [
    "CENTROID_KIND",
    "CentroidClassifier",
    "build_centroid",
    "centre_from_sum",
    "centroid_weights",
    "clip_rows",
    "fit_centroids",
    "projected_rows",
    "projection_for",
    "projection_matrix",
]


class CentroidClassifier(nn.Module):
    """``forward(x, mask)`` as :class:`~common.model.MultiModalTransformer`: ``x`` is
    ``[B, sum F_m]`` standardized per patient, ``mask`` ``[B, M]``; returns logits.

    State: ``head`` (class centroids and biases), and the buffers ``centre`` (the
    consortium's mean ``z``), ``radius`` (the clipping radius of deviations) and
    ``projection`` (``[dimensions, seed]`` of :func:`projection_matrix`; 0 dimensions:
    none).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.modalities = list(spec.feature_counts)
        self.sizes = [spec.feature_counts[m] for m in self.modalities]
        n_features = sum(self.sizes)
        self.head = nn.Linear(n_features, spec.n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        scale = torch.cat([torch.full((n,), 1.0 / math.sqrt(n * len(self.sizes)))
                           for n in self.sizes])
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("feature_modality", torch.repeat_interleave(
            torch.arange(len(self.sizes)), torch.tensor(self.sizes)), persistent=False)
        self.register_buffer("centre", torch.zeros(n_features))
        self.register_buffer("radius", torch.full((1,), CENTROID_RADIUS))
        self.register_buffer("projection", torch.zeros(2, dtype=torch.int64))
        self._matrix: tuple[tuple[int, int], torch.Tensor | None] = ((0, 0), None)
        # What reports and explanations read of every model kind: no attention blocks,
        # one "token" per modality.
        self.blocks = nn.ModuleList()
        self.tokens = [1] * len(self.sizes)

    def patient_vectors(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``z``: every present modality scaled to norm ``1 / sqrt(M)``, missing ones 0."""
        return self._vectors(x, self._present(x, mask))

    def deviations(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``clip(z - centre, radius)``, with no deviation in a missing modality; with a
        projection ``P``, clipped by the projected length ``||P (z - centre)||``."""
        present = self._present(x, mask)
        u = (self._vectors(x, present) - self.centre) * present
        return clip_rows(u, float(self.radius), self.projection_rows())

    def projection_rows(self) -> torch.Tensor | None:
        """``P`` ``[dimensions, F]`` of the model's projection, or None."""
        dims, seed = (int(v) for v in self.projection)
        if dims == 0:
            return None
        if self._matrix[0] != (dims, seed):
            matrix = projection_matrix(dims, self.centre.shape[0], seed)
            self._matrix = ((dims, seed), torch.from_numpy(matrix))
        return self._matrix[1].to(self.centre)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object,
                              **kwargs: object) -> None:
        # Bundles written before the projection was part of the state are unprojected.
        state_dict.setdefault(prefix + "projection", torch.zeros(2, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _present(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, F]``: 1 where the feature's modality is present."""
        return (mask > 0.5)[:, self.feature_modality].to(x.dtype)

    def _vectors(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        # Per-patient standardization gives each modality exactly norm 1/sqrt(M);
        # clipping keeps the bound (and the sum's sensitivity of 1) for any input.
        return clip_rows(x * self.scale * present, 1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.deviations(x, mask))

    def modality_weights(self, present: torch.Tensor) -> torch.Tensor:
        """Fusion weights ``[B, M]``: the present modalities count alike."""
        present = present[:, :len(self.sizes)].to(torch.float32)  # a model mask starts with M
        return present / present.sum(dim=1, keepdim=True).clamp(min=1.0)

    def learned_modality_weights(self) -> dict[str, float]:
        """Each modality's share of the centroids' squared norm (what it adds to the
        distances between classes)."""
        w = self.head.weight.detach().pow(2).sum(dim=0)
        parts = torch.stack([p.sum() for p in torch.split(w, self.sizes)])
        total = float(parts.sum())
        if total <= 0:
            return {m: 1.0 / len(self.modalities) for m in self.modalities}
        return {m: float(p) / total for m, p in zip(self.modalities, parts, strict=True)}


def clip_rows(v: torch.Tensor, bound: float, projection: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Each row of ``v`` scaled down to L2 norm at most ``bound``; with a ``projection``
    ``P``, scaled down until its projected length ``||P v||`` is at most ``bound``."""
    norms = (v if projection is None else v @ projection.T).norm(dim=1, keepdim=True)
    return v * (bound / norms.clamp(min=1e-12)).clamp(max=1.0)


def fit_centroids(class_sums: np.ndarray, class_counts: np.ndarray, noise_std: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``[C, F]`` and biases ``[C]`` of the nearest-centroid rule from noised
    per-class sums of deviations.

    ``noise_std`` is the standard deviation of the noise on every coordinate of a class
    sum. Each centroid is shrunk towards the centre by the James-Stein factor
    ``1 - F * (noise_std / n_c)^2 / ||mu_c||^2`` (0 at the least): a rare class, whose
    centroid is mostly noise, moves to the centre instead of claiming or losing every
    patient by chance. The score of class ``c`` is ``u . mu_c - ||mu_c||^2 / 2``.
    """
    sums = np.asarray(class_sums, dtype=np.float64)
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 2.0)
    centroids = sums / counts[:, None]
    noise_energy = sums.shape[1] * (noise_std / counts) ** 2
    energy = np.maximum((centroids ** 2).sum(axis=1), 1e-12)
    centroids = centroids * np.maximum(0.0, 1.0 - noise_energy / energy)[:, None]
    bias = -0.5 * (centroids ** 2).sum(axis=1)
    return centroids, bias


def projection_for(n_features: int, noise_std: float, class_counts: np.ndarray,
                   radius: float) -> int:
    """The projection the class sums are released in: :data:`CENTROID_PROJECTION`
    dimensions when the noise's energy on the rarest class's centroid,
    ``F * (noise_std / n_min)^2``, exceeds :data:`CENTROID_PROJECTION_NOISE` times the
    largest deviation's (``radius^2``); 0 (none) otherwise, or when the features are few.
    ``class_counts`` are the noised counts (post-processing of a release)."""
    if n_features < 2 * CENTROID_PROJECTION or noise_std <= 0:
        return 0
    rarest = max(float(np.min(class_counts)), 1.0)
    swamped = n_features * (noise_std / rarest) ** 2 > CENTROID_PROJECTION_NOISE * radius ** 2
    return CENTROID_PROJECTION if swamped else 0


def projection_matrix(dims: int, n_features: int, seed: int) -> np.ndarray:
    """``P`` ``[dims, F]``: Gaussian entries of variance ``1 / dims`` drawn from ``seed``
    alone (data-independent), the same at every site and at the coordinator."""
    rng = np.random.default_rng([seed, dims, n_features])
    return rng.standard_normal((dims, n_features)) / math.sqrt(dims)


def projected_rows(rows: torch.Tensor, projection: torch.Tensor, bound: float
                   ) -> torch.Tensor:
    """``rows`` ``[B, F]`` projected by ``P`` ``[k, F]`` and clipped to ``bound`` (the
    sensitivity survives the projection), in the first ``k`` columns of a ``[B, F]``
    tensor."""
    out = torch.zeros_like(rows)
    out[:, :projection.shape[0]] = clip_rows(rows @ projection.T, bound)
    return out


def centre_from_sum(released: np.ndarray, patients: float, projection: int = 0,
                    seed: int = 0) -> np.ndarray:
    """The model's centre from the noised sum of feature vectors over ``patients``; with a
    projection of ``k`` dimensions the sum is in the first ``k`` entries and the centre
    is the shortest ``c`` with ``P c`` equal to their mean (``P^T (P P^T)^-1``)."""
    mean = np.asarray(released, dtype=np.float64) / patients
    if not projection:
        return mean
    p = projection_matrix(projection, mean.shape[0], seed)
    return p.T @ np.linalg.solve(p @ p.T, mean[:projection])


def centroid_weights(class_sums: np.ndarray, class_counts: np.ndarray, noise_std: float,
                     projection: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_centroids` of class sums ``[C, F]``; with a ``projection`` of ``k``
    dimensions the sums are in the first ``k`` columns and the centroids ``M`` found there
    are mapped back to ``M P`` (a patient's score ``u . (M P) = (P u) . M``)."""
    if not projection:
        return fit_centroids(class_sums, class_counts, noise_std)
    centroids, bias = fit_centroids(class_sums[:, :projection], class_counts, noise_std)
    return centroids @ projection_matrix(projection, class_sums.shape[1], seed), bias


def build_centroid(spec: ModelSpec) -> CentroidClassifier:
    return CentroidClassifier(spec)



def fit_exact(model: CentroidClassifier, x: torch.Tensor, mask: torch.Tensor,
              y: torch.Tensor) -> None:
    """Fit ``model`` in place from pooled data, without noise: the centre, then the class
    centroids of the clipped deviations (what the two releases estimate)."""
    with torch.no_grad():
        model.centre.copy_(model.patient_vectors(x, mask).mean(dim=0))
        deviations = model.deviations(x, mask).double()
        onehot = nn.functional.one_hot(y, model.spec.n_classes).double()
        counts = onehot.sum(dim=0).numpy()
        weight, bias = fit_centroids((onehot.T @ deviations).numpy(), counts, 0.0)
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
