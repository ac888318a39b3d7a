"""Dataset file formats: GDC STAR counts, GDC miRNA, methylation betas, MAF, copy-number
segments, GEO series matrix, AnnData/MuData; the GDC sample sheet; per-modality QC.

Every file here is written by the test following the format's published layout.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from client.cli import app
from common.dataset import dataset_fingerprint, inspect_dataset, load_dataset, read_manifest
from common.dataset.formats.seg import gene_values

GENES = ["ENSG00000000003.15", "ENSG00000000005.6", "ENSG00000000419.13"]
NAMES = ["TSPAN6", "TNMD", "DPM1"]
STAR_HEADER = (
    "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t"
    "tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded"
)


def star_file(counts: list[float | str], tpm: list[float]) -> str:
    lines = ["# gene-model: GENCODE v36", STAR_HEADER]
    for key in ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"):
        lines.append(f"{key}\t\t\t1000\t1000\t1000\t\t\t")
    for g, nm, c, t in zip(GENES, NAMES, counts, tpm, strict=True):
        lines.append(f"{g}\t{nm}\tprotein_coding\t{c}\t0\t{c}\t{t}\t1.0\t{t * 2}")
    return "\n".join(lines) + "\n"


def sheet(rows: list[tuple[str, str, str, str]]) -> str:
    """A GDC sample sheet: (file id, file name, data type, sample id) per row."""
    head = ("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\t"
            "Sample Type")
    body = [
        f"{fid}\t{name}\tTranscriptome Profiling\t{dt}\tTCGA-BRCA\t{sid[:12]}\t{sid}\tPrimary Tumor"
        for fid, name, dt, sid in rows
    ]
    return "\n".join([head, *body]) + "\n"


SAMPLES = ["TCGA-A1-0001-01A", "TCGA-A1-0002-01A", "TCGA-B2-0003-01A"]
GEX = "Gene Expression Quantification"


def star_site(write_files, counts=None, extra: dict[str, str] | None = None) -> Path:
    counts = counts or [[10, 0, 5], [20, 1, 7], [30, 0, 9]]
    files = {"labels.csv": "patient_id,label\n" + "".join(
        f"{s},{lab}\n" for s, lab in zip(SAMPLES, ["LumA", "Basal", "LumA"], strict=True))}
    rows = []
    for i, (s, c) in enumerate(zip(SAMPLES, counts, strict=True)):
        name = f"f{i}.rna_seq.augmented_star_gene_counts.tsv"
        # GDC downloads keep each file in a folder named by its File ID.
        tpm = [float(x) + 0.5 if isinstance(x, int | float) else 1.0 for x in c]
        files[f"uuid{i}/{name}"] = star_file(c, tpm)
        rows.append((f"uuid{i}", name, GEX, s))
    files["gdc_sample_sheet.2024-01-01.tsv"] = sheet(rows)
    files.update(extra or {})
    return _write(write_files, files)


def _write(write_files, files: dict[str, str]) -> Path:
    flat = {k: v for k, v in files.items() if "/" not in k}
    d = write_files(flat)
    for k, v in files.items():
        if "/" in k:
            (d / k).parent.mkdir(parents=True, exist_ok=True)
            (d / k).write_text(v, encoding="utf-8")
    return d


def manifest(modalities: str, name: str = "t") -> str:
    return f'[dataset]\nname = "{name}"\n\n{modalities}'


def errors(report) -> list[str]:
    return [str(f) for f in report.errors]


# --------------------------------------------------------------------- GDC STAR counts


def test_gdc_directory_is_read_through_its_sample_sheet_without_a_manifest(write_files):
    d = star_site(write_files)
    man = read_manifest(d)
    assert man.chosen_by == "gdc-sample-sheet:gdc_sample_sheet.2024-01-01.tsv"
    data = load_dataset(d)
    assert data.modality_names == ["mrna"]
    assert data.schema.features("mrna") == tuple(GENES)  # N_ summary rows skipped
    assert list(data.patient_ids) == SAMPLES
    np.testing.assert_array_equal(data.features["mrna"][:, 0], [10, 20, 30])
    # Every per-sample file is fingerprinted, not just the sheet.
    fp = dataset_fingerprint(d)
    assert {f"uuid{i}/f{i}.rna_seq.augmented_star_gene_counts.tsv" for i in range(3)} <= set(fp)


def test_star_value_column_gene_names_and_id_trimming(write_files):
    d = star_site(write_files, extra={
        "labels.csv": "patient_id,label\nTCGA-A1-0001,x\nTCGA-A1-0002,y\nTCGA-B2-0003,x\n",
        "dataset.toml": manifest(
            '[modalities.mrna]\nfile = "gdc_sample_sheet.2024-01-01.tsv"\n'
            'format = "gdc-star-counts"\nvalue = "tpm_unstranded"\ngene_id = "gene_name"\n'
            "id_length = 12\n"),
    })
    data = load_dataset(d)
    assert data.schema.features("mrna") == tuple(NAMES)
    np.testing.assert_allclose(data.features["mrna"][:, 2], [5.5, 7.5, 9.5])
    assert data.patient_ids.tolist() == [s[:12] for s in SAMPLES]
    assert data.origin.record()["preprocessing"]["mrna"]["value"] == "tpm_unstranded"


def test_star_errors_name_the_file_column_and_line(write_files):
    d = star_site(write_files, counts=[[10, 0, 5], [20, "abc", 7], [30, 0, 9]])
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file == "uuid1/f1.rna_seq.augmented_star_gene_counts.tsv"
    assert f.column == "unstranded" and f.row == 8  # comment, header, 4 N_ rows, 2nd gene
    assert "non-numeric value 'abc'" in f.message


def test_sample_sheet_errors_name_the_sheet_line(write_files):
    d = star_site(write_files)
    (d / "uuid2" / "f2.rna_seq.augmented_star_gene_counts.tsv").unlink()
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.column, f.row) == ("gdc_sample_sheet.2024-01-01.tsv", "File Name", 4)
    assert "not found" in f.message


def test_star_file_without_the_value_column_is_an_error(write_files):
    d = star_site(write_files)
    p = d / "uuid0" / "f0.rna_seq.augmented_star_gene_counts.tsv"
    p.write_text(p.read_text().replace("tpm_unstranded", "tpm"), encoding="utf-8")
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mrna]\nfile = "gdc_sample_sheet.2024-01-01.tsv"\n'
        'format = "gdc-star-counts"\nvalue = "tpm_unstranded"\n'), encoding="utf-8")
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file.endswith("f0.rna_seq.augmented_star_gene_counts.tsv") and f.row == 2
    assert "tpm_unstranded" in f.message


# --------------------------------------------------------------------- QC


def test_qc_low_expression_filter_and_log_are_recorded_and_reported(write_files):
    d = star_site(write_files, extra={"dataset.toml": manifest(
        '[modalities.mrna]\nfile = "gdc_sample_sheet.2024-01-01.tsv"\n'
        'format = "gdc-star-counts"\n'
        'qc = { min_expression = 5, min_fraction = 0.5, log_transform = "log2p1" }\n')})
    data, report = inspect_dataset(d)
    # Gene 2 has counts 0, 1, 0: below 5 everywhere, dropped; the others are log2(x + 1).
    assert data.schema.features("mrna") == (GENES[0], GENES[2])
    np.testing.assert_allclose(data.features["mrna"][:, 0], np.log2([11, 21, 31]), rtol=1e-6)
    qc = report.modalities["mrna"]["preprocessing"]
    assert qc["features_read"] == 3 and qc["features_dropped_low_expression"] == 1
    assert data.origin.record()["preprocessing"]["mrna"]["log_transform"] == "log2p1"
    result = CliRunner().invoke(app, ["check", "--data", str(d)])
    assert result.exit_code == 0, result.output
    assert "Preprocessing" in result.output and "log2p1" in result.output
    assert "3 -> 2" in result.output


def beta_file(values: dict[str, str]) -> str:
    return "".join(f"{k}\t{v}\n" for k, v in values.items())


def beta_site(write_files, qc: str, second: dict[str, str]) -> Path:
    first = {"cg00000029": "0.5", "cg00000108": "0.2", "ch.2.1234F": "0.9"}
    files = {
        "labels.csv": f"patient_id,label\n{SAMPLES[0]},a\n{SAMPLES[1]},b\n",
        "s0.level3betas.txt": beta_file(first),
        "s1.level3betas.txt": beta_file(second),
        "gdc_sample_sheet.tsv": sheet([
            ("u0", "s0.level3betas.txt", "Methylation Beta Value", SAMPLES[0]),
            ("u1", "s1.level3betas.txt", "Methylation Beta Value", SAMPLES[1]),
        ]),
        "age.csv": f"patient_id,age\n{SAMPLES[0]},50\n{SAMPLES[1]},61\n",
        "dataset.toml": manifest(
            '[modalities.methylation]\nfile = "gdc_sample_sheet.tsv"\n'
            f'format = "methylation-beta"\nqc = {{ {qc} }}\n'
            '[modalities.age]\nfile = "age.csv"\n'),
    }
    return write_files(files)


def test_beta_to_m_values_and_missing_probe_dropped(write_files):
    d = beta_site(write_files, 'beta_to_m = true, missing = "drop-feature"',
                  {"cg00000029": "0.8", "cg00000108": "NA", "ch.2.1234F": "0.1"})
    data, report = inspect_dataset(d)
    assert report.ok, errors(report)
    assert data.schema.features("methylation") == ("cg00000029", "ch.2.1234F")
    np.testing.assert_allclose(data.features["methylation"][:, 0], [0.0, 2.0], atol=1e-6)
    assert report.modalities["methylation"]["preprocessing"]["features_dropped_missing"] == 1


def test_missing_beta_is_an_error_by_default_and_masks_with_mask_patient(write_files):
    second = {"cg00000029": "0.8", "cg00000108": "NA", "ch.2.1234F": "0.1"}
    d = beta_site(write_files, "", second)
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.column, f.row) == ("gdc_sample_sheet.tsv", "cg00000108", 3)
    d2 = beta_site(write_files, 'missing = "mask-patient"', second)
    data, report = inspect_dataset(d2)
    assert report.ok and data.mask[:, 0].tolist() == [True, False]


def test_bad_probe_id_and_out_of_range_beta(write_files):
    d = beta_site(write_files, "", {"cg00000029": "1.7", "cg00000108": "0.1", "XYZ": "0.1"})
    _, report = inspect_dataset(d)
    found = {(f.file, f.column, f.row, f.message.split(":")[0]) for f in report.errors}
    assert ("s1.level3betas.txt", "#1", 3, "not a 450k/EPIC probe id") in found
    assert any(f.row == 1 and "outside [0, 1]" in f.message for f in report.errors)


def test_qc_settings_are_validated_in_the_manifest(write_files):
    d = beta_site(write_files, 'missing = "impute"', {"cg00000029": "0.5"})
    _, report = inspect_dataset(d)
    assert "qc.missing must be one of" in errors(report)[0]


# --------------------------------------------------------------------- GDC miRNA


def test_gdc_mirna_quantification(write_files):
    head = "miRNA_ID\tread_count\treads_per_million_miRNA_mapped\tcross-mapped\n"
    files = {
        "labels.csv": f"patient_id,label\n{SAMPLES[0]},a\n{SAMPLES[1]},b\n",
        "m0.txt": head + "hsa-let-7a-1\t100\t2000.5\tN\nhsa-mir-21\t50\t1000.25\tY\n",
        "m1.txt": head + "hsa-let-7a-1\t10\t200.5\tN\nhsa-mir-21\t5\t100.25\tN\n",
        "gdc_sample_sheet.tsv": sheet([
            ("u0", "m0.txt", "miRNA Expression Quantification", SAMPLES[0]),
            ("u1", "m1.txt", "miRNA Expression Quantification", SAMPLES[1])]),
    }
    d = write_files(files)
    data = load_dataset(d)
    assert data.modality_names == ["mirna"]
    np.testing.assert_allclose(data.features["mirna"][:, 1], [1000.25, 100.25])
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mirna]\nfile = "gdc_sample_sheet.tsv"\nformat = "gdc-mirna"\n'
        'value = "read_count"\n'), encoding="utf-8")
    np.testing.assert_allclose(load_dataset(d).features["mirna"][:, 0], [100, 10])


# --------------------------------------------------------------------- MAF


MAF_HEAD = (
    "#version 2.4\nHugo_Symbol\tEntrez_Gene_Id\tCenter\tNCBI_Build\tChromosome\t"
    "Start_Position\tEnd_Position\tVariant_Classification\tVariant_Type\t"
    "Tumor_Sample_Barcode\n"
)


def maf_row(gene: str, vclass: str, sample: str) -> str:
    return f"{gene}\t0\tBI\tGRCh38\tchr17\t1\t2\t{vclass}\tSNP\t{sample}\n"


def test_maf_to_gene_level_mutation_indicators(write_files):
    maf = MAF_HEAD + maf_row("TP53", "Missense_Mutation", "S1") + maf_row(
        "PIK3CA", "Silent", "S1") + maf_row("PIK3CA", "Nonsense_Mutation", "S2") + maf_row(
        "GATA3", "Silent", "S3")
    d = write_files({
        "muts.maf": maf,
        "labels.csv": "patient_id,label\nS1,a\nS2,b\nS3,a\nS4,b\n",
        "rna.csv": "patient_id,g\nS1,1\nS2,2\nS3,3\nS4,4\n",
        "dataset.toml": manifest(
            'label_names = ["a", "b"]\n[modalities]\nrna = "rna.csv"\n'
            'mutation = { file = "muts.maf", format = "maf" }\n'),
    })
    data, report = inspect_dataset(d)
    assert report.ok, errors(report)
    assert data.schema.features("mutation") == ("PIK3CA", "TP53")
    np.testing.assert_array_equal(data.features["mutation"], [[0, 1], [1, 0], [0, 0], [0, 0]])
    # S3 has only a silent mutation: present with zeros; S4 is in no MAF: masked.
    assert data.mask[:, 1].tolist() == [True, True, True, False]


def test_maf_without_sample_column_names_the_header_line(write_files):
    d = write_files({
        "muts.maf": "#version 2.4\nHugo_Symbol\tVariant_Classification\nTP53\tSilent\n",
        "labels.csv": "patient_id,label\nS1,a\n",
        "dataset.toml": manifest('[modalities.mutation]\nfile = "muts.maf"\nformat = "maf"\n'),
    })
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.row) == ("muts.maf", 2) and "Tumor_Sample_Barcode" in f.message


# --------------------------------------------------------------------- segments


GENE_COORDS = "gene\tchromosome\tstart\tend\nA\tchr1\t100\t199\nB\tchr1\t300\t399\nC\tchr2\t1\t50\n"


def test_segments_to_gene_values_weighted_by_overlap(write_files):
    seg = (
        "GDC_Aliquot\tChromosome\tStart\tEnd\tNum_Probes\tSegment_Mean\n"
        "S1\tchr1\t1\t149\t10\t1.0\n"
        "S1\tchr1\t150\t1000\t10\t-1.0\n"
        "S2\t1\t1\t1000\t10\t0.5\n"
    )
    d = write_files({
        "cn.seg": seg, "genes.tsv": GENE_COORDS,
        "labels.csv": "patient_id,label\nS1,a\nS2,b\n",
        "dataset.toml": manifest(
            '[modalities.cnv]\nfile = "cn.seg"\nformat = "seg"\ngene_coordinates = "genes.tsv"\n'
            'qc = { missing = "drop-feature" }\n'),
    })
    data, report = inspect_dataset(d)
    assert report.ok, errors(report)
    # Gene C (chr2) has no segment: a missing value, dropped by the policy.
    assert data.schema.features("cnv") == ("A", "B")
    np.testing.assert_allclose(data.features["cnv"], [[0.0, -1.0], [0.5, 0.5]])


def test_gene_values_nan_without_overlap():
    import pandas as pd

    seg = pd.DataFrame({"chrom": ["1"], "start": [1.0], "end": [10.0], "value": [2.0]})
    genes = pd.DataFrame({"gene": ["x", "y"], "chrom": ["1", "1"], "start": [5.0, 50.0],
                          "end": [14.0, 60.0]})
    out = gene_values(seg, genes)
    assert out[0] == 2.0 and np.isnan(out[1])


def test_seg_needs_gene_coordinates(write_files):
    toml = manifest('[modalities.cnv]\nfile = "cn.seg"\nformat = "seg"\n')
    d = write_files({"labels.csv": "patient_id,label\nS1,a\n", "cn.seg": "x\n",
                     "dataset.toml": toml})
    _, report = inspect_dataset(d)
    assert "needs gene_coordinates" in errors(report)[0]


# --------------------------------------------------------------------- GEO


def geo_text(values: list[list[str]]) -> str:
    return "".join([
        '!Series_title\t"A study"\n',
        '!Series_geo_accession\t"GSE1"\n',
        '!Sample_title\t"patient one"\t"patient two"\n',
        '!Sample_geo_accession\t"GSM11"\t"GSM12"\n',
        '!Sample_characteristics_ch1\t"subtype: a"\t"subtype: b"\n',
        "!series_matrix_table_begin\n",
        '"ID_REF"\t"GSM11"\t"GSM12"\n',
        *[f'"{p}"\t{a}\t{b}\n' for p, a, b in values],
        "!series_matrix_table_end\n",
    ])


def test_geo_series_matrix_transposed_and_gzipped(write_files):
    d = write_files({"labels.csv": "patient_id,label\nGSM11,a\nGSM12,b\n"})
    with gzip.open(d / "GSE1_series_matrix.txt.gz", "wt") as fh:
        fh.write(geo_text([["1007_s_at", "7.5", "8.25"], ["1053_at", "3", "null"]]))
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mrna]\nfile = "GSE1_series_matrix.txt.gz"\nformat = "geo-series-matrix"\n'
        'qc = { missing = "drop-feature" }\n'), encoding="utf-8")
    data, report = inspect_dataset(d)
    assert report.ok, errors(report)
    assert data.schema.features("mrna") == ("1007_s_at",)
    np.testing.assert_allclose(data.features["mrna"][:, 0], [7.5, 8.25])


def test_geo_errors_and_sample_id_line(write_files):
    d = write_files({
        "labels.csv": "patient_id,label\npatient one,a\npatient two,b\n",
        "s.txt": geo_text([["p1", "1", "x"], ["p2", "2", "3"]]),
        "dataset.toml": manifest(
            '[modalities.mrna]\nfile = "s.txt"\nformat = "geo-series-matrix"\n'
            'sample_id = "!Sample_title"\n'),
    })
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.column, f.row) == ("s.txt", "GSM12", 8) and "'x'" in f.message
    (d / "s.txt").write_text(geo_text([["p1", "1", "2"]]), encoding="utf-8")
    data = load_dataset(d)
    assert data.patient_ids.tolist() == ["patient one", "patient two"]


# --------------------------------------------------------------------- AnnData / MuData


def anndata(obs: list[str], var: list[str], x, **layers):
    """An AnnData object (written by the tests with anndata's own writer)."""
    import anndata as ad
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        return ad.AnnData(X=x, obs=pd.DataFrame(index=obs), var=pd.DataFrame(index=var),
                          layers=layers)


def write_mudata(path: Path, mods: dict) -> None:
    import mudata

    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        mudata.MuData(mods).write(path)


X = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]], dtype=np.float32)
H5AD = manifest('[modalities.mrna]\nfile = "x.h5ad"\nformat = "h5ad"\n')


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_h5ad_dense_and_sparse(write_files, kind):
    from scipy import sparse

    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": H5AD})
    x = {"dense": X, "csr": sparse.csr_matrix(X), "csc": sparse.csc_matrix(X)}[kind]
    anndata(["P1", "P2"], ["g1", "g2", "g3"], x).write_h5ad(d / "x.h5ad")
    data = load_dataset(d)
    assert data.patient_ids.tolist() == ["P1", "P2"]
    assert data.schema.features("mrna") == ("g1", "g2", "g3")
    np.testing.assert_array_equal(data.features["mrna"], X)


