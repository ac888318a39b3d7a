"""Feature harmonization across sites, from feature names only (no values shared).

1. Each site maps its gene identifiers to one namespace (:func:`canonical_names`):
   versioned Ensembl ids lose the version (``ENSG00000141510.17`` -> ``ENSG00000141510``),
   ``SYMBOL_Entrez`` names (Firehose) and symbols or Entrez ids are translated through a
   :class:`GeneIdTable` (the shipped ``gene_ids.tsv`` or a site's own), miRNA names are
   written one way (``hsa_mir_21`` -> ``hsa-mir-21``).
2. Sites declare, per modality, the names they have; the coordinator fixes the
   consortium feature set (:func:`consortium_features`): a feature is kept when at
   least ``min_sites`` of the sites holding the modality declare it (default: a
   majority).
3. Each site gets a :class:`SiteFeatureMap` (:func:`site_feature_map`): for every
   consortium feature, the column of the site's own data or -1, and a mask. A feature a
   site lacks is never imputed from other sites: :func:`harmonize` fills it with 0 and
   marks it absent in :class:`Harmonized.feature_mask` and in the data's per-patient
   ``feature_mask``, which the models read as a mask (:func:`common.model.split_mask`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.dataset.multiomics import MultiOmicsData
from common.schema import FeatureSchema


def _shipped_table(relative: str = "common/dataset/gene_ids.tsv") -> Path:
    """The shipped table: beside this module, or, when the module runs from a Flower app
    bundle (which carries only code and TOML), in the installed project on ``sys.path``."""
    here = Path(__file__).resolve().parent / Path(relative).name
    if here.exists():
        return here
    for entry in sys.path:
        candidate = Path(entry or ".") / relative
        if candidate.exists():
            return candidate.resolve()
    return here  # reading it names the missing file


GENE_ID_TABLE = _shipped_table()
NAMESPACES = ("symbol", "entrez", "ensembl")

_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")
_SYMBOL_ENTREZ = re.compile(r"^(.+)_(\d+)$")
_ENTREZ = re.compile(r"^\d+$")
_MIRNA = re.compile(r"^[a-z]{3}[-_](mir|let|miR)[-_]", re.IGNORECASE)


@dataclass(frozen=True)
class GeneIdTable:
    """Rows of (symbol, entrez, ensembl) identifiers of the same gene; "" = unknown."""

    rows: tuple[tuple[str, str, str], ...]
    source: str

    @classmethod
    def read(cls, path: Path | str = GENE_ID_TABLE) -> GeneIdTable:
        """A tab-separated table with the header ``symbol entrez ensembl`` (``#`` lines
        are comments); ValueError naming the file and line on a malformed row."""
        path = Path(path)
        rows, header_seen = [], False
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            cells = [c.strip() for c in line.split("\t")]
            if not header_seen:
                if cells[:3] != list(NAMESPACES):
                    raise ValueError(f"{path}, row {number}: header must be {NAMESPACES}")
                header_seen = True
                continue
            if len(cells) < 3:
                cells += [""] * (3 - len(cells))
            sym, ent, ens = cells[:3]
            if ent and not _ENTREZ.match(ent):
                raise ValueError(f"{path}, column 'entrez', row {number}: not an id: {ent!r}")
            if ens and not _ENSEMBL.match(ens):
                raise ValueError(f"{path}, column 'ensembl', row {number}: not an id: {ens!r}")
            rows.append((sym, ent, _ENSEMBL.sub(r"\1", ens) if ens else ""))
        return cls(tuple(rows), str(path))

    def lookup(self, source: str, target: str) -> dict[str, str]:
        """``source`` id -> ``target`` id for the rows that know both (first row wins)."""
        i, j = NAMESPACES.index(source), NAMESPACES.index(target)
        out: dict[str, str] = {}
        for row in self.rows:
            if row[i] and row[j]:
                out.setdefault(row[i].upper() if source == "symbol" else row[i], row[j])
        return out


@lru_cache(maxsize=1)
def shipped_gene_ids() -> GeneIdTable:
    """The table shipped with the project (provenance in its header)."""
    return GeneIdTable.read(GENE_ID_TABLE)


def id_kind(name: str) -> str:
    """``ensembl``, ``symbol_entrez``, ``entrez``, ``mirna`` or ``symbol``."""
    if _ENSEMBL.match(name):
        return "ensembl"
    if _MIRNA.match(name):
        return "mirna"
    if _ENTREZ.match(name):
        return "entrez"
    if _SYMBOL_ENTREZ.match(name):
        return "symbol_entrez"
    return "symbol"


def canonical_names(
    names: Sequence[str], target: str = "symbol", table: GeneIdTable | None = None
) -> tuple[list[str], list[str]]:
    """Feature names in one namespace, and the names that could not be translated.

    An untranslatable name is kept in its own normalised form (Ensembl without version,
    miRNA with dashes), so sites using the same notation still match on it.
    """
    if target not in NAMESPACES:
        raise ValueError(f"target must be one of {NAMESPACES}, not {target!r}")
    table = table or shipped_gene_ids()
    maps = {src: table.lookup(src, target) for src in NAMESPACES if src != target}
    # A known symbol in any case is written as the table writes it (foxa1 -> FOXA1).
    symbols = {row[0].upper(): row[0] for row in table.rows if row[0]}
    out, unmapped = [], []
    for name in names:
        kind = id_kind(name)
        if kind == "mirna":
            out.append(name.replace("_", "-").lower())
            continue
        if kind == "ensembl":
            key, src = _ENSEMBL.sub(r"\1", name), "ensembl"
        elif kind == "symbol_entrez":
            sym, ent = _SYMBOL_ENTREZ.match(name).groups()  # type: ignore[union-attr]
            key, src = ent, "entrez"
            if target == "symbol":
                out.append(maps["entrez"].get(ent, sym))
                continue
        elif kind == "entrez":
            key, src = name, "entrez"
        else:
            key, src = name.upper(), "symbol"
        if src == target:
            out.append(key if src != "symbol" else symbols.get(key, name))
            continue
        hit = maps[src].get(key)
        if hit is None:
            unmapped.append(name)
            out.append(key if src != "symbol" else name)
        else:
            out.append(hit)
    return out, unmapped


@dataclass(frozen=True)
class ConsortiumFeatures:
    """The feature names every site's data is expressed in, per modality."""

    modalities: tuple[tuple[str, tuple[str, ...]], ...]
    # modality -> sites that declared it (the denominator of min_sites)
    holders: tuple[tuple[str, tuple[str, ...]], ...]
    min_sites: tuple[tuple[str, int], ...]

    def features(self, modality: str) -> tuple[str, ...]:
        return dict(self.modalities)[modality]

    @classmethod
    def of_schema(cls, schema: FeatureSchema) -> ConsortiumFeatures:
        """The feature set a consortium setup's schema carries (as a site receives it)."""
        return cls(schema.modalities, tuple((m, ()) for m, _ in schema.modalities),
                   tuple((m, 0) for m, _ in schema.modalities))

    def schema(self, label_names: Sequence[str]) -> FeatureSchema:
        return FeatureSchema.build({m: list(f) for m, f in self.modalities}, list(label_names))

    def record(self) -> dict:
        """JSON form for run records (names and counts only)."""
        return {
            m: {"n_features": len(f), "sites": list(dict(self.holders)[m]),
                "min_sites": dict(self.min_sites)[m]}
            for m, f in self.modalities
        }


