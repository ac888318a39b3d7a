"""Tests for common.partition: the global test split and the virtual hospitals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from common.partition import (
    OTHER_SITE,
    FederationPlan,
    PartitionSpec,
    plan_federation,
    split_validation,
)
from common.partition import holdout_split as global_test_split


def make_labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Shuffled labels with ``counts[c]`` patients of class ``c``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def make_codes(sizes: dict[str, int], seed: int = 0) -> np.ndarray:
    codes = np.concatenate([[code] * n for code, n in sizes.items()])
    return np.random.default_rng(seed).permutation(codes)


def assigned(plan: FederationPlan) -> np.ndarray:
    return np.concatenate([np.concatenate([s.train, s.val]) for s in plan.sites])


def total_variation(counts: np.ndarray, reference: np.ndarray) -> float:
    p = counts / counts.sum()
    return 0.5 * float(np.abs(p - reference).sum())


def mean_label_skew(labels: np.ndarray, plan: FederationPlan) -> float:
    n_classes = labels.max() + 1
    global_p = np.bincount(labels, minlength=n_classes) / len(labels)
    tvs = [
        total_variation(np.bincount(labels[np.concatenate([s.train, s.val])],
                                    minlength=n_classes), global_p)
        for s in plan.sites
    ]
    return float(np.mean(tvs))


def check_plan_is_a_partition(plan: FederationPlan, expected: np.ndarray) -> None:
    """Every expected index in exactly one hospital's train or val, val never empty."""
    rows = assigned(plan)
    assert len(rows) == len(set(rows.tolist())), "an index is in two places"
    assert sorted(rows.tolist()) == sorted(expected.tolist())
    for s in plan.sites:
        assert len(s.val) >= 1, s.name
        assert len(s.train) >= 1, s.name
        assert not set(s.train.tolist()) & set(s.val.tolist()), s.name


# --- PartitionSpec ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "alpha"),
    [("site", "site", None), ("iid", "iid", None), ("dirichlet:0.5", "dirichlet", 0.5),
     (" Dirichlet:2 ", "dirichlet", 2.0)],
)
def test_partition_spec_parses_valid_values(text, kind, alpha):
    spec = PartitionSpec.parse(text)
    assert spec.kind == kind
    assert spec.alpha == alpha
    assert PartitionSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text", ["dirichlet:0", "dirichlet:x", "dirichlet:-1", "dirichlet", "foo", "site:3", ""]
)
def test_partition_spec_rejects_invalid_values_naming_them(text):
    with pytest.raises(ValueError) as excinfo:
        PartitionSpec.parse(text)
    assert repr(text) in str(excinfo.value)


# --- global test split -----------------------------------------------------------------


def test_test_split_is_stratified_disjoint_and_complete():
    counts = [50, 30, 20]
    labels = make_labels(counts)
    pool, test = global_test_split(labels, seed=0, test_fraction=0.3)
    assert not set(pool.tolist()) & set(test.tolist())
    assert sorted(np.concatenate([pool, test]).tolist()) == list(range(len(labels)))
    assert len(test) == 30
    test_counts = np.bincount(labels[test], minlength=3)
    for got, n in zip(test_counts, counts, strict=True):
        assert abs(got - 0.3 * n) <= 1
    assert np.all(np.diff(pool) > 0) and np.all(np.diff(test) > 0)  # sorted


