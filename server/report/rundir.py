"""A run directory as the report reads it: records, model bundle and the test patients.

``config.json`` and ``metrics.json`` say what was run and measured; what they do not
hold (predictions, embeddings, explanations) is computed from the model bundle and the
global test split, which is rebuilt from the run configuration exactly as the run built
it (the dataset is read in place; the split is deterministic from the config).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import ModelBundle, load_bundle
from common.config import RunConfig
from common.dataset.multiomics import MultiOmicsData

logger = logging.getLogger(__name__)

FEDERATED, CENTRALIZED = "federated", "centralized"


@dataclass
class RunRecords:
    """The JSON records of a run directory."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def kind(self) -> str:
        """``federated`` (simulate, coordinator) or ``centralized`` (train-central)."""
        return FEDERATED if "rounds" in self.metrics else CENTRALIZED

    @property
    def run_config(self) -> RunConfig:
        """The run configuration; keys this version does not know are left out."""
        known = {f.name for f in fields(RunConfig)}
        raw = self.config.get("run_config", {})
        return RunConfig.from_dict({k: v for k, v in raw.items() if k in known})

    @property
    def federation(self) -> dict[str, Any]:
        return self.config.get("federation", {})

    @property
    def run_id(self) -> str:
        return str(self.config.get("run_id") or self.metrics.get("run_id") or self.path.name)


def read_records(run_dir: Path) -> RunRecords:
    """``config.json`` and ``metrics.json`` of ``run_dir``; a clear error when missing."""
    run_dir = Path(run_dir)
    records = {}
    for name in ("config.json", "metrics.json"):
        path = run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: not a run directory ({name} is missing)")
        records[name] = json.loads(path.read_text())
    return RunRecords(run_dir, records["config.json"], records["metrics.json"])


@dataclass
class TestSplit:
    """The global test patients, raw and as the model sees them."""

    raw: MultiOmicsData
    prepared: MultiOmicsData  # aligned to the model's schema and standardized
    labels: np.ndarray
    sites: np.ndarray  # the virtual hospital (or site code) each patient came from
    source: str
    # [fairness] of the dataset's own manifest: column names and bin edges
    subgroups: tuple[str, ...] = ()
    subgroup_bins: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass
class LoadedRun:
    records: RunRecords
    bundle: ModelBundle
    test: TestSplit
    fingerprints_now: dict[str, dict[str, str]]


def load_run(run_dir: Path) -> LoadedRun:
    """Records, model bundle and rebuilt test split of a run directory."""
    records = read_records(run_dir)
    bundle = load_bundle(Path(run_dir) / "model")
    cfg = records.run_config
    from common.simulated_federation import load_federation

    fed = load_federation(cfg)
    raw = fed.test.align_to(bundle.schema, "test split")
    if raw.labels is None:
        raise ValueError(f"{run_dir}: the test split has no labels; nothing to report on")
    site_names = [s["site"] for s in records.federation.get("sites", [])]
    manifest = _manifest(cfg)
    sites = _test_sites(fed, manifest, site_names)
    _check_split(records, fed)
    return LoadedRun(records, bundle,
                     TestSplit(raw, bundle.prepare(raw, "test split"), raw.labels, sites,
                               fed.test_source,
                               manifest.subgroups if manifest else (),
                               dict(manifest.subgroup_bins) if manifest else {}),
                     fed.fingerprints)


def _manifest(cfg: RunConfig) -> Any:
    """The manifest the test data were read with (``read_manifest`` decides: explicit,
    the directory's own ``dataset.toml``, a bundled set's only for that set, or the
    convention); None when it cannot be read."""
    from common.dataset import read_manifest
    from common.paths import resolve_data_dir

    try:
        directory = resolve_data_dir(cfg.test_data or cfg.data)
        manifest = Path(cfg.manifest) if cfg.manifest and not cfg.test_data else None
        return read_manifest(directory, manifest)
    except (ValueError, OSError) as exc:
        logger.info("no manifest for the test data: %s", exc)
        return None


def _test_sites(fed: Any, manifest: Any, site_names: list[str]) -> np.ndarray:
    """Each test patient's hospital: its site code, or ``other`` for a site merged away;
    ``all`` when the data carry no site codes (e.g. a separate test set without them)."""
    from common.dataset import site_codes
    from common.partition import OTHER_SITE

    try:
        if manifest is None:
            raise ValueError("the test data's manifest could not be read")
        codes = site_codes(fed.test, manifest.site_pattern)
    except (ValueError, OSError) as exc:
        logger.info("test patients carry no site codes: %s", exc)
        return np.full(fed.test.n, "all", dtype=object)
    named = set(site_names)
    if not named:
        return np.asarray(codes, dtype=object)
    fallback = OTHER_SITE if OTHER_SITE in named else "not in the federation"
    return np.array([c if c in named else fallback for c in codes], dtype=object)


def _check_split(records: RunRecords, fed: Any) -> None:
    """Refuse a rebuilt test split that is not the run's (data changed since the run)."""
    from common.partition import ids_digest

    expected = records.federation.get("test_ids_sha256")
    if expected and expected != ids_digest(fed.test.patient_ids):
        raise ValueError(f"{records.path}: the test split rebuilt from config.json is not the "
                         "run's (its patient-id hash differs): has the dataset changed?")
