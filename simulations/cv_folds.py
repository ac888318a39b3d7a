"""Stratified k-fold assignment of patients, optionally within groups (hospitals).

Each group's patients of each class are shuffled and dealt round-robin over the folds,
continuing where the previous group and class stopped, so that every fold gets its
share of every group's classes (stratified wherever the class counts allow it) and the
fold sizes differ by at most a few patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldPlan:
    """Fold number (0-based) of every patient of a dataset, in the dataset's row order."""

    fold_of: np.ndarray
    k: int
    seed: int
    grouped_by: str  # "site" (folds drawn within each site) or "none"

    def test_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of == fold)

    def train_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of != fold)


def assign_folds(
    labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None
) -> FoldPlan:
    """Deal patients into ``k`` folds, stratified by label within each group."""
    n = len(labels)
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    if k > n:
        raise ValueError(f"--folds {k} is more than the {n} patients")
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    if counts.min() < k:
        raise ValueError(f"--folds {k}: the smallest class has only {counts.min()} "
                         "patients, fewer than the folds")
    rng = np.random.default_rng(seed)
    keys = np.zeros(n, dtype=int) if groups is None else groups
    fold_of = np.full(n, -1)
    cursor = 0
    for group in sorted(np.unique(keys).tolist()):
        in_group = keys == group
        for label in np.unique(labels[in_group]):
            members = rng.permutation(np.flatnonzero(in_group & (labels == label)))
            fold_of[members] = (cursor + np.arange(len(members))) % k
            cursor = (cursor + len(members)) % k
    return FoldPlan(fold_of, k, seed, "none" if groups is None else "site")
