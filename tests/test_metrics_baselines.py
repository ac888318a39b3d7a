"""Tests for common.metrics, common.baselines and common.plots."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

from common.baselines import BASELINES, fit_baseline, predict_proba_full, run_baselines
from common.dataset.multiomics import MultiOmicsData
from common.metrics import (
    METRIC_KEYS,
    classification_metrics,
    confusion_matrix,
    format_mean_std,
    macro_f1,
    summarize,
)
from common.plots import plot_confusion_matrix, plot_round_curves
from common.preprocessing import Standardizer
from common.schema import FeatureSchema

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _proba_from_predictions(y_pred: list[int], n_classes: int) -> np.ndarray:
    """Rows summing to 1 whose argmax is ``y_pred``."""
    proba = np.full((len(y_pred), n_classes), 0.1)
    proba[np.arange(len(y_pred)), y_pred] = 1.0 - 0.1 * (n_classes - 1)
    return proba


# --- metrics -------------------------------------------------------------------------


def test_three_class_metrics_match_hand_computation() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = [0, 0, 0, 1, 1, 1, 2, 0, 1]
    m = classification_metrics(y_true, _proba_from_predictions(y_pred, 3), ["a", "b", "c"])

    # By hand: class a: TP 3, FP 1, FN 1; class b: TP 2, FP 2, FN 0; class c: TP 1, FP 0, FN 2.
    p = [3 / 4, 2 / 4, 1 / 1]
    r = [3 / 4, 2 / 2, 1 / 3]
    f1 = [2 * pi * ri / (pi + ri) for pi, ri in zip(p, r, strict=True)]
    support = [4, 2, 3]
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["f1_macro"] == pytest.approx(23 / 36)
    assert m["f1_weighted"] == pytest.approx(
        sum(f * s for f, s in zip(f1, support, strict=True)) / 9
    )
    assert m["balanced_accuracy"] == pytest.approx(sum(r) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert m["n"] == 9
    for k, name in enumerate(["a", "b", "c"]):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(p[k])
        assert pc["recall"] == pytest.approx(r[k])
        assert pc["f1"] == pytest.approx(f1[k])
        assert pc["support"] == support[k]
    for key in METRIC_KEYS:
        assert type(m[key]) is float


def test_metrics_agree_with_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, size=200)
    proba = rng.dirichlet(np.ones(4), size=200)
    m = classification_metrics(y_true, proba, ["w", "x", "y", "z"])
    y_pred = proba.argmax(axis=1)
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))


def test_absent_classes_zero_division_and_macro_average() -> None:
    # Class 2 is predicted but never true; class 3 is neither true nor predicted.
    y_true = np.array([0, 0, 1, 1])
    y_pred = [0, 2, 1, 1]
    names = ["a", "b", "c", "d"]
    m = classification_metrics(y_true, _proba_from_predictions(y_pred, 4), names)
    f1_a = 2 * 1.0 * 0.5 / 1.5
    assert m["f1_macro"] == pytest.approx((f1_a + 1.0 + 0.0) / 3)  # d is left out
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert len(m["confusion_matrix"]) == 4


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_of_the_confusion_matrix_is_the_reported_one(seed: int) -> None:
    # Federated validation pools confusion counts and takes macro_f1 of the sum; test
    # metrics come from classification_metrics: both must agree with scikit-learn, also
    # with classes absent from the truth, the predictions or both.
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    rng = np.random.default_rng(seed)
    n_classes = 5
    y_true = rng.integers(0, 3, size=30)  # classes 3 and 4 never true
    proba = rng.dirichlet(np.ones(n_classes), size=30)
    proba[:, 4] = 0.0  # class 4 never predicted either
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    assert np.array_equal(cm, sk_confusion_matrix(y_true, y_pred, labels=range(n_classes)))
    m = classification_metrics(y_true, proba, list("abcde"))
    assert m["f1_macro"] == macro_f1(cm)
    assert macro_f1(cm) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_macro_f1_of_an_empty_matrix_is_zero() -> None:
    assert macro_f1(np.zeros((3, 3), dtype=np.int64)) == 0.0


def test_auc_with_class_absent_from_y_true_uses_present_classes() -> None:
    rng = np.random.default_rng(0)
    y_true = np.array([0, 1, 3, 0, 1, 3, 0, 3, 1, 0, 3, 1])
    proba = rng.dirichlet(np.ones(4), size=len(y_true))
    proba[y_true == 3, 3] += 0.5  # some signal, so the AUC is not trivial
    proba /= proba.sum(axis=1, keepdims=True)
    m = classification_metrics(y_true, proba, ["a", "b", "c", "d"])
    per_class = [roc_auc_score(y_true == k, proba[:, k]) for k in (0, 1, 3)]
    assert m["roc_auc_ovr"] == pytest.approx(np.mean(per_class))
    assert m["per_class"]["c"]["support"] == 0


def test_binary_auc_uses_positive_class() -> None:
    y_true = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y_true, proba, ["neg", "pos"])
    # Positive/negative pairs ranked correctly: (.35>.1), (.8>.1), (.8>.4); not (.35>.4).
    assert m["roc_auc_ovr"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(3 / 4)  # 0.35 -> predicted negative


def test_auc_is_nan_with_one_class_present() -> None:
    y_true = np.array([2, 2, 2])
    m = classification_metrics(y_true, _proba_from_predictions([2, 0, 2], 3), ["a", "b", "c"])
    assert math.isnan(m["roc_auc_ovr"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("y_true", "proba"),
    [
        (np.array([0, 1]), np.full((2, 3), 1 / 3)),  # proba has 3 columns, 2 names
        (np.array([0, 5]), np.full((2, 2), 0.5)),  # label out of range
        (np.array([], dtype=np.int64), np.zeros((0, 2))),  # empty
        (np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]])),  # NaN
    ],
)
def test_invalid_inputs_raise(y_true: np.ndarray, proba: np.ndarray) -> None:
    with pytest.raises(ValueError):
        classification_metrics(y_true, proba, ["a", "b"])


def test_summarize_and_format() -> None:
    mean, std = summarize([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert std == pytest.approx(math.sqrt((0.02**2 + 0.0 + 0.02**2) / 2))  # ddof=1
    assert summarize([0.7]) == (pytest.approx(0.7), 0.0)
    assert format_mean_std([0.80, 0.82, 0.84]) == ".820 ± .020"
    assert format_mean_std([0.5]) == ".500 ± .000"
    assert format_mean_std([1.0, 1.0]) == "1.000 ± .000"
    with pytest.raises(ValueError):
        summarize([])


# --- baselines -----------------------------------------------------------------------


def _synthetic(
    n: int = 150, class_probs: tuple[float, ...] = (0.5, 0.3, 0.2), seed: int = 0
) -> MultiOmicsData:
    """Two modalities on raw (unstandardized) scales; 6 features of each carry the class."""
    rng = np.random.default_rng(seed)
    k = len(class_probs)
    y = rng.choice(k, size=n, p=list(class_probs)).astype(np.int64)
    feats = {}
    for m, width, scale, offset in (("rna", 30, 3.0, 8.0), ("meth", 20, 0.5, -1.0)):
        shift = np.zeros((k, width))
        shift[:, :6] = rng.normal(0.0, 1.0, size=(k, 6))
        z = rng.normal(size=(n, width)) + shift[y]
        feats[m] = (offset + scale * z).astype(np.float32)
    mask = np.ones((n, 2), dtype=bool)
    mask[rng.random(n) < 0.1, 1] = False  # some patients lack methylation
    feats["meth"][~mask[:, 1]] = 0.0
    schema = FeatureSchema.build(
        {"rna": [f"g{i}" for i in range(30)], "meth": [f"cg{i}" for i in range(20)]},
        [f"class{c}" for c in range(k)],
    )
    ids = np.array([f"P{i:04d}" for i in range(n)])
    return MultiOmicsData(ids, feats, mask, y, schema)


@pytest.fixture(scope="module")
def split() -> tuple[MultiOmicsData, MultiOmicsData]:
    data = _synthetic()
    tr, te = train_test_split(
        np.arange(data.n), test_size=0.33, stratify=data.labels, random_state=0
    )
    train, test = data.subset(tr), data.subset(te)
    std = Standardizer.fit(train)
    return std.transform(train), std.transform(test)


@pytest.fixture(scope="module")
def results(split: tuple[MultiOmicsData, MultiOmicsData]) -> dict[str, dict]:
    return run_baselines(*split, seed=0)


def test_baselines_beat_majority_rate(
    split: tuple[MultiOmicsData, MultiOmicsData], results: dict[str, dict]
) -> None:
    _, test = split
    majority = np.bincount(test.labels).max() / test.n
    assert set(results) == set(BASELINES)
    for name, m in results.items():
        assert m["accuracy"] >= majority + 0.2, (name, m["accuracy"], majority)
        assert m["f1_macro"] >= 0.6, (name, m["f1_macro"])
        assert m["n"] == test.n
        assert m["fit_seconds"] >= 0
        assert np.asarray(m["confusion_matrix"]).sum() == test.n


def test_baselines_are_deterministic(
    split: tuple[MultiOmicsData, MultiOmicsData], results: dict[str, dict]
) -> None:
    again = run_baselines(*split, seed=0)
    for name in BASELINES:
        for key in (*METRIC_KEYS, "confusion_matrix", "params"):
            assert again[name][key] == results[name][key], (name, key)


def test_fitted_probabilities_depend_only_on_seed(
    split: tuple[MultiOmicsData, MultiOmicsData],
) -> None:
    train, test = split
    x, y, xt = train.concat(), train.labels, test.concat()
    for name in BASELINES:
        first = predict_proba_full(fit_baseline(name, x, y, seed=0), xt, 3)
        second = predict_proba_full(fit_baseline(name, x, y, seed=0), xt, 3)
        np.testing.assert_array_equal(first, second, err_msg=name)
        if name in ("random_forest", "gradient_boosting"):  # randomised: the seed must matter
            other = predict_proba_full(fit_baseline(name, x, y, seed=1), xt, 3)
            assert not np.array_equal(first, other), name


def test_rare_class_and_absent_class() -> None:
    # Class 1 has 3 training members (fewer than 5 folds); class 3 has none at all.
    rng = np.random.default_rng(1)
    y = np.array([0] * 30 + [1] * 3 + [2] * 27)
    x = rng.normal(size=(60, 8)) + 2.0 * np.eye(4)[y][:, [0, 1, 2, 3, 0, 1, 2, 3]]
    for name in BASELINES:
        model = fit_baseline(name, x, y, seed=0)
        proba = predict_proba_full(model, x, n_classes=4)
        assert proba.shape == (60, 4)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert np.all(proba[:, 3] == 0.0)
        assert (proba.argmax(axis=1) == y).mean() > 0.5, name


def test_singleton_class_and_unknown_name_raise() -> None:
    x = np.random.default_rng(0).normal(size=(20, 3))
    y = np.array([0] * 10 + [1] * 9 + [2])
    with pytest.raises(ValueError, match="at least 2"):
        fit_baseline("logistic_regression", x, y, seed=0)
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("knn", x, np.array([0, 1] * 10), seed=0)


# --- plots ---------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000


def test_round_curves_with_missing_parts(tmp_path: Path) -> None:
    rounds = [
        {"round": 1, "train": {"loss": 1.2}},
        {"round": 2, "val": {"loss": 1.0, "f1_macro": 0.5}, "train": {"loss": 0.9}},
        {"round": 3, "test": {"accuracy": 0.7, "f1_macro": 0.6}, "best": True},
        {"round": 4, "test": {"accuracy": 0.72, "f1_macro": None}, "val": {"f1_macro": 0.55}},
    ]
    out = plot_round_curves(rounds, tmp_path / "sub" / "curves.png", title="t")
    assert out == tmp_path / "sub" / "curves.png"
    _assert_png(out)
    # No losses at all (single panel) and no metrics at all must both still draw.
    _assert_png(plot_round_curves([{"round": 1, "test": {"accuracy": 0.5}}], tmp_path / "a.png"))
    _assert_png(plot_round_curves([{"round": 1}, {"train": {"loss": 1.0}}], tmp_path / "b.png"))


def test_confusion_matrix_plot(tmp_path: Path) -> None:
    cm = [[5, 1, 0], [0, 0, 0], [2, 0, 7]]  # an empty true class must not divide by zero
    names = ["Luminal A", "HER2-enriched", "Basal-like"]
    _assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm.png", title="cm"))
    _assert_png(plot_confusion_matrix(cm, names, tmp_path / "raw.png", normalize=False))
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, names[:2], tmp_path / "bad.png")


def test_importing_plots_does_not_import_matplotlib() -> None:
    code = "import sys, common.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_baselines_handle_binary_labels() -> None:
    """Two classes (e.g. ROSMAP): every baseline fits, tunes and beats the majority rate."""
    data = _synthetic(n=120, class_probs=(0.5, 0.5), seed=3)
    tr, te = train_test_split(
        np.arange(data.n), test_size=0.33, stratify=data.labels, random_state=0
    )
    std = Standardizer.fit(data.subset(tr))
    train, test = std.transform(data.subset(tr)), std.transform(data.subset(te))
    results = run_baselines(train, test, seed=0)
    majority = np.bincount(test.labels).max() / test.n
    for name, m in results.items():
        assert m["accuracy"] >= majority + 0.15, (name, m["accuracy"], majority)
        assert 0.5 <= m["roc_auc_ovr"] <= 1.0, name