def test_h5ad_layer_is_read_instead_of_x(write_files):
    from scipy import sparse

    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": manifest(
        '[modalities.mrna]\nfile = "x.h5ad"\nformat = "h5ad"\nlayer = "counts"\n')})
    anndata(["P1", "P2"], ["g1", "g2", "g3"], X,
            counts=sparse.csr_matrix(X * 10)).write_h5ad(d / "x.h5ad")
    data, report = inspect_dataset(d)
    np.testing.assert_array_equal(data.features["mrna"], X * 10)
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mrna]\nfile = "x.h5ad"\nformat = "h5ad"\nlayer = "tpm"\n'),
        encoding="utf-8")
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file == "x.h5ad" and "no layer layers/tpm; layers: 'counts'" in f.message


def test_h5mu_modality_and_layer(write_files):
    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": manifest(
        '[modalities.rna]\nfile = "x.h5mu"\nformat = "h5mu"\nmodality = "rna"\nlayer = "counts"\n'
        '[modalities.prot]\nfile = "x.h5mu"\nformat = "h5mu"\nmodality = "prot"\n')})
    write_mudata(d / "x.h5mu", {
        "rna": anndata(["P1", "P2"], ["g1", "g2", "g3"], X, counts=X * 10),
        "prot": anndata(["P2"], ["CD4"], np.array([[5.0]])),
    })
    data = load_dataset(d)
    np.testing.assert_array_equal(data.features["rna"], X * 10)
    assert data.schema.features("prot") == ("CD4",)
    assert data.mask[:, 1].tolist() == [False, True]
    for mod, expected in (('modality = "atac"', "no modality mod/atac; modalities: 'rna', 'prot'"),
                          ('modality = "prot"\nlayer = "counts"',
                           "no layer mod/prot/layers/counts")):
        (d / "dataset.toml").write_text(manifest(
            f'[modalities.rna]\nfile = "x.h5mu"\nformat = "h5mu"\n{mod}\n'), encoding="utf-8")
        _, report = inspect_dataset(d)
        (f,) = report.errors
        assert f.file == "x.h5mu" and expected in f.message


