"""Feature harmonization: gene identifier mapping, the consortium feature set from
declared names, per-site maps and masks, and a two-site federation where one site
holds STAR TSV files and the other an ``.h5ad`` lacking 10 % of the genes."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch
from test_formats import GEX, STAR_HEADER, sheet, write_anndata

from common.config import ModelConfig, TrainConfig
from common.dataset import load_dataset
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
from common.model import ModelSpec, build_model
from common.schema import FeatureSchema
from common.training import make_loader, make_optimizer, predict_proba, train_epochs

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


# ------------------------------------------------------------------ two formats, one model

N_GENES = 20
LABELS = ["LumA", "Basal"]


def _cohort(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts whose first 6 genes differ by class."""
    y = rng.integers(0, 2, n)
    base = rng.gamma(5.0, 20.0, size=(n, N_GENES))
    base[:, :6] *= np.where(y[:, None] == 1, 4.0, 0.25)
    return np.round(base), y


def _star_site(root, genes, counts, y):
    d = root / "star_site"
    d.mkdir()
    rows, labels = [], ["patient_id,label"]
    for i, c in enumerate(counts):
        sample = f"TCGA-AA-{i:04d}-01A"
        lines = ["# gene-model: GENCODE v36", STAR_HEADER,
                 "N_unmapped\t\t\t9\t9\t9\t\t\t", "N_ambiguous\t\t\t9\t9\t9\t\t\t"]
        lines += [f"{g}\tG{j}\tprotein_coding\t{int(v)}\t0\t0\t1\t1\t1"
                  for j, (g, v) in enumerate(zip(genes, c, strict=True))]
        (d / f"s{i}.tsv").write_text("\n".join(lines) + "\n")
        rows.append((f"id{i}", f"s{i}.tsv", GEX, sample))
        labels.append(f"{sample},{LABELS[y[i]]}")
    (d / "gdc_sample_sheet.tsv").write_text(sheet(rows))
    (d / "labels.csv").write_text("\n".join(labels) + "\n")
    (d / "dataset.toml").write_text(
        '[dataset]\nname = "a"\nlabel_names = ["LumA", "Basal"]\n[modalities.mrna]\n'
        'file = "gdc_sample_sheet.tsv"\nformat = "gdc-star-counts"\n'
        'qc = { log_transform = "log2p1" }\n')
    return d


def _h5ad_site(root, genes, counts, y):
    d = root / "h5ad_site"
    d.mkdir()
    ids = [f"P{i}" for i in range(len(y))]
    with h5py.File(d / "cohort.h5ad", "w") as f:
        write_anndata(f, ids, genes, counts.astype(np.float32), sparse=True)
    (d / "labels.csv").write_text(
        "patient_id,label\n" + "".join(f"{p},{LABELS[k]}\n" for p, k in zip(ids, y, strict=True)))
    (d / "dataset.toml").write_text(
        '[dataset]\nname = "b"\nlabel_names = ["LumA", "Basal"]\nsite_pattern = ""\n'
        '[modalities.mrna]\nfile = "cohort.h5ad"\nformat = "h5ad"\n'
        'qc = { log_transform = "log2p1" }\n')
    return d


def _fedavg(states: list[dict], weights: list[int]) -> dict:
    total = sum(weights)
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights, strict=True))
            for k in states[0]}


@pytest.mark.e2e
def test_two_sites_star_and_h5ad_one_lacking_genes_train_one_model(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    genes = [f"ENSG{j:011d}.{j % 3 + 1}" for j in range(N_GENES)]
    counts_a, y_a = _cohort(rng, 60)
    counts_b, y_b = _cohort(rng, 60)
    lacking = [7, 13]  # site B's pipeline lacks 10 % of the genes
    genes_b = [g.split(".")[0] for j, g in enumerate(genes) if j not in lacking]  # unversioned
    site_a = _star_site(tmp_path, genes, counts_a, y_a)
    site_b = _h5ad_site(tmp_path, genes_b, np.delete(counts_b, lacking, axis=1), y_b)
    data = {"a": load_dataset(site_a), "b": load_dataset(site_b)}
    assert data["a"].origin.record()["preprocessing"]["mrna"]["format"] == "gdc-star-counts"
    assert data["b"].origin.record()["preprocessing"]["mrna"]["format"] == "h5ad"

    # Each site declares canonical names only; the coordinator fixes the set.
    declared = {}
    for s, d in data.items():
        names, unmapped = canonical_names(list(d.schema.features("mrna")), "ensembl")
        assert unmapped == []
        declared[s] = {"mrna": names}
    cons = consortium_features(declared, min_sites=1)
    assert len(cons.features("mrna")) == N_GENES
    harmonized = {}
    for s, d in data.items():
        # The map points into the site's own columns (canonical names keep its order).
        harmonized[s] = harmonize(d, cons, site_feature_map(cons, declared[s]))
    assert harmonized["b"].feature_mask["mrna"].sum() == N_GENES - len(lacking)
    assert not harmonized["b"].feature_mask["mrna"][lacking].any()

    moments = FeatureMoments.merge([FeatureMoments.of(h) for h in harmonized.values()])
    assert moments.count["mrna"][lacking].tolist() == [60, 60]  # site A's patients only
    stats = moments.mean_std()
    ready = {s: standardize(h, stats) for s, h in harmonized.items()}
    # Masked, not imputed: the lacking genes are exactly 0 at site B.
    assert np.all(ready["b"].data.features["mrna"][:, lacking] == 0)

    schema = cons.schema(LABELS)
    cfg = TrainConfig(batch_size=16, lr=3e-3, max_epochs=1, amp=False, device="cpu")
    global_model = build_model(ModelSpec.for_schema(ModelConfig.for_local_dp(), schema))
    train = {s: r.data.subset(np.arange(40)) for s, r in ready.items()}
    test = {s: r.data.subset(np.arange(40, 60)) for s, r in ready.items()}
    for rnd in range(8):
        states, sizes = [], []
        for s in ("a", "b"):
            local = copy.deepcopy(global_model)
            opt = make_optimizer(local, cfg)
            loader = make_loader(train[s], cfg.batch_size, shuffle=True, seed=rnd)
            train_epochs(local, loader, opt, cfg, epochs=2, class_weight=np.ones(2))
            states.append(local.state_dict())
            sizes.append(train[s].n)
        global_model.load_state_dict(_fedavg(states, sizes))
    for s in ("a", "b"):
        acc = float((predict_proba(global_model, test[s]).argmax(1) == test[s].labels).mean())
        assert acc >= 0.8, (s, acc)
