"""Read, validate and hash once per process: repeated loads of unchanged files are kept."""

from __future__ import annotations

import os
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_dataset import RNA, site

from common.dataset import (
    SETTLE_NS,
    clear_caches,
    dataset_fingerprint,
    load_dataset,
    read_manifest,
)
from common.dataset import files as dataset_files


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    clear_caches()
    yield
    clear_caches()


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """File name -> how many times pandas parsed it."""
    seen: Counter[str] = Counter()
    real = pd.read_csv

    def counting(path, *args, **kwargs):
        seen[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", counting)
    return seen


def age(directory: Path, seconds: float = 60.0) -> None:
    """Date every file back, as for data that has been on disk for a while."""
    past = time.time_ns() - int(seconds * 1e9)
    for f in directory.iterdir():
        os.utime(f, ns=(past, past))


def test_second_load_reads_nothing_and_returns_private_copies(write_files, reads):
    d = site(write_files)
    age(d)
    first = load_dataset(d)
    assert reads == {"labels.csv": 1, "rna.csv": 1, "mirna.csv": 1}
    first.features["rna"][0, 0] = 99.0  # a caller's copy is its own
    first.labels[:] = 0

    second = load_dataset(d)
    assert reads == {"labels.csv": 1, "rna.csv": 1, "mirna.csv": 1}
    assert second.features["rna"][0, 0] == 1.0 and second.labels.tolist() == [0, 1, 0, 1]
    assert second.features["rna"].flags.writeable and second.mask.flags.writeable
    assert second.origin == first.origin

    # Another split/schema/manifest is another entry; the same one stays kept.
    load_dataset(d, require_labels=False)
    assert reads["rna.csv"] == 2
    load_dataset(d)
    assert reads["rna.csv"] == 2


def test_a_modified_file_is_read_again(write_files, reads):
    d = site(write_files)
    age(d, 120)
    assert load_dataset(d).features["rna"][0, 0] == 1.0
    (d / "rna.csv").write_text(RNA.replace("P1,1.0", "P1,7.0"))
    age(d, 60)  # settled again, but with another mtime
    data = load_dataset(d)
    assert data.features["rna"][0, 0] == 7.0
    assert reads == {"labels.csv": 2, "rna.csv": 2, "mirna.csv": 2}


def test_same_size_rewrite_with_same_mtime_is_caught_by_the_inode(write_files, reads):
    d = site(write_files)
    age(d)
    before = (d / "rna.csv").stat()
    load_dataset(d)
    # Replaced by rename (as atomic writers do): same size and mtime, new inode.
    tmp = d / "rna.tmp"
    tmp.write_text(RNA.replace("P1,1.0", "P1,7.0"))
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, d / "rna.csv")
    assert load_dataset(d).features["rna"][0, 0] == 7.0


def test_freshly_written_files_are_not_kept(write_files, reads):
    # A write in the same clock tick as a read could keep size and mtime: files modified
    # within SETTLE_NS are read every time.
    assert SETTLE_NS >= 1_000_000_000
    d = site(write_files)
    load_dataset(d)
    load_dataset(d)
    assert reads["rna.csv"] == 2


def test_new_files_and_manifests_change_the_result(write_files, reads):
    d = site(write_files)
    age(d)
    assert load_dataset(d).modality_names == ["mirna", "rna"]
    (d / "clin.csv").write_text("id,age\nP1,50\nP2,60\nP3,70\nP4,80\n")
    age(d)
    assert load_dataset(d).modality_names == ["clin", "mirna", "rna"]
    (d / "dataset.toml").write_text('[dataset]\nname = "s"\n[modalities]\nrna = "rna.csv"\n')
    age(d)
    data = load_dataset(d)
    assert data.modality_names == ["rna"] and data.origin.manifest_source == "dataset.toml"


def test_manifest_is_parsed_and_files_hashed_once(write_files, monkeypatch):
    d = site(write_files, dataset_toml='[dataset]\nname = "s"\nlabel_names = ["A", "B"]\n')
    age(d)
    parsed, hashed = Counter(), Counter()
    loads, hash_file = tomllib.loads, dataset_files._hash

    def count_loads(text, *args, **kwargs):
        parsed["toml"] += 1
        return loads(text, *args, **kwargs)

    def count_hash(path):
        hashed[Path(path).name] += 1
        return hash_file(path)

    monkeypatch.setattr(tomllib, "loads", count_loads)
    monkeypatch.setattr(dataset_files, "_hash", count_hash)
    # What a simulated federation does in every process: manifest, fingerprint, load.
    for _ in range(3):
        read_manifest(d)
        fingerprint = dataset_fingerprint(d)
        load_dataset(d)
    assert parsed == {"toml": 1}
    assert hashed == {"labels.csv": 1, "rna.csv": 1, "mirna.csv": 1}
    assert set(fingerprint) == {"dataset.toml", "labels.csv", "rna.csv", "mirna.csv"}


def test_kept_arrays_are_read_only(write_files):
    from common.dataset import loading

    d = site(write_files)
    age(d)
    load_dataset(d)
    (kept,) = loading._kept.values()
    assert not kept.data.features["rna"].flags.writeable
    assert not kept.data.labels.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        kept.data.mask[0, 0] = False
    np.testing.assert_array_equal(load_dataset(d).mask, kept.data.mask)
