"""Feature harmonization: gene identifier mapping, the consortium feature set from
declared names, per-site maps and masks (the federation through Flower is in
``test_harmonized_federation.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from common.dataset.harmonization import (
    ConsortiumFeatures,
    FeatureMoments,
    GeneIdTable,
    canonical_names,
    consortium_features,
    harmonize,
    id_kind,
    moments_in_consortium,
    shipped_gene_ids,
    site_feature_map,
    standardize,
    zero_absent,
)
from common.dataset.multiomics import MultiOmicsData
from common.schema import FeatureSchema

# ------------------------------------------------------------------ identifiers


def test_shipped_table_has_provenance_and_maps_symbols_and_entrez():
    table = shipped_gene_ids()
    assert len(table.rows) == 200
    with open(table.source, encoding="utf-8") as fh:
        head = fh.read(600)
    assert "Provenance" in head and "sha256" in head
    names, unmapped = canonical_names(["FOXA1_3169", "3169", "esr1", "NOT_A_GENE"], "entrez")
    assert names[:3] == ["3169", "3169", "2099"]
    assert unmapped == ["NOT_A_GENE"]
    names, _ = canonical_names(["FOXA1_3169", "2099"], "symbol")
    assert names == ["FOXA1", "ESR1"]


def test_ensembl_versions_are_dropped_and_mirna_names_unified(tmp_path):
    assert id_kind("ENSG00000141510.17") == "ensembl" and id_kind("hsa_mir_21") == "mirna"
    names, unmapped = canonical_names(["ENSG00000141510.17", "hsa_mir_21", "hsa-let-7a-1"],
                                      "ensembl")
    assert names == ["ENSG00000141510", "hsa-mir-21", "hsa-let-7a-1"] and unmapped == []
    path = tmp_path / "ids.tsv"
    path.write_text("# mine\nsymbol\tentrez\tensembl\nTP53\t7157\tENSG00000141510.17\n")
    table = GeneIdTable.read(path)
    assert canonical_names(["ENSG00000141510.5"], "symbol", table)[0] == ["TP53"]
    path.write_text("symbol\tentrez\tensembl\nTP53\tseven\t\n")
    with pytest.raises(ValueError, match=r"column 'entrez', row 2"):
        GeneIdTable.read(path)


# ------------------------------------------------------------------ consortium set


def test_consortium_features_majority_and_order_independent_of_sites():
    declared = {
        "b": {"mrna": ["g1", "g2", "g3"], "mirna": ["m1"]},
        "a": {"mrna": ["g2", "g1", "g4"]},
        "c": {"mrna": ["g1", "g2", "g3", "g5"]},
    }
    cons = consortium_features(declared)
    # a is first by name: its order, then features first seen at b and c.
    assert cons.features("mrna") == ("g2", "g1", "g3")  # g4, g5: 1 of 3 sites
    assert cons.features("mirna") == ("m1",)  # one holder: threshold 1
    assert consortium_features(dict(reversed(list(declared.items())))) == cons
    assert consortium_features(declared, min_sites=1).features("mrna") == (
        "g2", "g1", "g4", "g3", "g5")
    fmap = site_feature_map(cons, declared["a"])
    assert fmap.index["mrna"].tolist() == [0, 1, -1]
    assert fmap.mask("mirna").tolist() == [False]
    assert cons.record()["mrna"] == {"n_features": 3, "sites": ["a", "b", "c"], "min_sites": 2}


def test_duplicate_declared_names_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        consortium_features({"a": {"mrna": ["g", "g"]}})


def _data(features: list[str], x: np.ndarray, present: list[bool]) -> MultiOmicsData:
    schema = FeatureSchema.build({"mrna": features}, ["a", "b"])
    n = len(x)
    return MultiOmicsData(np.array([f"p{i}" for i in range(n)]), {"mrna": x.astype(np.float32)},
                          np.array(present)[:, None], np.zeros(n, dtype=np.int64), schema)


def test_harmonize_masks_lacking_features_and_stats_ignore_them():
    a = _data(["g1", "g2", "g3"], np.array([[1.0, 2, 3], [3, 4, 5]]), [True, True])
    b = _data(["g3", "g1"], np.array([[7.0, 9], [0, 0], [1, 3]]), [True, False, True])
    cons = consortium_features({"a": {"mrna": ["g1", "g2", "g3"]}, "b": {"mrna": ["g3", "g1"]}},
                               min_sites=1)
    hb = harmonize(b, cons)
    assert hb.feature_mask["mrna"].tolist() == [True, False, True]
    np.testing.assert_array_equal(hb.data.features["mrna"], [[9, 0, 7], [0, 0, 0], [3, 0, 1]])
    assert hb.data.mask[:, 0].tolist() == [True, False, True]
    # Statistics from a description (site order, per-modality count) equal the harmonized.
    direct = FeatureMoments.merge([FeatureMoments.of(harmonize(a, cons)), FeatureMoments.of(hb)])
    rows_b = b.features["mrna"][b.mask[:, 0]].astype(np.float64)
    described = FeatureMoments.merge([
        moments_in_consortium(cons, {"mrna": ["g1", "g2", "g3"]}, {"mrna": 2},
                              {"mrna": a.features["mrna"].sum(0)},
                              {"mrna": (a.features["mrna"].astype(np.float64) ** 2).sum(0)}),
        moments_in_consortium(cons, {"mrna": ["g3", "g1"]}, {"mrna": 2},
                              {"mrna": rows_b.sum(0)}, {"mrna": (rows_b**2).sum(0)}),
    ])
    for key in ("count", "total", "total_sq"):
        np.testing.assert_allclose(getattr(direct, key)["mrna"], getattr(described, key)["mrna"])
    assert direct.count["mrna"].tolist() == [4, 2, 4]
    mean, _ = direct.mean_std()["mrna"]
    np.testing.assert_allclose(mean, [(1 + 3 + 9 + 3) / 4, 3.0, (3 + 5 + 7 + 1) / 4])
    ready = standardize(hb, direct.mean_std())
    assert np.all(ready.data.features["mrna"][:, 1] == 0)
    # A site that receives only the setup's schema rebuilds the same feature set.
    same = ConsortiumFeatures.of_schema(cons.schema(["a", "b"]))
    assert harmonize(b, same).feature_mask["mrna"].tolist() == [True, False, True]
    scaled = hb.data.copy()
    scaled.features["mrna"] += 5
    zero_absent(scaled, hb.feature_mask)
    assert np.all(scaled.features["mrna"][:, 1] == 0)
