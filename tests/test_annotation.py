"""Genomic coordinates of feature names, from the shipped gene table."""

from __future__ import annotations

from common.annotation import CHROMOSOMES, annotate, candidate_names, genome_order, locate


def test_names_in_each_notation_find_their_gene():
    foxa1 = locate("FOXA1")
    assert foxa1 is not None and foxa1.chromosome == "chr14"
    assert locate("FOXA1_3169") == foxa1  # SYMBOL_EntrezID
    mir21 = locate("hsa-mir-21")
    assert mir21 is not None and mir21.chromosome == "chr17"
    assert locate("hsa_mir_21") == locate("hsa-miR-21-5p") == mir21
    assert locate("hsa-let-7b") is not None


def test_ensembl_ids_with_or_without_version_find_their_gene():
    foxa1 = locate("FOXA1")
    assert locate("ENSG00000129514") == locate("ENSG00000129514.9") == foxa1
    assert locate("ENSG99999999999") is None


def test_unknown_features_are_flagged_not_guessed():
    assert annotate(["cg00095526", "ENSG99999999999.1", "years_to_birth"]) == [None] * 3
    # A numbered copy never runs into another gene's number (MIR151 + 1 is not MIR1511).
    assert "MIR1511" not in candidate_names("hsa-mir-151")


def test_genome_order_sorts_by_chromosome_then_position_unknowns_last():
    names = ["ESR1", "cg1", "TP53", "GAPDH", "ERBB2", "FOXA1", "BRCA1", "unknown_x", "XIST"]
    order = genome_order(names)
    located = [locate(names[i]) for i in order]
    known = [loc for loc in located if loc is not None]
    keys = [(CHROMOSOMES.index(loc.chromosome), loc.position) for loc in known]
    assert keys == sorted(keys) and len(known) == 7
    assert [names[i] for i in order[-2:]] == ["cg1", "unknown_x"]
    # chr6, chr12, chr14, then chr17 by position (TP53 at 7.7 Mb, ERBB2 39.7, BRCA1 43.0), chrX
    assert [names[i] for i in order[:7]] == ["ESR1", "GAPDH", "FOXA1", "TP53", "ERBB2",
                                             "BRCA1", "XIST"]