def test_test_split_is_deterministic_per_seed():
    labels = make_labels([40, 35, 25])
    a = global_test_split(labels, seed=3)
    b = global_test_split(labels, seed=3)
    c = global_test_split(labels, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_validation_holds_out_at_least_one_and_is_stratified():
    labels = make_labels([20, 20])
    idx = np.arange(40)
    _, val = split_validation(idx, labels, seed=0, val_fraction=0.2)
    assert len(val) == 8
    assert np.bincount(labels[val], minlength=2).tolist() == [4, 4]
    tiny_train, tiny_val = split_validation(np.array([5, 9]), labels, seed=0, val_fraction=0.1)
    assert len(tiny_val) == 1 and len(tiny_train) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_validation(np.array([3]), labels, seed=0)


# --- site partition --------------------------------------------------------------------


def test_site_partition_keeps_large_sites_and_merges_small_ones():
    sizes = {"AA": 40, "BB": 25, "CC": 12, "DD": 9, "EE": 3}
    codes = make_codes(sizes)
    labels = make_labels([45, 30, 14])
    plan = plan_federation(labels, PartitionSpec.parse("site"), seed=0, site_codes=codes,
                           min_site_size=20)
    names = [s.name for s in plan.sites]
    assert names == ["AA", "BB", OTHER_SITE]
    assert plan.dropped == {}
    check_plan_is_a_partition(plan, np.arange(len(codes)))
    by_name = {s.name: s for s in plan.sites}
    assert set(codes[np.concatenate([by_name["AA"].train, by_name["AA"].val])]) == {"AA"}
    other_rows = np.concatenate([by_name[OTHER_SITE].train, by_name[OTHER_SITE].val])
    assert set(codes[other_rows]) == {"CC", "DD", "EE"}
    assert by_name[OTHER_SITE].n == 24


def test_site_partition_drops_a_merged_group_that_is_still_too_small():
    sizes = {"AA": 30, "BB": 22, "CC": 6, "DD": 5}
    codes = make_codes(sizes)
    labels = make_labels([30, 33])
    plan = plan_federation(labels, PartitionSpec.parse("site"), seed=1, site_codes=codes,
                           min_site_size=20)
    assert [s.name for s in plan.sites] == ["AA", "BB"]
    assert plan.dropped == {"CC": 6, "DD": 5}
    kept = np.flatnonzero(np.isin(codes, ["AA", "BB"]))
    check_plan_is_a_partition(plan, kept)


def test_site_partition_with_n_sites_keeps_the_largest():
    sizes = {"AA": 30, "BB": 25, "CC": 20, "DD": 15, "EE": 10}
    codes = make_codes(sizes)
    labels = make_labels([50, 50])
    plan = plan_federation(labels, PartitionSpec.parse("site"), seed=0, site_codes=codes,
                           n_sites=3)
    assert [s.name for s in plan.sites] == ["AA", "BB", OTHER_SITE]
    other = next(s for s in plan.sites if s.name == OTHER_SITE)
    assert other.n == 20 + 15 + 10
    check_plan_is_a_partition(plan, np.arange(len(codes)))


def test_site_partition_needs_site_codes():
    with pytest.raises(ValueError, match="site codes"):
        plan_federation(make_labels([10, 10]), PartitionSpec.parse("site"), seed=0)


def test_plan_record_counts_match_the_sites():
    codes = make_codes({"AA": 30, "BB": 30})
    labels = make_labels([35, 25])
    plan = plan_federation(labels, PartitionSpec.parse("site"), seed=0, site_codes=codes)
    record = plan.record(labels, ("x", "y"))
    assert [r["site"] for r in record] == ["AA", "BB"]
    assert sum(sum(r["class_counts"].values()) for r in record) == 60
    for r, s in zip(record, plan.sites, strict=True):
        assert r["n_train"] == len(s.train) and r["n_val"] == len(s.val)


# --- synthetic partitions --------------------------------------------------------------


def test_dirichlet_gives_every_hospital_the_minimum():
    labels = make_labels([150, 100, 80, 70])
    for seed in range(3):
        plan = plan_federation(labels, PartitionSpec.parse("dirichlet:0.3"), seed=seed,
                               n_sites=5, min_site_size=10)
        assert len(plan.sites) == 5
        assert min(s.n for s in plan.sites) >= 10
        check_plan_is_a_partition(plan, np.arange(len(labels)))


def test_dirichlet_smaller_alpha_gives_more_label_skew():
    labels = make_labels([150, 100, 80, 70])

    def skew(alpha: float) -> float:
        return float(np.mean([
            mean_label_skew(labels, plan_federation(
                labels, PartitionSpec(kind="dirichlet", alpha=alpha), seed=seed,
                n_sites=4, min_site_size=10))
            for seed in range(5)
        ]))

    skewed, mild = skew(0.2), skew(100.0)
    assert skewed > mild + 0.15
    assert mild < 0.1


def test_dirichlet_is_deterministic_per_seed():
    labels = make_labels([60, 60, 40])
    spec = PartitionSpec.parse("dirichlet:0.5")
    a = plan_federation(labels, spec, seed=2, n_sites=4, min_site_size=10)
    b = plan_federation(labels, spec, seed=2, n_sites=4, min_site_size=10)
    for sa, sb in zip(a.sites, b.sites, strict=True):
        assert np.array_equal(sa.train, sb.train) and np.array_equal(sa.val, sb.val)


def test_dirichlet_rejects_impossible_requests():
    with pytest.raises(ValueError, match="lower --sites"):
        plan_federation(make_labels([20, 20]), PartitionSpec.parse("dirichlet:1"), seed=0,
                        n_sites=8, min_site_size=10)


def test_iid_sites_are_balanced_and_mirror_the_global_mix():
    counts = [103, 61, 40, 17]
    labels = make_labels(counts)
    plan = plan_federation(labels, PartitionSpec.parse("iid"), seed=0, n_sites=6)
    assert len(plan.sites) == 6
    check_plan_is_a_partition(plan, np.arange(len(labels)))
    sizes = [s.n for s in plan.sites]
    assert max(sizes) - min(sizes) <= 1
    per_site = np.array([
        np.bincount(labels[np.concatenate([s.train, s.val])], minlength=4) for s in plan.sites
    ])
    assert (per_site.max(axis=0) - per_site.min(axis=0) <= 1).all()
    assert mean_label_skew(labels, plan) < 0.05


def test_iid_defaults_to_eight_sites():
    plan = plan_federation(make_labels([60, 60]), PartitionSpec.parse("iid"), seed=0)
    assert len(plan.sites) == 8


# --- the real BRCA site partition ------------------------------------------------------


@pytest.fixture(scope="module")
def brca():
    from common.dataset import load_dataset, read_manifest, site_codes
    from common.paths import resolve_data_dir

    try:
        directory = resolve_data_dir("brca")
    except FileNotFoundError as e:
        pytest.skip(f"bundled data not available: {e}")
    data = load_dataset(directory)
    codes = site_codes(data, read_manifest(directory).site_pattern)
    pool, test = global_test_split(data.labels, seed=0)
    plan = plan_federation(data.labels[pool], PartitionSpec.parse("site"), seed=0,
                           site_codes=codes[pool])
    return data, codes, pool, test, plan


def test_brca_site_partition_never_sees_the_test_split(brca):
    data, _, pool, test, plan = brca
    hospital_patients = set(data.patient_ids[pool[assigned(plan)]].tolist())
    assert hospital_patients
    assert not hospital_patients & set(data.patient_ids[test].tolist())


def test_brca_site_partition_shape(brca):
    _, codes, pool, _, plan = brca
    names = [s.name for s in plan.sites]
    assert 8 <= len(plan.sites) <= 16
    assert "BH" in names
    counts = Counter(codes[pool].tolist())
    for s in plan.sites:
        if s.name != OTHER_SITE:
            assert counts[s.name] >= 20
            assert s.n == counts[s.name]
    dropped = sum(plan.dropped.values())
    check_plan_is_a_partition(plan, np.arange(len(pool)) if not dropped else assigned(plan))
    assert len(assigned(plan)) + dropped == len(pool)


def test_dirichlet_fills_many_small_unlike_hospitals():
    labels = make_labels([250, 150, 110, 60, 30])  # 600 patients, one rare class
    plan = plan_federation(labels, PartitionSpec.parse("dirichlet:0.3"), seed=0,
                           n_sites=40, min_site_size=10)
    assert len(plan.sites) == 40
    assert {s.n for s in plan.sites} <= {15}
    check_plan_is_a_partition(plan, np.arange(len(labels)))
    assert mean_label_skew(labels, plan) > 0.3
