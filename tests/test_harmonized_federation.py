"""A federation through Flower's simulation engine where two hospitals hold the same
modality in different file formats (GDC STAR TSVs at one, AnnData ``.h5ad`` at the other)
under different gene naming (symbols / ``SYMBOL_Entrez``), and one lacks 10 % of the genes.

Files are written by the test following the formats' published layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from flwr.app import Context
from scipy import sparse

from common.config import ModelConfig, RunConfig
from common.dataset.harmonization import shipped_gene_ids

pytestmark = pytest.mark.e2e

N_GENES, N_LACKING, PATIENTS = 40, 4, 30
LABELS = ("A", "B")
STAR_HEADER = ("gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t"
               "tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded")


def _genes() -> list[tuple[str, str, str]]:
    """(symbol, Entrez id, Ensembl id) of the first fully known genes of the shipped table."""
    return [row for row in shipped_gene_ids().rows if all(row)][:N_GENES]


def _cohort(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Expression (patients x genes, positive) and labels: class B is up on 10 genes."""
    rng = np.random.default_rng(seed)
    y = np.arange(PATIENTS) % 2
    x = rng.lognormal(2.0, 0.3, size=(PATIENTS, N_GENES))
    x[:, :10] *= np.where(y == 1, 3.0, 1.0)[:, None]
    return x, y


def _manifest(name: str, table: str) -> str:
    labels = ", ".join(f'"{c}"' for c in LABELS)
    return f'[dataset]\nname = "{name}"\nlabel_names = [{labels}]\n\n[modalities.mrna]\n{table}'


def _star_hospital(root: Path) -> Path:
    """GDC download layout: sample sheet + ``<File ID>/<File Name>``; genes named by
    versioned Ensembl ids (the reader's default)."""
    d = root / "star"
    d.mkdir()
    x, y = _cohort(1)
    sheet = ["File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\t"
             "Sample Type"]
    labels = ["patient_id,label"]
    for i in range(PATIENTS):
        sample, name = f"TCGA-S1-{i:04d}-01A", f"f{i}.rna_seq.augmented_star_gene_counts.tsv"
        lines = ["# gene-model: GENCODE v36", STAR_HEADER]
        lines += [f"{k}\t\t\t1000\t1000\t1000\t\t\t" for k in
                  ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")]
        lines += [f"{ens}.7\t{sym}\tprotein_coding\t{int(v * 10)}\t0\t0\t{v:.4f}\t1.0\t1.0"
                  for (sym, _, ens), v in zip(_genes(), x[i], strict=True)]
        (d / f"uuid{i}").mkdir()
        (d / f"uuid{i}" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        sheet.append(f"uuid{i}\t{name}\tTranscriptome Profiling\tGene Expression Quantification"
                     f"\tTCGA-BRCA\t{sample[:12]}\t{sample}\tPrimary Tumor")
        labels.append(f"{sample},{LABELS[y[i]]}")
    (d / "gdc_sample_sheet.tsv").write_text("\n".join(sheet) + "\n", encoding="utf-8")
    (d / "labels.csv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (d / "dataset.toml").write_text(_manifest("star", (
        'file = "gdc_sample_sheet.tsv"\nformat = "gdc-star-counts"\n'
        'value = "tpm_unstranded"\n')), encoding="utf-8")
    return d


def _h5ad_hospital(root: Path) -> Path:
    """An AnnData file written by anndata; genes named ``SYMBOL_Entrez``; the last 10 %
    absent; X sparse (as single-cell pipelines store it), raw counts in a layer."""
    d = root / "h5ad"
    d.mkdir()
    x, y = _cohort(2)
    keep = N_GENES - N_LACKING
    obs = [f"P{i:03d}" for i in range(PATIENTS)]
    var = [f"{s}_{e}" for s, e, _ in _genes()[:keep]]
    tpm = x[:, :keep].astype(np.float32)
    anndata.AnnData(X=sparse.csr_matrix(tpm), obs=pd.DataFrame(index=obs),
                    var=pd.DataFrame(index=var),
                    layers={"counts": np.round(tpm * 10)}).write_h5ad(d / "cohort.h5ad")
    (d / "labels.csv").write_text("patient_id,label\n" + "".join(
        f"{p},{LABELS[c]}\n" for p, c in zip(obs, y, strict=True)), encoding="utf-8")
    (d / "dataset.toml").write_text(_manifest("h5ad", 'file = "cohort.h5ad"\nformat = "h5ad"\n'),
                                    encoding="utf-8")
    return d


