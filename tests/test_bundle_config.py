"""Tests for common.bundle, common.config, common.preprocessing and common.protocol."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from common.bundle import BUNDLE_VERSION, BundleError, load_bundle, save_bundle
from common.config import ModelConfig, RunConfig, TrainConfig
from common.dataset.multiomics import MultiOmicsData
from common.model import ModelSpec, build_model
from common.preprocessing import MIN_PATIENTS_FOR_STATS, FeatureStats, Standardizer
from common.protocol import SERVER_ROUND, RoundConfig, SiteDescription
from common.schema import FeatureSchema
from common.training import predict_proba

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODALITIES = {"rna": 6, "meth": 4, "clin": 2}
LABELS = ["A", "B", "C"]




def make_schema(modalities: dict[str, int] = MODALITIES) -> FeatureSchema:
    return FeatureSchema.build(
        {m: [f"{m}_{i}" for i in range(k)] for m, k in modalities.items()}, LABELS
    )


def make_data(n: int = 30, seed: int = 0, modalities: dict[str, int] = MODALITIES,
              missing_fraction: float = 0.2) -> MultiOmicsData:
    """Raw (unstandardized) data with feature-specific offsets/scales and some masked rows."""
    rng = np.random.default_rng(seed)
    schema = make_schema(modalities)
    mask = rng.random((n, len(modalities))) >= missing_fraction
    mask[:, 0] = True  # everyone has the first modality
    features = {}
    for j, (m, k) in enumerate(modalities.items()):
        x = rng.normal(loc=rng.uniform(-50, 50, k), scale=rng.uniform(0.5, 20, k), size=(n, k))
        x[~mask[:, j]] = 0.0
        features[m] = x.astype(np.float32)
    labels = rng.integers(0, len(LABELS), n).astype(np.int64)
    return MultiOmicsData(np.array([f"p{seed}-{i}" for i in range(n)]), features, mask,
                          labels, schema)


def small_config() -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=4, n_layers=1, tokens_per_modality=2)


def trained_like_model(schema: FeatureSchema, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec.for_schema(small_config(), schema))
    with torch.no_grad():  # non-trivial modality weights so they must round-trip too
        model.modality_logit.weight.copy_(torch.randn_like(model.modality_logit.weight))
    return model.eval()


def save(directory: Path, model, standardizer: Standardizer, schema: FeatureSchema,
         lineage: dict | None = None) -> Path:
    return save_bundle(directory, model_config=small_config(), schema=schema,
                       standardizer=standardizer, state_dict=model.state_dict(),
                       lineage=lineage or {"run": "test", "rounds": np.int64(3)})


@pytest.fixture
def bundle_dir(tmp_path: Path):
    data = make_data()
    model = trained_like_model(data.schema)
    std = Standardizer.fit(data)
    directory = save(tmp_path / "run" / "model", model, std, data.schema)
    return directory, data, model, std


# --- model bundle ----------------------------------------------------------------------


def test_bundle_round_trip_predicts_like_the_original(bundle_dir):
    directory, data, model, std = bundle_dir
    bundle = load_bundle(directory)
    expected = predict_proba(model, std.transform(data))
    got = bundle.predict_proba(data)
    assert got.shape == (data.n, len(LABELS))
    assert np.allclose(got, expected, atol=1e-6)
    # Standardization matters: predictions on raw data with the raw model differ.
    assert not np.allclose(predict_proba(model, data), expected, atol=1e-3)
    assert bundle.schema == data.schema
    assert bundle.model_config == small_config()
    assert bundle.lineage == {"run": "test", "rounds": 3}
    for m in data.modality_names:
        assert np.array_equal(bundle.standardizer.mean[m], std.mean[m])
        assert np.array_equal(bundle.standardizer.std[m], std.std[m])


def test_bundle_loads_from_the_run_directory(bundle_dir):
    directory, data, _, _ = bundle_dir
    from_run = load_bundle(directory.parent)
    assert np.allclose(from_run.predict_proba(data), load_bundle(directory).predict_proba(data))


def test_bundle_with_tampered_schema_is_rejected(bundle_dir):
    directory = bundle_dir[0]
    schema = json.loads((directory / "schema.json").read_text())
    schema["modalities"]["rna"] = list(reversed(schema["modalities"]["rna"]))
    (directory / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(BundleError, match="hash"):
        load_bundle(directory)


def test_bundle_missing_weights_is_rejected_naming_the_file(bundle_dir):
    directory = bundle_dir[0]
    (directory / "weights.pt").unlink()
    with pytest.raises(BundleError, match=r"weights\.pt"):
        load_bundle(directory)


def test_bundle_of_unsupported_version_is_rejected(bundle_dir):
    directory = bundle_dir[0]
    meta = json.loads((directory / "bundle.json").read_text())
    meta["version"] = BUNDLE_VERSION + 1
    (directory / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"version {BUNDLE_VERSION + 1}"):
        load_bundle(directory)


def test_not_a_bundle_directory(tmp_path: Path):
    with pytest.raises(BundleError, match=r"bundle\.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(tmp_path)


def test_saving_over_a_bundle_replaces_it_completely(bundle_dir):
    directory, data, _, std = bundle_dir
    (directory / "stale.txt").write_text("from the previous bundle")
    other_model = trained_like_model(data.schema, seed=5)
    save(directory, other_model, std, data.schema, lineage={"run": "second"})
    assert sorted(p.name for p in directory.iterdir()) == [
        "bundle.json", "schema.json", "standardizer.npz", "weights.pt"
    ]
    assert [p.name for p in directory.parent.iterdir()] == ["model"]  # no temp/.old dirs
    bundle = load_bundle(directory)
    assert bundle.lineage == {"run": "second"}
    assert np.allclose(bundle.predict_proba(data),
                       predict_proba(other_model, std.transform(data)), atol=1e-6)


def test_write_json_replaces_the_file_with_numpy_values_and_nan(tmp_path: Path):
    import json
    import math

    from common.bundle import write_json

    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_json(path, {"auc": float("nan"), "n": np.int64(3), "w": np.arange(2.0)})
    back = json.loads(path.read_text())
    assert math.isnan(back["auc"]) and back["n"] == 3 and back["w"] == [0.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_bundle_predicts_without_a_whole_modality(bundle_dir, caplog):
    directory, data, _, _ = bundle_dir
    reduced_schema = make_schema({"rna": 6, "clin": 2})
    keep = [0, 2]
    reduced = MultiOmicsData(
        data.patient_ids,
        {"rna": data.features["rna"], "clin": data.features["clin"]},
        data.mask[:, keep], data.labels, reduced_schema,
    )
    bundle = load_bundle(directory)
    with caplog.at_level(logging.WARNING):
        proba = bundle.predict_proba(reduced, source="hospital-x")
    assert proba.shape == (data.n, len(LABELS))
    assert np.isfinite(proba).all() and (proba >= 0).all()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("'meth'" in w and "hospital-x" in w for w in warnings), warnings
    # Same as the full data with meth masked out for everyone.
    masked = MultiOmicsData(data.patient_ids, dict(data.features),
                            data.mask & np.array([True, False, True]), data.labels, data.schema)
    assert np.allclose(proba, bundle.predict_proba(masked), atol=1e-5)


# --- run configuration -----------------------------------------------------------------


def test_run_config_round_trips_through_flower():
    cfg = RunConfig(data="rosmap", partition="dirichlet:0.3", rounds=7, strategy="fedprox",
                    proximal_mu=0.5, seed=11, model=small_config(),
                    train=TrainConfig(lr=1e-3, batch_size=8, amp=False))
    flat = cfg.to_flower()
    assert all("_" not in k for k in flat), [k for k in flat if "_" in k]
    assert flat["model.d-model"] == 32
    assert flat["local-epochs"] == cfg.local_epochs
    assert RunConfig.from_flower(flat) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_run_config_nested_override_applies():
    cfg = RunConfig.from_flower({"model.kind": "mmt", "model.d-model": 64, "train.lr": 0.01,
                                 "rounds": 3})
    assert cfg.model.d_model == 64
    assert cfg.train.lr == 0.01
    assert cfg.rounds == 3
    default = RunConfig()
    assert cfg.model.n_heads == default.model.n_heads
    assert cfg.train.batch_size == default.train.batch_size


def test_run_config_unknown_key_is_named():
    with pytest.raises(ValueError, match="'learning-rate'"):
        RunConfig.from_flower({"learning-rate": 0.1})


@pytest.mark.parametrize("key", ["model.d-modle", "train.learning-rate"])
def test_run_config_unknown_nested_key_is_named(key):
    with pytest.raises(ValueError, match=key):
        RunConfig.from_flower({key: 1})


@pytest.mark.parametrize(
    ("field", "value"),
    [("rounds", 0), ("test_fraction", 1.5), ("local_epochs", 0),
     ("val_fraction", 0.0), ("fraction_train", 1.2), ("proximal_mu", -1.0)],
)
def test_run_config_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RunConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        RunConfig.from_flower({field.replace("_", "-"): value})


# --- standardization -------------------------------------------------------------------


def test_feature_stats_merge_equals_pooled_stats():
    data = make_data(n=40, seed=3)
    a, b = data.subset(np.arange(0, 17)), data.subset(np.arange(17, 40))
    merged = FeatureStats.merge([FeatureStats.of(a), FeatureStats.of(b)])
    whole = FeatureStats.of(data)
    assert merged.count == whole.count
    assert merged.count["meth"] == int(data.mask[:, 1].sum())
    for m in data.modality_names:
        assert np.allclose(merged.total[m], whole.total[m])
        assert np.allclose(merged.total_sq[m], whole.total_sq[m])
    from_merged = Standardizer.from_stats(merged, data.schema)
    fitted = Standardizer.fit(data)
    for m in data.modality_names:
        assert np.allclose(from_merged.mean[m], fitted.mean[m], rtol=1e-5, atol=1e-5)
        assert np.allclose(from_merged.std[m], fitted.std[m], rtol=1e-5)
        present = data.features[m][data.mask[:, data.modality_names.index(m)]]
        assert np.allclose(fitted.mean[m], present.mean(axis=0), rtol=1e-4, atol=1e-4)
        assert np.allclose(fitted.std[m], present.std(axis=0), rtol=1e-4)


def test_shareable_withholds_modalities_with_too_few_patients():
    data = make_data(n=20, seed=1)
    data.mask[:, 1] = False
    data.mask[: MIN_PATIENTS_FOR_STATS - 1, 1] = True  # meth: one patient short
    data.mask[:, 2] = False
    data.mask[:MIN_PATIENTS_FOR_STATS, 2] = True  # clin: exactly enough
    shared = FeatureStats.of(data).shareable()
    assert set(shared.count) == {"rna", "clin"}
    assert set(shared.total) == {"rna", "clin"} and set(shared.total_sq) == {"rna", "clin"}
    assert shared.count["clin"] == MIN_PATIENTS_FOR_STATS
    # A modality nobody reported gets the identity transform.
    std = Standardizer.from_stats(shared, data.schema)
    assert np.array_equal(std.mean["meth"], np.zeros(4)) and np.array_equal(std.std["meth"],
                                                                           np.ones(4))


def test_transform_keeps_masked_rows_zero_and_constant_features_finite():
    data = make_data(n=25, seed=2)
    data.features["rna"][:, 2] = 12345.678  # constant feature
    data.features["meth"][data.mask[:, 1], 0] = -3.25  # constant among present patients
    data.features["meth"][~data.mask[:, 1]] = 99.0  # garbage in masked rows is ignored
    assert (~data.mask[:, 1]).any()
    std = Standardizer.fit(data)
    out = std.transform(data)
    for j, m in enumerate(out.modality_names):
        assert np.isfinite(out.features[m]).all(), m
        assert out.features[m].dtype == np.float32
        assert (out.features[m][~data.mask[:, j]] == 0.0).all(), m
    assert np.allclose(out.features["rna"][:, 2], 0.0, atol=1e-3)
    assert np.allclose(out.features["meth"][data.mask[:, 1], 0], 0.0, atol=1e-3)
    # Non-constant present features end up with mean 0 and std 1.
    rna = out.features["rna"][:, [0, 1, 3]]
    assert np.allclose(rna.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(rna.std(axis=0), 1.0, atol=1e-3)
    # The input is not modified.
    assert (data.features["meth"][~data.mask[:, 1]] == 99.0).all()


# --- protocol records ------------------------------------------------------------------


def test_round_config_survives_a_flower_record():
    rc = RoundConfig(setup_digest="0123abcd", local_epochs=3, progress_start=0.2,
                     progress_end=0.3, proximal_mu=0.01)
    record = rc.to_record()
    record[SERVER_ROUND] = 4  # Flower's strategies add this key
    back = RoundConfig.from_record(record)
    assert back.setup_digest == "0123abcd"
    assert (back.local_epochs, back.server_round) == (3, 4)
    assert back.progress_start == pytest.approx(0.2) and back.progress_end == pytest.approx(0.3)
    assert back.proximal_mu == pytest.approx(0.01)


def test_site_description_survives_a_flower_record():
    data = make_data(n=30, seed=5)
    data.mask[:, 2] = False
    data.mask[:3, 2] = True  # clin withheld: too few patients
    stats = FeatureStats.of(data).shareable()
    desc = SiteDescription(site="BH", schema=data.schema, n_train=30, n_val=8,
                           class_counts=data.class_counts(), stats=stats)
    back = SiteDescription.from_record(desc.to_record())
    assert back.site == "BH"
    assert back.schema == data.schema
    assert (back.n_train, back.n_val) == (30, 8)
    assert np.array_equal(back.class_counts, data.class_counts())
    assert back.stats.count == stats.count
    assert set(back.stats.count) == {"rna", "meth"}
    for m in stats.count:
        assert np.allclose(back.stats.total[m], stats.total[m])
        assert np.allclose(back.stats.total_sq[m], stats.total_sq[m])


def test_pyproject_flower_config_matches_run_config_defaults():
    """`flwr run` only accepts keys declared in pyproject.toml; they must mirror RunConfig."""
    import tomllib

    from flwr.common.config import flatten_dict

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = flatten_dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])
    assert declared == RunConfig().to_flower()


def test_flower_app_config_is_the_private_federation_simulate_runs():
    """`flwr run .` and `cancer-alpha simulate` with no options run the same config: the
    dataclass defaults, distributed DP with the model chosen for it."""
    import tomllib

    from flwr.common.config import flatten_dict

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = flatten_dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])
    assert RunConfig.from_flower(declared) == RunConfig() == RunConfig.preset()
    assert declared["dp"] == RunConfig.dp == "distributed"
    assert RunConfig().model == ModelConfig(kind="centroid")
    assert RunConfig().secure_aggregation


def test_presets_change_only_the_privacy_mode_schedule_and_model():
    private, plain, central = RunConfig(), RunConfig.preset("none"), RunConfig.preset("central")
    changed = {k for k, v in plain.to_dict().items() if private.to_dict()[k] != v}
    # and the robust vetting of runs whose updates the coordinator reads (no DP)
    assert changed == {"dp", "rounds", "local_epochs", "max_grad_norm", "model", "train",
                       "update_direction_ratio", "quarantine_after"}
    assert (plain.model, plain.train) == (ModelConfig(), TrainConfig())
    local = RunConfig.preset("local")  # the class centroids, as under distributed DP
    assert {k for k, v in local.to_dict().items() if private.to_dict()[k] != v} == {"dp"}
    assert not local.secure_aggregation
    dp_sgd = RunConfig.preset("local", model_kind="mmt")
    assert (dp_sgd.model, dp_sgd.train) == (ModelConfig.for_local_dp(),
                                            TrainConfig.for_local_dp())
    assert dp_sgd.strategy == "fedavg" and not dp_sgd.secure_aggregation
    assert central.to_dict() == {**plain.to_dict(), "dp": "central",
                                 "update_direction_ratio": private.update_direction_ratio,
                                 "quarantine_after": private.quarantine_after}
    assert RunConfig.preset("none", rounds=3).rounds == 3


def test_a_site_budget_defaults_to_the_run_budget():
    from common.site_config import PrivacySettings

    run = RunConfig()
    site = PrivacySettings()
    assert (site.epsilon, site.delta, site.max_noise_multiplier) == (
        run.epsilon, run.delta, run.max_noise_multiplier)
