"""Classical baselines on the concatenated modalities, for benchmark tables.

The caller standardizes with the training-set :class:`~common.preprocessing.Standardizer`;
masked-out modalities are then zeros, i.e. mean imputation. Every hyperparameter choice
uses the training data only (stratified inner cross-validation scored by macro F1), and
every estimator is seeded, so one seed gives one result.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

from common.dataset.multiomics import MultiOmicsData
from common.metrics import classification_metrics

logger = logging.getLogger(__name__)

BASELINES = ("logistic_regression", "random_forest", "svm", "gradient_boosting")

LOGREG_CS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SVM_CS = (0.5, 1.0, 2.0, 5.0, 10.0)
RF_TREES = 500
HGB_VALIDATION_FRACTION = 0.15
MAX_INNER_FOLDS = 5
# A scorer object, not the string "f1_macro": LogisticRegressionCV on binary labels passes
# pos_label to the string scorer a second time and fails (scikit-learn 1.9).
MACRO_F1 = make_scorer(f1_score, average="macro")


def inner_cv(y: np.ndarray, seed: int) -> StratifiedKFold:
    """Stratified folds for choices on training data: ``min(5, smallest class)``, at least 2."""
    counts = np.unique(y, return_counts=True)[1]
    n_splits = max(2, min(MAX_INNER_FOLDS, int(counts.min())))
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _logreg_version_kwargs() -> dict[str, Any]:
    """Arguments that select a plain L2 fit without FutureWarnings on scikit-learn >= 1.8."""
    params = inspect.signature(LogisticRegressionCV).parameters
    kwargs: dict[str, Any] = {}
    if params["l1_ratios"].default == "warn":
        kwargs["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:
        kwargs["use_legacy_attributes"] = False
    return kwargs


def _fit_logistic_regression(x: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    model = LogisticRegressionCV(
        Cs=list(LOGREG_CS),
        cv=inner_cv(y, seed),
        scoring=MACRO_F1,
        solver="lbfgs",  # multinomial loss for >= 3 classes
        max_iter=5000,
        class_weight="balanced",
        random_state=seed,
        **_logreg_version_kwargs(),
    )
    return model.fit(x, y)


def _fit_svm(x: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    cv = inner_cv(y, seed)
    # The grid is scored on hard predictions, so it needs no probability model; only the
    # final fit pays for Platt scaling.
    search = GridSearchCV(
        SVC(kernel="rbf", class_weight="balanced"),
        {"C": list(SVM_CS)},
        cv=cv,
        scoring=MACRO_F1,
    ).fit(x, y)
    best_c = float(search.best_params_["C"])
    # Platt scaling on out-of-fold decision values, the replacement scikit-learn 1.9
    # gives for the deprecated SVC(probability=True). Balanced sample weights (equal to
    # class_weight="balanced" for the SVM) also reach the sigmoid fits; unweighted
    # sigmoids would pull the argmax back towards the majority classes.
    model = CalibratedClassifierCV(
        SVC(kernel="rbf", C=best_c),
        method="sigmoid",
        cv=cv,
        ensemble=False,
    )
    return model.fit(x, y, sample_weight=compute_sample_weight("balanced", y))


def _fit_random_forest(x: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    model = RandomForestClassifier(
        n_estimators=RF_TREES, class_weight="balanced", n_jobs=-1, random_state=seed
    )
    return model.fit(x, y)


def _fit_gradient_boosting(x: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    counts = np.unique(y, return_counts=True)[1]
    # The internal validation split is stratified: it needs two members of every class
    # and at least one validation row per class.
    early_stopping = counts.min() >= 2 and int(HGB_VALIDATION_FRACTION * len(y)) >= len(counts)
    if not early_stopping:
        logger.warning(
            "gradient_boosting: too few patients per class for a validation split "
            "(class counts %s); training without early stopping",
            counts.tolist(),
        )
    model = HistGradientBoostingClassifier(
        class_weight="balanced",
        early_stopping=early_stopping,
        validation_fraction=HGB_VALIDATION_FRACTION,
        max_iter=200,
        random_state=seed,
    )
    return model.fit(x, y)


_FITTERS = {
    "logistic_regression": _fit_logistic_regression,
    "random_forest": _fit_random_forest,
    "svm": _fit_svm,
    "gradient_boosting": _fit_gradient_boosting,
}


def fit_baseline(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    """Fit baseline ``name`` (one of :data:`BASELINES`) on standardized ``x`` and labels ``y``.

    Every class present in ``y`` needs at least 2 members (inner cross-validation);
    classes absent from ``y`` are simply not learned. The returned estimator has
    ``predict_proba``; its ``classes_`` are the labels seen in ``y`` (see
    :func:`predict_proba_full` for all schema classes).
    """
    if name not in _FITTERS:
        raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x shape {x.shape} does not fit y shape {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{name}: training labels hold fewer than 2 classes")
    if counts.min() < 2:
        # Inner CV and calibration need every class on both sides of a split.
        raise ValueError(
            f"{name}: every class needs at least 2 training patients for inner "
            f"cross-validation; class {classes[counts.argmin()]} has {counts.min()}"
        )
    # These problems are small: BLAS/OpenMP threads mostly add synchronisation, and on a
    # busy 2-core machine they made logistic regression ~40x and boosting 4-9x slower
    # than one thread. The random forest still uses all cores through joblib.
    with threadpool_limits(limits=1):
        return _FITTERS[name](x, y, seed)


def predict_proba_full(model: BaseEstimator, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n, n_classes]`` probabilities; classes absent from training get probability 0."""
    proba = np.zeros((x.shape[0], n_classes), dtype=np.float64)
    with threadpool_limits(limits=1):
        proba[:, model.classes_] = model.predict_proba(np.asarray(x, dtype=np.float64))
    return proba


def _chosen_params(name: str, model: BaseEstimator) -> dict[str, Any]:
    if name == "logistic_regression":
        return {"C": float(np.ravel(model.C_)[0])}
    if name == "svm":
        return {"C": float(model.estimator.C)}
    if name == "random_forest":
        return {"n_estimators": int(model.n_estimators)}
    if name == "gradient_boosting":
        return {"n_iter": int(model.n_iter_)}
    return {}


def run_baselines(
    train: MultiOmicsData,
    test: MultiOmicsData,
    seed: int,
    names: Sequence[str] = BASELINES,
) -> dict[str, dict[str, Any]]:
    """Fit each baseline on ``train`` and score it on ``test`` (both already standardized).

    Returns name -> :func:`~common.metrics.classification_metrics` on the test set, plus
    ``fit_seconds`` (wall time of fitting, inner CV included) and ``params`` (the
    hyperparameters chosen on the training data).
    """
    if train.labels is None or test.labels is None:
        raise ValueError("run_baselines needs labelled train and test data")
    if train.schema != test.schema:
        raise ValueError("train and test data use different schemas")
    unknown = [n for n in names if n not in _FITTERS]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    label_names = train.schema.label_names
    x_train, x_test = train.concat(), test.concat()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        start = time.perf_counter()
        model = fit_baseline(name, x_train, train.labels, seed)
        fit_seconds = time.perf_counter() - start
        proba = predict_proba_full(model, x_test, len(label_names))
        metrics = classification_metrics(test.labels, proba, label_names)
        metrics["fit_seconds"] = fit_seconds
        metrics["params"] = _chosen_params(name, model)
        logger.info(
            "%s: accuracy %.3f, f1_macro %.3f (fit %.1f s, %s)",
            name,
            metrics["accuracy"],
            metrics["f1_macro"],
            fit_seconds,
            metrics["params"],
        )
        results[name] = metrics
    return results
