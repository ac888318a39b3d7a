"""Tests for common.simulated_federation: the split settings and the cached federation."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from common.config import RunConfig
from common.simulated_federation import SplitSettings, build_federation, load_federation


def test_split_settings_take_every_value_from_the_run_config():
    cfg = RunConfig(data="x", test_data="y", test_ids="ids.txt", manifest="m.toml",
                    partition="iid", sites=5, min_site_size=7, val_fraction=0.25,
                    test_fraction=0.4, seed=9)
    settings = SplitSettings.of(cfg)
    assert {f.name: getattr(settings, f.name) for f in fields(settings)} == {
        "data": "x", "test_data": "y", "test_ids": "ids.txt", "manifest": "m.toml",
        "partition": "iid", "sites": 5, "min_site_size": 7, "val_fraction": 0.25,
        "test_fraction": 0.4, "seed": 9}
    # Settings that do not shape the split do not change the cache key.
    assert SplitSettings.of(replace(cfg, rounds=3, strategy="fedprox")) == settings


def test_load_federation_is_cached_per_split_and_deterministic(bundled_dir):
    cfg = RunConfig(data=str(bundled_dir("brca")), partition="iid", sites=3)
    fed = load_federation(cfg)
    assert load_federation(replace(cfg, rounds=1)) is fed  # same split: the cached one
    rebuilt = build_federation(SplitSettings.of(cfg))
    assert rebuilt is not fed
    assert list(rebuilt.test.patient_ids) == list(fed.test.patient_ids)
    assert len(fed.plan.sites) == 3
    other = load_federation(replace(cfg, seed=1))
    assert not np.array_equal(np.sort(other.test.patient_ids), np.sort(fed.test.patient_ids))
