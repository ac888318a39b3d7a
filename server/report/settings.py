"""Report settings (a leaf: importing it loads neither torch nor matplotlib)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MIN_GROUP_SIZE = 10


@dataclass(frozen=True)
class ReportSettings:
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE  # smaller groups are flagged, not judged
    top_k: int = 10  # features listed per class
    ig_steps: int = 32
    ig_patients_per_class: int = 40
    seed: int = 0  # t-SNE and UMAP
    # UMAP's first fit in a process compiles numba kernels (about 20 s on 2 cores)
    umap: bool = True
    umap_epochs: int = 200