def test_h5ad_duplicate_names_and_infinite_values_name_file_column_and_row(write_files):
    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\nP3,a\n", "dataset.toml": H5AD})
    anndata(["P1", "P2", "P1"], ["g1", "g2", "g1"], np.ones((3, 3))).write_h5ad(d / "x.h5ad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = inspect_dataset(d)
    assert [str(w.message) for w in caught] == []
    found = {(f.file, f.column, f.row) for f in report.errors}
    assert found == {("x.h5ad", "obs", 3), ("x.h5ad", "var", 3)}
    text = " ".join(errors(report))
    assert "duplicate obs name 'P1'" in text and "duplicate var name 'g1'" in text
    x = np.ones((3, 2))
    x[1, 1] = np.inf
    anndata(["P1", "P2", "P3"], ["g1", "g2"], x).write_h5ad(d / "x.h5ad")
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.column, f.row) == ("x.h5ad", "g2", 2) and "infinite" in f.message


def test_h5mu_read_prints_no_scverse_warnings(write_files):
    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": manifest(
        '[modalities.rna]\nfile = "x.h5mu"\nformat = "h5mu"\nmodality = "rna"\n')})
    write_mudata(d / "x.h5mu", {"rna": anndata(["P1", "P2"], ["g1", "g1", "g3"], X)})
    (d / "wrong.toml").write_text(manifest(
        '[modalities.rna]\nfile = "x.h5mu"\nformat = "h5mu"\nmodality = "atac"\n'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = inspect_dataset(d)
        assert "duplicate var name 'g1'" in errors(report)[0]
        (d / "wrong.toml").replace(d / "dataset.toml")
        _, report = inspect_dataset(d)
        assert "no modality mod/atac; modalities: 'rna'" in errors(report)[0]
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("fmt", ["h5ad", "h5mu"])
def test_unreadable_file_is_a_finding_naming_it(write_files, fmt):
    opts = 'modality = "rna"\n' if fmt == "h5mu" else ""
    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": manifest(
        f'[modalities.rna]\nfile = "x.{fmt}"\nformat = "{fmt}"\n{opts}'), f"x.{fmt}": "text"})
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file == f"x.{fmt}" and "cannot read the file as" in f.message
    assert "file signature not found" in f.message
    # A file cut short in transfer: valid header, data missing.
    if fmt == "h5mu":
        write_mudata(d / "x.h5mu", {"rna": anndata(["P1", "P2"], ["g1", "g2", "g3"], X)})
    else:
        anndata(["P1", "P2"], ["g1", "g2", "g3"], X).write_h5ad(d / "x.h5ad")
    whole = (d / f"x.{fmt}").read_bytes()
    (d / f"x.{fmt}").write_bytes(whole[: len(whole) // 2])
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file == f"x.{fmt}" and "cannot read the file as" in f.message


def test_h5ad_named_as_h5mu_says_so(write_files):
    d = write_files({"labels.csv": "patient_id,label\nP1,a\nP2,b\n", "dataset.toml": manifest(
        '[modalities.rna]\nfile = "x.h5ad"\nformat = "h5mu"\nmodality = "rna"\n')})
    anndata(["P1", "P2"], ["g1", "g2", "g3"], X).write_h5ad(d / "x.h5ad")
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert f.file == "x.h5ad" and "holds no MuData modalities" in f.message


# --------------------------------------------------------------------- manifests


def test_format_keys_are_checked_against_the_format(write_files):
    d = write_files({"labels.csv": "patient_id,label\nP1,a\n", "dataset.toml": manifest(
        '[modalities.mrna]\nfile = "x.h5ad"\nformat = "h5ad"\nvalue = "tpm_unstranded"\n')})
    _, report = inspect_dataset(d)
    assert "do not apply to format 'h5ad'" in errors(report)[0]
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mrna]\nfile = "s.tsv"\nformat = "gdc-star-counts"\nvalue = "fpkm"\n'),
        encoding="utf-8")
    _, report = inspect_dataset(d)
    assert "bad value 'fpkm' for value" in errors(report)[0]
    (d / "dataset.toml").write_text(manifest(
        '[modalities.mrna]\nfile = "x.bam"\nformat = "bam"\n'), encoding="utf-8")
    _, report = inspect_dataset(d)
    assert "unknown format 'bam'" in errors(report)[0]


