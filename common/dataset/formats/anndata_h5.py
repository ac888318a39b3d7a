"""AnnData ``.h5ad`` and MuData ``.h5mu`` files, read with h5py.

The on-disk format is AnnData's documented HDF5 layout (anndata >= 0.7): ``X`` is a
dense dataset or a group with ``encoding-type`` ``csr_matrix``/``csc_matrix``
(``data``, ``indices``, ``indptr``, attribute ``shape``); ``obs`` and ``var`` are
groups whose attribute ``_index`` names the dataset of row names; ``layers/<name>``
hold other matrices of the same shape. A ``.h5mu`` holds one such AnnData group per
modality under ``mod/<name>``. The ``anndata``/``mudata`` packages are not needed (they
pin pandas < 3); files they write are read as written.

Manifest keys: ``layer`` (read ``layers/<layer>`` instead of ``X``) and, for ``h5mu``,
``modality`` (the ``mod/`` entry). Patients are ``obs`` names, features ``var`` names;
a row in a finding is the 1-based ``obs`` position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.dataset.findings import Findings, preview
from common.dataset.formats.matrix import Matrix, unique_names
from common.dataset.manifest import TableSpec


class FormatError(ValueError):
    """The file does not follow the AnnData on-disk layout; the message says where."""


def _names(group: Any, where: str) -> list[str]:
    if not hasattr(group, "attrs") or "_index" not in group.attrs:
        raise FormatError(f"{where} is not an AnnData dataframe group (no _index attribute; "
                          "files written by anndata < 0.7 are not supported)")
    key = group.attrs["_index"]
    key = key.decode() if isinstance(key, bytes) else str(key)
    raw = group[key][()]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in raw]


def _matrix(node: Any, where: str) -> np.ndarray:
    import h5py

    if isinstance(node, h5py.Dataset):
        return np.asarray(node[()], dtype=np.float64)
    enc = node.attrs.get("encoding-type", b"")
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc not in ("csr_matrix", "csc_matrix"):
        raise FormatError(f"{where}: unsupported encoding-type {enc!r}")
    shape = tuple(int(x) for x in node.attrs["shape"])
    data = np.asarray(node["data"][()], dtype=np.float64)
    indices = np.asarray(node["indices"][()], dtype=np.int64)
    indptr = np.asarray(node["indptr"][()], dtype=np.int64)
    dense = np.zeros(shape)
    major = shape[0] if enc == "csr_matrix" else shape[1]
    if len(indptr) != major + 1 or indptr[-1] != len(data) or len(indices) != len(data):
        raise FormatError(f"{where}: data, indices and indptr do not fit the shape {shape}")
    rows = np.repeat(np.arange(major), np.diff(indptr))
    if enc == "csr_matrix":
        dense[rows, indices] = data
    else:
        dense[indices, rows] = data
    return dense


def read_anndata(group: Any, layer: str | None, where: str) -> tuple[list[str], list[str],
                                                                     np.ndarray]:
    """``(obs names, var names, matrix)`` of one AnnData group."""
    for key in ("obs", "var"):
        if key not in group:
            raise FormatError(f"{where}: no {key} group")
    obs = _names(group["obs"], f"{where}obs")
    var = _names(group["var"], f"{where}var")
    if layer is not None:
        if "layers" not in group or layer not in group["layers"]:
            have = list(group["layers"]) if "layers" in group else []
            raise FormatError(f"{where}: no layer {layer!r}; layers: {preview(have)}")
        node, name = group["layers"][layer], f"{where}layers/{layer}"
    elif "X" in group:
        node, name = group["X"], f"{where}X"
    else:
        raise FormatError(f"{where}: no X matrix")
    x = _matrix(node, name)
    if x.shape != (len(obs), len(var)):
        raise FormatError(f"{name} has shape {x.shape}, obs x var is {len(obs)} x {len(var)}")
    return obs, var, x


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    import h5py

    rel = spec.file
    layer = spec.option("layer")
    try:
        with h5py.File(directory / rel, "r") as f:
            if spec.format == "h5mu":
                mod = spec.option("modality")
                if "mod" not in f or mod not in f["mod"]:
                    have = list(f["mod"]) if "mod" in f else []
                    raise FormatError(f"no modality mod/{mod}; modalities: {preview(have)}")
                obs, var, x = read_anndata(f["mod"][mod], layer, f"mod/{mod}/")
            else:
                obs, var, x = read_anndata(f, layer, "")
    except FormatError as e:
        out.error(str(e), file=rel)
        return None
    except (OSError, KeyError, ValueError, TypeError) as e:
        out.error(f"cannot read the file as HDF5 AnnData: {e}", file=rel)
        return None
    lines = np.arange(1, len(obs) + 1)
    ok = unique_names(obs, rel, "obs", lines, out, what="obs name")
    ok &= unique_names(var, rel, "var", np.arange(1, len(var) + 1), out, what="var name")
    return Matrix(rel, obs, lines, var, x, layer or "X") if ok else None


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    return []