def consortium_features(
    declared: Mapping[str, Mapping[str, Sequence[str]]], *, min_sites: int | None = None
) -> ConsortiumFeatures:
    """Fix the consortium feature set from each site's declared names.

    ``declared`` is site -> modality -> feature names (already canonical). A feature is
    kept when at least ``min_sites`` of the sites holding the modality declare it
    (default ``ceil(holders / 2)``, capped at the number of holders); order: first
    appearance over the sites sorted by name, so it does not depend on who answered
    first. Modality order likewise.
    """
    if min_sites is not None and min_sites < 1:
        raise ValueError("min_sites must be at least 1")
    sites = sorted(declared)
    order: list[str] = []
    for s in sites:
        order += [m for m in declared[s] if m not in order]
    mods, holders, thresholds = [], [], []
    for m in order:
        have = [s for s in sites if m in declared[s]]
        need = min(min_sites or math.ceil(len(have) / 2), len(have))
        counts: dict[str, int] = {}
        for s in have:
            names = list(declared[s][m])
            if len(set(names)) != len(names):
                raise ValueError(f"site {s!r} declares duplicate feature names in {m!r}")
            for f in names:
                counts[f] = counts.get(f, 0) + 1
        kept = tuple(f for f, c in counts.items() if c >= need)
        if not kept:
            raise ValueError(f"modality {m!r}: no feature is declared by {need} site(s)")
        mods.append((m, kept))
        holders.append((m, tuple(have)))
        thresholds.append((m, need))
    return ConsortiumFeatures(tuple(mods), tuple(holders), tuple(thresholds))