def test_a_csv_with_qc_records_it_in_the_origin(write_files):
    d = write_files({
        "labels.csv": "patient_id,label\nP1,a\nP2,b\n",
        "rna.csv": "patient_id,g1,g2\nP1,1,\nP2,3,4\n",
        "dataset.toml": manifest(
            '[modalities.rna]\nfile = "rna.csv"\nqc = { missing = "drop-feature", '
            'log_transform = "log2p1" }\n'),
    })
    data = load_dataset(d)
    assert data.schema.features("rna") == ("g1",)
    np.testing.assert_allclose(data.features["rna"][:, 0], [1.0, 2.0])
    rec = json.loads(json.dumps(data.origin.record()))
    assert rec["preprocessing"]["rna"]["features_dropped_missing"] == 1


def test_one_sheet_with_two_data_types_gives_two_modalities(write_files):
    head = "miRNA_ID\tread_count\treads_per_million_miRNA_mapped\tcross-mapped\n"
    d = star_site(write_files)
    rows = [(f"m{i}", f"m{i}.txt", "miRNA Expression Quantification", s)
            for i, s in enumerate(SAMPLES[:2])]
    for i in range(2):
        (d / f"m{i}.txt").write_text(head + f"hsa-mir-21\t{i}\t{i * 2.5}\tN\n")
    sheet_path = d / "gdc_sample_sheet.2024-01-01.tsv"
    sheet_path.write_text(sheet_path.read_text() + sheet(rows).split("\n", 1)[1])
    data = load_dataset(d)
    assert data.modality_names == ["mrna", "mirna"]
    assert data.mask.tolist() == [[True, True], [True, True], [True, False]]


def test_geo_ragged_row_is_named(write_files):
    text = geo_text([["p1", "1", "2"]]).replace('"p1"\t1\t2\n', '"p1"\t1\n')
    d = write_files({"labels.csv": "patient_id,label\nGSM11,a\nGSM12,b\n", "s.txt": text,
                     "dataset.toml": manifest(
                         '[modalities.m]\nfile = "s.txt"\nformat = "geo-series-matrix"\n')})
    _, report = inspect_dataset(d)
    (f,) = report.errors
    assert (f.file, f.row) == ("s.txt", 8) and "2 cells, the header has 3" in f.message
