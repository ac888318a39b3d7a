"""Readers for the files hospitals' pipelines produce, one small module per format.

A manifest's ``[modalities.<m>] format`` names the format (default ``csv``, read by
:mod:`common.dataset.reading`); the others and their keys are listed in
:mod:`.registry`: :mod:`.gdc_star`, :mod:`.gdc_mirna`, :mod:`.methylation_beta` (one file
per sample, through the GDC sample sheet: :mod:`.sample_sheet`, :mod:`.per_sample`),
:mod:`.maf`, :mod:`.seg`, :mod:`.geo` and :mod:`.anndata_h5` (``.h5ad``/``.h5mu``). Every
reader returns a :class:`.matrix.Matrix` (patients x features, NaN = missing) and reports
problems as findings naming the file, column and row; :mod:`.tables` checks the matrix
and runs the modality's QC (:mod:`common.dataset.qc`). :mod:`.gdc_directory` reads a
GDC download without a manifest.
"""
