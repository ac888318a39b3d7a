"""Fairness: the model's test metrics per site and per clinical subgroup.

Subgroups come from the clinical modality's raw values, by column name: age bands from
an age column (or ``years_to_birth``, which in TCGA tables holds the age at diagnosis),
stage from an ordinal ``pathologic_stage`` (1.x = stage I ... 4 = IV), race and
ethnicity from one-hot ``race_*`` / ``ethnicity_*`` columns. A patient without the
clinical modality, or without a value, is in group ``unknown``. A group smaller than
``min_size`` is shown but not judged: it gets no place in the best-worst gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from common.dataset.multiomics import MultiOmicsData
from server.report.settings import DEFAULT_MIN_GROUP_SIZE

AGE_COLUMNS = ("age", "age_at_diagnosis", "age_at_initial_pathologic_diagnosis",
               "years_to_birth")
AGE_BANDS = ((0, 50, "0-49"), (50, 65, "50-64"), (65, math.inf, "65+"))
STAGE_COLUMNS = ("pathologic_stage", "stage", "tumor_stage")
STAGE_NAMES = {1: "stage I", 2: "stage II", 3: "stage III", 4: "stage IV"}
ONE_HOT_PREFIXES = (("race", "race_"), ("ethnicity", "ethnicity_"))
UNKNOWN = "unknown"
MISSING_TAGS = ("nan", "unknown", "not reported", "missing")


@dataclass(frozen=True)
class GroupScore:
    group: str
    n: int
    accuracy: float
    balanced_accuracy: float
    f1_macro: float
    judged: bool  # False: fewer than min_size patients, too small to judge


@dataclass
class Breakdown:
    """Metrics of one grouping (by site, by age band, ...) and its best-worst gap."""

    by: str
    groups: list[GroupScore]
    min_size: int
    metric: str = "balanced_accuracy"
    gap: float | None = None  # best - worst judged group; None with fewer than two
    best: str | None = None
    worst: str | None = None
    too_small: list[GroupScore] = field(default_factory=list)


def breakdown(by: str, groups: Sequence[str] | np.ndarray, y_true: np.ndarray,
              y_pred: np.ndarray, n_classes: int, *, min_size: int = DEFAULT_MIN_GROUP_SIZE,
              metric: str = "balanced_accuracy") -> Breakdown:
    """Per-group accuracy, balanced accuracy and macro-F1, and the gap in ``metric``
    between the best and the worst group of at least ``min_size`` patients."""
    from common.metrics import confusion_matrix, macro_f1

    groups = np.asarray(groups, dtype=object)
    scores = []
    for name in sorted(set(groups.tolist()), key=lambda g: (g == UNKNOWN, str(g))):
        sel = groups == name
        cm = confusion_matrix(y_true[sel], y_pred[sel], n_classes)
        support = cm.sum(axis=1)
        recall = np.diag(cm)[support > 0] / support[support > 0]
        scores.append(GroupScore(str(name), int(sel.sum()), float(np.trace(cm) / sel.sum()),
                                 float(recall.mean()), macro_f1(cm), int(sel.sum()) >= min_size))
    result = Breakdown(by, scores, min_size, metric,
                       too_small=[s for s in scores if not s.judged])
    judged = [s for s in scores if s.judged and s.group != UNKNOWN]
    if len(judged) >= 2:
        best = max(judged, key=lambda s: getattr(s, metric))
        worst = min(judged, key=lambda s: getattr(s, metric))
        result.gap = getattr(best, metric) - getattr(worst, metric)
        result.best, result.worst = best.group, worst.group
    return result


def clinical_subgroups(data: MultiOmicsData, modality: str = "clinical"
                       ) -> dict[str, np.ndarray]:
    """Grouping name -> each patient's group, for the subgroups the data carry."""
    if modality not in data.schema.modality_names:
        return {}
    names = list(data.schema.features(modality))
    values = data.features[modality]
    present = data.mask[:, data.schema.modality_names.index(modality)].astype(bool)
    out: dict[str, np.ndarray] = {}
    age = next((c for c in AGE_COLUMNS if c in names), None)
    if age is not None:
        out["age band"] = _with_unknown(_bands(values[:, names.index(age)]), present)
    stage = next((c for c in STAGE_COLUMNS if c in names), None)
    if stage is not None:
        out["stage"] = _with_unknown(_stages(values[:, names.index(stage)]), present)
    for grouping, prefix in ONE_HOT_PREFIXES:
        cols = [i for i, n in enumerate(names) if n.startswith(prefix)]
        if cols:
            out[grouping] = _with_unknown(
                _one_hot([names[i][len(prefix):] for i in cols], values[:, cols]), present)
    return out


