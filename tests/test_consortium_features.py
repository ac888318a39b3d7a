"""The consortium's feature set from the sites' declared names, and each site's data in it:
a feature a site lacks is 0 after standardization (masked), never imputed."""

from __future__ import annotations

import numpy as np
import pytest

from common.consortium_features import (
    consortium_modalities,
    pooled_standardizer,
    site_columns,
    site_input,
)
from common.dataset.multiomics import MultiOmicsData
from common.preprocessing import FeatureStats, Standardizer
from common.protocol import SiteDescription
from common.schema import FeatureSchema, SchemaMismatchError
from server.rounds.consortium import consortium_schema, merge_descriptions

LABELS = ["A", "B"]


def data(features: dict[str, list[str]], seed: int, n: int = 8) -> MultiOmicsData:
    rng = np.random.default_rng(seed)
    schema = FeatureSchema.build(features, LABELS)
    x = {m: rng.normal(5.0, 2.0, size=(n, len(f))).astype(np.float32)
         for m, f in features.items()}
    mask = np.ones((n, len(features)), dtype=bool)
    return MultiOmicsData([f"p{seed}-{i}" for i in range(n)], x, mask,
                          np.arange(n) % 2, schema)


def test_identical_names_are_kept_as_declared_in_the_first_sites_order():
    a = FeatureSchema.build({"mrna": ["g2_2", "g1_1"], "cnv": ["x"]}, LABELS)
    b = FeatureSchema.build({"mrna": ["g1_1", "g2_2"]}, LABELS)
    assert consortium_modalities({"a": a, "b": b}) == (
        ("mrna", ("g2_2", "g1_1")), ("cnv", ("x",)))


def test_differing_names_meet_as_canonical_symbols_and_rare_features_are_dropped():
    # Firehose SYMBOL_Entrez names, symbols (any case) and Entrez ids of the shipped table.
    a = FeatureSchema.build({"mrna": ["FOXA1_3169", "MLPH_79083", "ESR1_2099"]}, LABELS)
    b = FeatureSchema.build({"mrna": ["foxa1", "MLPH", "ONLY_B"]}, LABELS)
    c = FeatureSchema.build({"mrna": ["3169", "79083", "2099"]}, LABELS)
    mods = dict(consortium_modalities({"a": a, "b": b, "c": c}))
    # ESR1 is at 2 of 3 sites (kept), ONLY_B at 1 (dropped: fewer than a majority).
    assert set(mods["mrna"]) == {"FOXA1", "MLPH", "ESR1"}
    cols = site_columns(FeatureSchema(tuple(mods.items()), tuple(LABELS)), b)["mrna"]
    assert [b.features("mrna")[j] if j >= 0 else None for j in cols] == ["foxa1", "MLPH", None]


def test_class_names_must_agree_but_feature_names_may_differ():
    a = FeatureSchema.build({"mrna": ["FOXA1_3169", "MLPH_79083"]}, LABELS)
    b = FeatureSchema.build({"mrna": ["FOXA1"]}, LABELS)
    schema = consortium_schema([SiteDescription("a", a), SiteDescription("b", b)])
    assert schema.features("mrna") == ("FOXA1", "MLPH")
    with pytest.raises(SchemaMismatchError, match="classes"):
        consortium_schema([SiteDescription("a", a),
                           SiteDescription("b", FeatureSchema.build({"mrna": ["FOXA1"]},
                                                                    ["A", "C"]))])


def test_a_lacking_feature_is_zero_and_adds_nothing_to_the_pooled_statistics():
    full = data({"mrna": ["FOXA1", "MLPH", "ESR1"]}, seed=1)
    part = data({"mrna": ["MLPH_79083", "FOXA1_3169"]}, seed=2)  # lacks ESR1, other order
    descriptions = [SiteDescription(name, d.schema, d.n, 0, d.class_counts(),
                                    FeatureStats.of(d))
                    for name, d in (("full", full), ("part", part))]
    setup, sites = merge_descriptions(descriptions, "none")
    assert setup.schema.features("mrna") == ("FOXA1", "MLPH", "ESR1")
    assert sites[1]["features"] == {"mrna": {"features": 3, "present": 2}}
    # Pooled per feature: ESR1 from the full site only; FOXA1 from both sites' patients.
    foxa1 = np.concatenate([full.features["mrna"][:, 0], part.features["mrna"][:, 1]])
    assert setup.standardizer.mean["mrna"][0] == pytest.approx(foxa1.mean(), rel=1e-5)
    assert setup.standardizer.mean["mrna"][2] == pytest.approx(
        full.features["mrna"][:, 2].mean(), rel=1e-5)
    x = site_input(part, setup.schema, setup.standardizer)
    assert x.feature_mask["mrna"].tolist() == [True, True, False]
    assert np.all(x.data.features["mrna"][:, 2] == 0.0)
    expected = (part.features["mrna"][:, 1] - setup.standardizer.mean["mrna"][0]) \
        / setup.standardizer.std["mrna"][0]
    np.testing.assert_allclose(x.data.features["mrna"][:, 0], expected, rtol=1e-5)


def test_per_patient_standardization_uses_only_the_features_the_site_has():
    part = data({"mrna": ["FOXA1", "MLPH"]}, seed=3)
    schema = FeatureSchema.build({"mrna": ["FOXA1", "MLPH", "ESR1"], "cnv": ["x"]}, LABELS)
    x = site_input(part, schema, Standardizer.for_each_patient(schema)).data
    z = x.features["mrna"]
    np.testing.assert_allclose(z[:, :2].mean(axis=1), 0.0, atol=1e-5)
    assert np.all(z[:, 2] == 0.0)
    # A modality of the consortium the site does not hold is masked, as before.
    assert not x.mask[:, 1].any() and np.all(x.features["cnv"] == 0.0)


def test_identical_schemas_give_exactly_the_previous_input():
    d = data({"mrna": ["a", "b", "c"], "mirna": ["m1", "m2"]}, seed=4)
    d.mask[2, 1] = False
    d.features["mirna"][2] = 0.0
    schema = FeatureSchema.build({"mirna": ["m2", "m1"], "mrna": ["c", "a", "b"]}, LABELS)
    for std in (Standardizer.fit(d.align_to(schema)), Standardizer.for_each_patient(schema)):
        got = site_input(d, schema, std).data
        want = std.transform(d.align_to(schema))
        for m in schema.modality_names:
            np.testing.assert_array_equal(got.features[m], want.features[m])
        np.testing.assert_array_equal(got.mask, want.mask)


def test_pooled_standardizer_matches_pooled_data_when_all_sites_have_every_feature():
    a, b = data({"g": ["x", "y"]}, 5), data({"g": ["x", "y"]}, 6)
    pooled = pooled_standardizer(a.schema, [(a.schema, FeatureStats.of(a)),
                                            (b.schema, FeatureStats.of(b))])
    merged = Standardizer.from_stats(FeatureStats.merge([FeatureStats.of(a),
                                                         FeatureStats.of(b)]), a.schema)
    np.testing.assert_allclose(pooled.mean["g"], merged.mean["g"], rtol=1e-6)
    np.testing.assert_allclose(pooled.std["g"], merged.std["g"], rtol=1e-6)


def test_shipped_table_maps_versioned_ensembl_ids_to_symbols():
    from common.dataset.harmonization import canonical_names

    names, unmapped = canonical_names(["ENSG00000129514.17", "ENSG00000091831.24"], "symbol")
    assert names == ["FOXA1", "ESR1"] and unmapped == []