@dataclass(frozen=True)
class SiteFeatureMap:
    """Per modality: the site's column of each consortium feature (-1 = lacking)."""

    index: dict[str, np.ndarray]  # int64 [F_consortium]

    def mask(self, modality: str) -> np.ndarray:
        """bool [F_consortium]: True where the site has the feature."""
        return self.index[modality] >= 0

    def coverage(self) -> dict[str, float]:
        """Share of the consortium features the site has, per modality."""
        return {m: float(self.mask(m).mean()) for m in self.index}


def site_feature_map(
    consortium: ConsortiumFeatures, site_features: Mapping[str, Sequence[str]]
) -> SiteFeatureMap:
    """Where each consortium feature is in a site's data (site features in its order)."""
    index = {}
    for m, feats in consortium.modalities:
        pos = {f: j for j, f in enumerate(site_features.get(m, ()))}
        index[m] = np.array([pos.get(f, -1) for f in feats], dtype=np.int64)
    return SiteFeatureMap(index)


def patient_feature_mask(n: int, site_mask: Mapping[str, np.ndarray]
                         ) -> dict[str, np.ndarray] | None:
    """A site's feature mask (modality -> bool [F_m]) for each of its ``n`` patients, as
    :attr:`MultiOmicsData.feature_mask` holds it; None when the site lacks no feature of
    a modality it holds (a modality it does not hold at all is masked as a whole)."""
    have = {m: np.asarray(v, dtype=bool) for m, v in site_mask.items()}
    if all(v.all() or not v.any() for v in have.values()):
        return None
    return {m: np.repeat((v if v.any() else np.ones_like(v))[None, :], n, axis=0)
            for m, v in have.items()}


@dataclass
class Harmonized:
    """A site's data in the consortium schema; ``feature_mask[m]`` bool [F_m] is False
    for features the site lacks (their values are 0, not imputed)."""

    data: MultiOmicsData
    feature_mask: dict[str, np.ndarray]


def harmonize(
    data: MultiOmicsData, consortium: ConsortiumFeatures, fmap: SiteFeatureMap | None = None
) -> Harmonized:
    """Express ``data`` in the consortium features (its own names, already canonical).

    A modality the consortium has but ``data`` lacks becomes a masked block; a modality
    only this site has is dropped.
    """
    if fmap is None:
        fmap = site_feature_map(
            consortium, {m: list(data.schema.features(m)) for m in data.modality_names}
        )
    schema = consortium.schema(data.schema.label_names)
    n = data.n
    features, masks = {}, {}
    mask = np.zeros((n, len(schema.modality_names)), dtype=bool)
    for j, m in enumerate(schema.modality_names):
        idx = fmap.index[m]
        block = np.zeros((n, len(idx)), dtype=np.float32)
        if m in data.modality_names:
            have = idx >= 0
            block[:, have] = data.features[m][:, idx[have]]
            mask[:, j] = data.mask[:, data.modality_names.index(m)] & have.any()
        features[m] = block
        masks[m] = idx >= 0
    out = MultiOmicsData(data.patient_ids, features, mask, data.labels, schema, data.origin,
                         patient_feature_mask(n, masks))
    return Harmonized(out, masks)


