"""Split one dataset into a global test split and virtual hospitals.

Partitioners:

* ``site``: the natural partition. Each patient's site code comes from the dataset's
  ``site_pattern`` (for TCGA, characters 6-7 of the barcode: the tissue source site,
  i.e. the contributing hospital). Sites with at least ``min_site_size`` patients left
  after the test split are hospitals of their own; smaller sites are merged into one
  hospital called ``other`` (dropped, and recorded as dropped, if even the merged group
  is below ``min_site_size``). With ``n_sites`` set, the ``n_sites - 1`` largest sites
  are kept and every other site is merged into ``other``.
* ``dirichlet:ALPHA``: label skew (Hsu et al., 2019); each of ``n_sites`` equally sized
  hospitals draws its class mix from Dirichlet(ALPHA) over the classes (smaller ALPHA =
  more skew) and fills its places from it, taking the classes still left once its own
  are used up. Every hospital gets ``len(labels) // n_sites`` patients or one more, so
  many small, unlike hospitals are possible (40 of 15 patients each) where a per-class
  split would leave some empty.
* ``iid``: stratified, equally sized hospitals.

Every hospital holds out ``val_fraction`` of its patients (stratified where the class
counts allow) for local validation. The global test split is stratified with a fixed
seed and is never given to any hospital or used for model selection.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

DEFAULT_TEST_FRACTION = 0.3
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_MIN_SITE_SIZE = 20
DEFAULT_SYNTHETIC_SITES = 8
OTHER_SITE = "other"


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value."""

    kind: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        kind, _, arg = text.strip().partition(":")
        kind = kind.lower()
        if kind in ("site", "iid") and not arg:
            return cls(kind)
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                alpha = -1.0
            if alpha <= 0:
                raise ValueError(f"partition {text!r}: dirichlet needs a positive ALPHA, "
                                 "e.g. dirichlet:0.5")
            return cls(kind, alpha)
        raise ValueError(f"unknown partition {text!r}; use site, iid or dirichlet:ALPHA")

    def __str__(self) -> str:
        return f"dirichlet:{self.alpha:g}" if self.kind == "dirichlet" else self.kind


@dataclass
class SitePlan:
    """One virtual hospital: its name and row indices into the training pool."""

    name: str
    train: np.ndarray
    val: np.ndarray

    @property
    def n(self) -> int:
        return len(self.train) + len(self.val)


@dataclass
class FederationPlan:
    """Which pool rows each hospital holds; reproducible from ``(partition, seed)``."""

    partition: str
    seed: int
    sites: list[SitePlan]
    dropped: dict[str, int] = field(default_factory=dict)

    def record(self, labels: np.ndarray, label_names: tuple[str, ...]) -> list[dict]:
        """Per-site summary for config.json / metrics.json (counts only, no ids)."""
        out = []
        for s in self.sites:
            counts = np.bincount(labels[np.concatenate([s.train, s.val])],
                                 minlength=len(label_names))
            out.append({
                "site": s.name, "n_train": len(s.train), "n_val": len(s.val),
                "class_counts": {n: int(c) for n, c in zip(label_names, counts, strict=True)},
            })
        return out