def _hospital_files(dirs: list[str]):
    """The simulation engine numbers its nodes; each node here reads one hospital's files."""

    def mod(msg, ctx: Context, call_next):
        pid = int(ctx.node_config["partition-id"])
        own = Context(run_id=ctx.run_id, node_id=ctx.node_id, state=ctx.state,
                      run_config=ctx.run_config,
                      node_config={"data-dir": dirs[pid], "site-name": Path(dirs[pid]).name})
        return call_next(msg, own)

    return mod


@pytest.fixture(scope="module")
def harmonized_run(tmp_path_factory):
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from common.config import offline_flower_env
    from server.app import run_server
    from simulations.runner import _backend_config

    root = tmp_path_factory.mktemp("harmonized")
    dirs = [_star_hospital(root), _h5ad_hospital(root)]
    cfg = RunConfig.preset(
        "none", data="", rounds=3, local_epochs=2, seed=0, out=str(root / "run"),
        val_fraction=0.2, model=ModelConfig(d_model=16, n_heads=2, n_layers=1,
                                            tokens_per_modality=2),
    )
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, "harmonized-test")

    offline_flower_env()
    run_simulation(server_app=server,
                   client_app=build_client_app(cfg.to_flower(),
                                               mods=[_hospital_files([str(d) for d in dirs])]),
                   num_supernodes=2, backend_config=_backend_config())
    return Path(cfg.out), dirs


def test_sites_in_different_formats_train_one_model_on_the_union_of_genes(harmonized_run):
    from common.bundle import load_bundle

    run_dir, _ = harmonized_run
    bundle = load_bundle(run_dir / "model")
    # Canonical symbols: STAR's Ensembl ids and SYMBOL_Entrez names meet on one namespace;
    # a gene one of two sites holds is kept (majority of the holders).
    assert list(bundle.schema.features("mrna")) == [s for s, _, _ in _genes()]
    sites = {s["site"]: s for s in json.loads((run_dir / "metrics.json").read_text())["sites"]}
    assert sites["star"]["features"]["mrna"] == {"features": N_GENES, "present": N_GENES}
    assert sites["h5ad"]["features"]["mrna"] == {"features": N_GENES,
                                                 "present": N_GENES - N_LACKING}


def test_the_global_model_predicts_for_both_sites_with_the_lacking_genes_masked(
        harmonized_run):
    import torch

    from common.bundle import load_bundle
    from common.consortium_features import site_input
    from common.dataset import load_dataset
    from common.training import predict_proba

    run_dir, dirs = harmonized_run
    bundle = load_bundle(run_dir / "model")
    lacking = slice(N_GENES - N_LACKING, N_GENES)
    torch.manual_seed(0)
    correct, total = 0, 0
    for d in dirs:
        data = load_dataset(d)
        site = site_input(data, bundle.schema, bundle.standardizer)
        x = site.data.features["mrna"]
        if d.name == "h5ad":
            assert not site.feature_mask["mrna"][lacking].any()
            assert np.all(x[:, lacking] == 0.0)  # masked, not imputed from the STAR site
        else:
            assert site.feature_mask["mrna"].all()
            assert np.all(np.abs(x[:, lacking]).sum(axis=0) > 0)
        proba = predict_proba(bundle.build_model(), site.data)
        assert proba.shape == (data.n, 2) and np.allclose(proba.sum(axis=1), 1.0)
        correct += int((proba.argmax(axis=1) == site.data.labels).sum())
        total += data.n
    assert correct / total >= 0.8


def test_the_lacking_genes_reach_the_model_as_masked_features(harmonized_run):
    """Only the genes one site lacks were ever masked in training: their absent-feature
    embeddings learned (they start at zero), every other gene's stayed exactly zero; and
    the global model reads that site's mask when it predicts."""
    from common.bundle import load_bundle
    from common.consortium_features import site_input
    from common.dataset import load_dataset
    from common.model import accepts_feature_mask
    from common.training import predict_proba, tensors

    run_dir, dirs = harmonized_run
    bundle = load_bundle(run_dir / "model")
    model = bundle.build_model()
    assert accepts_feature_mask(model)
    learned = bundle.state_dict["absent.0.embedding.weight"].abs().sum(dim=0).numpy()
    assert (learned[N_GENES - N_LACKING:] > 0).all()
    assert not learned[:N_GENES - N_LACKING].any()
    site = site_input(load_dataset(dirs[1]), bundle.schema, bundle.standardizer).data
    assert site.feature_mask is not None
    mask = tensors(site)[1].numpy()
    assert mask.shape == (site.n, 1 + N_GENES)
    assert not mask[:, 1 + N_GENES - N_LACKING:].any() and mask[:, 1:1 + N_GENES - N_LACKING].all()
    unmasked = site.copy()
    unmasked.feature_mask = None
    assert not np.allclose(predict_proba(model, site), predict_proba(model, unmasked), atol=1e-6)