def named_subgroups(data: MultiOmicsData, names: Sequence[str],
                    bins: dict[str, Sequence[float]] | None = None,
                    modality: str = "clinical") -> dict[str, np.ndarray]:
    """Grouping name -> each patient's group, for the columns a dataset manifest names.

    A name is a column of ``modality`` (binned by its edges in ``bins``, else grouped
    by value) or the prefix of one-hot columns (``race`` for ``race_*``); any other name
    is a :class:`ValueError` naming it.
    """
    bins = bins or {}
    has = modality in data.schema.modality_names
    columns = list(data.schema.features(modality)) if has else []
    out: dict[str, np.ndarray] = {}
    for name in names:
        one_hot = [i for i, c in enumerate(columns) if c.startswith(f"{name}_")]
        if name not in columns and not one_hot:
            raise ValueError(f"fairness subgroup {name!r} named in the manifest is not a "
                             f"column of the {modality!r} modality (columns: "
                             f"{columns[:20]}{' ...' if len(columns) > 20 else ''})")
        values = data.features[modality]
        present = data.mask[:, data.schema.modality_names.index(modality)].astype(bool)
        if name in columns:
            column = values[:, columns.index(name)]
            groups = (_binned(column, bins[name]) if name in bins else
                      np.array([_value_name(v) for v in column], dtype=object))
        else:
            groups = _one_hot([columns[i][len(name) + 1:] for i in one_hot],
                              values[:, one_hot])
        out[name] = _with_unknown(groups, present)
    return out


def _binned(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """``< e0``, ``e0-e1``, ..., ``>= eN`` (half-open bins); non-finite is unknown."""
    def fmt(e: float) -> str:
        return f"{e:g}"

    names = [f"< {fmt(edges[0])}",
             *(f"{fmt(lo)} to < {fmt(hi)}" for lo, hi in pairwise(edges)),
             f">= {fmt(edges[-1])}"]
    index = np.searchsorted(np.asarray(edges, float), values, side="right")
    out = np.array([names[i] for i in index], dtype=object)
    out[~np.isfinite(values)] = UNKNOWN
    return out


def _value_name(value: float) -> str:
    if not np.isfinite(value):
        return UNKNOWN
    return f"{value:g}"


def _bands(age: np.ndarray) -> np.ndarray:
    labels = np.full(len(age), UNKNOWN, dtype=object)
    for low, high, name in AGE_BANDS:
        labels[(age >= low) & (age < high)] = name
    labels[~np.isfinite(age) | (age <= 0)] = UNKNOWN
    return labels


def _stages(stage: np.ndarray) -> np.ndarray:
    major = np.floor(np.nan_to_num(stage, nan=0.0)).astype(int)
    return np.array([STAGE_NAMES.get(s, UNKNOWN) for s in major], dtype=object)


def _one_hot(categories: list[str], block: np.ndarray) -> np.ndarray:
    """The category whose column is set; ``unknown`` for none, several, or a missing tag."""
    out = np.full(len(block), UNKNOWN, dtype=object)
    on = block > 0.5
    single = on.sum(axis=1) == 1
    for i in np.flatnonzero(single):
        name = categories[int(np.argmax(on[i]))]
        out[i] = UNKNOWN if name.strip().lower() in MISSING_TAGS else name
    return out


def _with_unknown(groups: np.ndarray, present: np.ndarray) -> np.ndarray:
    groups = groups.copy()
    groups[~present] = UNKNOWN
    return groups