@dataclass
class FeatureMoments:
    """Per modality and feature: patients counted, sum and sum of squares.

    Unlike a per-modality patient count, the count is per feature, so a feature a site
    lacks adds nothing to the pooled mean and standard deviation.
    """

    count: dict[str, np.ndarray]
    total: dict[str, np.ndarray]
    total_sq: dict[str, np.ndarray]

    @classmethod
    def of(cls, h: Harmonized) -> FeatureMoments:
        count, total, total_sq = {}, {}, {}
        for j, m in enumerate(h.data.modality_names):
            rows = h.data.features[m][h.data.mask[:, j]].astype(np.float64)
            have = h.feature_mask[m]
            count[m] = np.where(have, rows.shape[0], 0).astype(np.int64)
            total[m] = np.where(have, rows.sum(axis=0), 0.0)
            total_sq[m] = np.where(have, (rows**2).sum(axis=0), 0.0)
        return cls(count, total, total_sq)

    @staticmethod
    def merge(parts: Sequence[FeatureMoments]) -> FeatureMoments:
        first = parts[0]
        return FeatureMoments(
            {m: sum(p.count[m] for p in parts) for m in first.count},
            {m: sum(p.total[m] for p in parts) for m in first.total},
            {m: sum(p.total_sq[m] for p in parts) for m in first.total_sq},
        )

    def mean_std(self, min_std: float = 1e-6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Pooled mean and standard deviation per feature (mean 0, std 1 where no site
        has the feature)."""
        out = {}
        for m, c in self.count.items():
            n = np.maximum(c, 1)
            mean = self.total[m] / n
            var = np.maximum(self.total_sq[m] / n - mean**2, 0.0)
            std = np.sqrt(var)
            out[m] = (mean, np.where(std < min_std, 1.0, std))
        return out


def moments_in_consortium(
    consortium: ConsortiumFeatures,
    site_features: Mapping[str, Sequence[str]],
    count: Mapping[str, int],
    total: Mapping[str, np.ndarray],
    total_sq: Mapping[str, np.ndarray],
) -> FeatureMoments:
    """One site's per-modality statistics (patient count, per-feature sums in the site's
    own feature order, as a description carries them) in the consortium's features; a
    feature the site lacks counts 0 patients."""
    fmap = site_feature_map(consortium, site_features)
    c, t, t2 = {}, {}, {}
    for m, feats in consortium.modalities:
        idx = fmap.index[m]
        have = idx >= 0 if m in count else np.zeros(len(feats), dtype=bool)
        c[m] = np.where(have, count.get(m, 0), 0).astype(np.int64)
        t[m], t2[m] = np.zeros(len(feats)), np.zeros(len(feats))
        if have.any():
            t[m][have] = np.asarray(total[m], dtype=np.float64)[idx[have]]
            t2[m][have] = np.asarray(total_sq[m], dtype=np.float64)[idx[have]]
    return FeatureMoments(c, t, t2)


def zero_absent(data: MultiOmicsData, feature_mask: Mapping[str, np.ndarray]) -> None:
    """Set the features a site lacks back to 0 in place (after any standardization)."""
    for m, have in feature_mask.items():
        data.features[m][:, ~np.asarray(have, dtype=bool)] = 0.0


def standardize(h: Harmonized, moments: dict[str, tuple[np.ndarray, np.ndarray]]) -> Harmonized:
    """``(x - mean) / std`` on the features the site has; the others stay exactly 0."""
    features = {}
    for j, m in enumerate(h.data.modality_names):
        mean, std = moments[m]
        x = ((h.data.features[m] - mean) / std).astype(np.float32)
        x[:, ~h.feature_mask[m]] = 0.0
        x[~h.data.mask[:, j]] = 0.0
        features[m] = x
    d = h.data
    return Harmonized(
        MultiOmicsData(d.patient_ids, features, d.mask, d.labels, d.schema, d.origin,
                       d.feature_mask),
        h.feature_mask,
    )