def holdout_split(
    labels: np.ndarray, seed: int, test_fraction: float = DEFAULT_TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(pool_idx, test_idx)``; same call as the measured reference baselines."""
    idx = np.arange(len(labels))
    pool, test = train_test_split(
        idx, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(pool), np.sort(test)


def ids_digest(ids: np.ndarray) -> str:
    """SHA-256 of the sorted patient ids (records a split without listing it)."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def _stratify_or_none(labels: np.ndarray, n_holdout: int) -> np.ndarray | None:
    counts = Counter(labels.tolist())
    if min(counts.values()) < 2 or n_holdout < len(counts):
        return None
    return labels


def split_validation(
    idx: np.ndarray, labels: np.ndarray, seed: int, val_fraction: float = DEFAULT_VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``val_fraction`` of a hospital's rows (at least one) for local validation."""
    if len(idx) < 2:
        raise ValueError(f"a hospital needs at least 2 patients, got {len(idx)}")
    n_val = max(1, round(val_fraction * len(idx)))
    strat = _stratify_or_none(labels[idx], n_val)
    train, val = train_test_split(idx, test_size=n_val, stratify=strat, random_state=seed)
    return np.sort(train), np.sort(val)


def _group_by_site(
    codes: np.ndarray, n_sites: int | None, min_site_size: int
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    counts = Counter(codes.tolist())
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    if n_sites is not None:
        if n_sites < 1:
            raise ValueError("--sites must be at least 1")
        keep = ranked[: n_sites - 1] if len(ranked) > n_sites else ranked
    else:
        keep = [c for c in ranked if counts[c] >= min_site_size]
    small = [c for c in keep if counts[c] < 2]
    if small:
        raise ValueError(f"sites {small} have fewer than 2 patients after the test split; "
                         "lower --sites")
    groups = {c: np.flatnonzero(codes == c) for c in keep}
    rest = np.flatnonzero(~np.isin(codes, keep))
    dropped: dict[str, int] = {}
    if len(rest):
        if len(rest) >= min_site_size or (n_sites is not None and len(rest) >= 2):
            groups[OTHER_SITE] = rest
        else:
            dropped = {str(c): counts[c] for c in set(codes[rest].tolist())}
    return groups, dropped


def _dirichlet_groups(
    labels: np.ndarray, n_sites: int, alpha: float, min_site_size: int, seed: int
) -> dict[str, np.ndarray]:
    if n_sites * min_site_size > len(labels):
        raise ValueError(f"{len(labels)} patients cannot fill {n_sites} hospitals of at "
                         f"least {min_site_size}; lower --sites")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    sizes = np.full(n_sites, len(labels) // n_sites)
    sizes[: len(labels) % n_sites] += 1
    mix = rng.dirichlet([alpha] * len(classes), size=n_sites)
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    # One place per hospital per pass, in a fresh order each pass, so that no hospital
    # empties a class before the others have drawn from it.
    for _ in range(int(sizes.max())):
        for k in rng.permutation(n_sites):
            if len(parts[k]) == sizes[k]:
                continue
            left = np.array([len(pool) for pool in pools], dtype=float)
            weights = mix[k] * (left > 0)
            if weights.sum() <= 0:  # its classes are used up: take what is left
                weights = left
            c = rng.choice(len(classes), p=weights / weights.sum())
            parts[k].append(int(pools[c].pop()))
    return {f"site-{k + 1:02d}": np.sort(np.array(p)) for k, p in enumerate(parts)}


def _iid_groups(labels: np.ndarray, n_sites: int, seed: int) -> dict[str, np.ndarray]:
    if n_sites > len(labels) // 2:
        raise ValueError(f"{len(labels)} patients cannot fill {n_sites} hospitals")
    rng = np.random.default_rng(seed)
    # Deal each class round-robin so every hospital gets a near-equal class mix.
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c))
                            for c in np.unique(labels)])
    return {f"site-{k + 1:02d}": np.sort(order[k::n_sites]) for k in range(n_sites)}


def plan_federation(
    labels: np.ndarray,
    spec: PartitionSpec,
    *,
    seed: int,
    n_sites: int | None = None,
    site_codes: np.ndarray | None = None,
    min_site_size: int = DEFAULT_MIN_SITE_SIZE,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> FederationPlan:
    """Partition the training pool (``labels`` of its rows) into hospitals."""
    dropped: dict[str, int] = {}
    if spec.kind == "site":
        if site_codes is None:
            raise ValueError("the site partition needs per-patient site codes; this dataset's "
                             "ids carry none (use --partition iid or dirichlet:ALPHA)")
        groups, dropped = _group_by_site(site_codes, n_sites, min_site_size)
    elif spec.kind == "dirichlet":
        assert spec.alpha is not None
        groups = _dirichlet_groups(labels, n_sites or DEFAULT_SYNTHETIC_SITES, spec.alpha,
                                   min(min_site_size, 10), seed)
    else:
        groups = _iid_groups(labels, n_sites or DEFAULT_SYNTHETIC_SITES, seed)
    if not groups:
        raise ValueError("the partition left no hospital; lower --min-site-size")
    sites = []
    for k, (name, idx) in enumerate(groups.items()):
        train, val = split_validation(idx, labels, seed + 1000 + k, val_fraction)
        sites.append(SitePlan(name, train, val))
    return FederationPlan(str(spec), seed, sites, dropped)
