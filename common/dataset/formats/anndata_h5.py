"""AnnData ``.h5ad`` and MuData ``.h5mu`` files, read through ``anndata`` and ``mudata``.

Files are opened backed (read-only, matrices left on disk): ``anndata.read_h5ad`` for
``.h5ad``; ``mudata.read_h5ad(file, modality)`` for ``.h5mu``, which opens only the
named ``mod/<modality>`` entry. Only the matrix the manifest names (``X``, or
``layers/<layer>``) becomes a patients x features array; dense and sparse (CSR/CSC)
matrices are both read. Backed mode still loads a file's other layers, ``obsm`` and
``uns`` into memory (anndata reads only ``X`` lazily).

Manifest keys: ``layer`` and, for ``h5mu``, ``modality``. Patients are ``obs`` names,
features ``var`` names; a row in a finding is the 1-based ``obs`` position.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from common.dataset.findings import Findings, preview
from common.dataset.formats.matrix import Matrix, unique_names
from common.dataset.manifest import TableSpec

LABELS = {"h5ad": "AnnData (.h5ad)", "h5mu": "MuData (.h5mu)"}


class FormatError(ValueError):
    """The file opened but does not hold what the manifest asks for; the message says what."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the scverse warnings that the findings already say better."""
    with warnings.catch_warnings():
        # Duplicate obs/var names are reported as errors naming each row.
        warnings.filterwarnings("ignore", category=UserWarning, message=(
            r"(Observation names|Variable names|obs_names|var_names) are not unique"))
        # Listing a file's modalities: the findings say when it is not a MuData file.
        warnings.filterwarnings("ignore", message=r"The HDF5 file was not created by muon",
                                category=UserWarning)
        # mudata < 0.4 announces a change of MuData.update() on every read_h5mu; nothing
        # here uses the obs/var columns it pulls. (mudata.set_options would change a
        # process-wide setting under the simulation's concurrent clients, and logs.)
        warnings.filterwarnings("ignore", message=r"From 0\.4 \.update\(\) will not pull",
                                category=FutureWarning)
        yield


def _modalities(path: Path) -> list[str]:
    """The ``mod/`` entries of a ``.h5mu`` (its matrices stay on disk)."""
    import mudata

    try:
        mdata = mudata.read_h5mu(path, backed="r")
    except Exception:  # e.g. a .h5ad: mudata cannot build a MuData from it
        return []
    try:
        return list(mdata.mod)
    finally:
        mdata.file.close()


def _open(path: Path, spec: TableSpec) -> Any:
    """The file's AnnData (of the manifest's modality for ``.h5mu``), opened backed."""
    if spec.format != "h5mu":
        import anndata

        return anndata.read_h5ad(path, backed="r")
    import mudata

    mod = spec.option("modality")
    try:
        return mudata.read_h5ad(path, mod, backed="r")
    except KeyError:
        have = _modalities(path)
        if mod in have:
            raise
        if not have:
            raise FormatError(f"no modality mod/{mod}: the file holds no MuData modalities "
                              "(is it a .h5ad?)") from None
        raise FormatError(f"no modality mod/{mod}; modalities: {preview(have)}") from None


def _matrix(adata: Any, layer: str | None, where: str) -> np.ndarray:
    """The named matrix as a dense float64 array (sparse matrices expanded).

    ``where`` prefixes messages (``mod/<name>/`` in a ``.h5mu``).
    """
    if layer is not None:
        if layer not in adata.layers:
            raise FormatError(f"no layer {where}layers/{layer}; layers: "
                              f"{preview(list(adata.layers))}")
        m = adata.layers[layer]
    else:
        try:
            m = adata.X
        except KeyError:  # a backed file without X: anndata looks it up on disk
            m = None
        if m is None:
            raise FormatError(f"no {where}X matrix (name a layer with `layer`)")
    if hasattr(m, "to_memory"):  # a backed sparse matrix
        m = m.to_memory()
    if hasattr(m, "toarray"):  # scipy sparse
        m = m.toarray()
    try:
        return np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}{'layers/' + layer if layer else 'X'} is not a numeric "
                          f"matrix ({e})") from None


def _close(adata: Any) -> None:
    if adata is not None and getattr(adata, "isbacked", False):
        adata.file.close()


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    rel = spec.file
    layer = spec.option("layer")
    where = f"mod/{spec.option('modality')}/" if spec.format == "h5mu" else ""
    adata = None
    try:
        with _quiet():
            adata = _open(directory / rel, spec)
            obs = [str(n) for n in adata.obs_names]
            var = [str(n) for n in adata.var_names]
            x = _matrix(adata, layer, where)
    except FormatError as e:
        out.error(str(e), file=rel)
        return None
    # anndata and h5py raise many exception types for a damaged or foreign file; any
    # of them is a finding naming the file, never a traceback.
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        out.error(f"cannot read the file as {LABELS[spec.format]}: {reason}", file=rel)
        return None
    finally:
        _close(adata)
    lines = np.arange(1, len(obs) + 1)
    ok = unique_names(obs, rel, "obs", lines, out, what="obs name")
    ok &= unique_names(var, rel, "var", np.arange(1, len(var) + 1), out, what="var name")
    return Matrix(rel, obs, lines, var, x, layer or "X") if ok else None


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    return []
