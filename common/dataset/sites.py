"""Site codes: the contributing hospital of each patient, read from the patient id."""

from __future__ import annotations

import re

import numpy as np

from common.dataset.findings import examples
from common.dataset.multiomics import MultiOmicsData


def site_codes(data: MultiOmicsData, pattern: str) -> np.ndarray:
    """Per-patient site code: group 1 of ``pattern`` searched in each patient id.

    Raises :class:`ValueError` naming example ids that do not match.
    """
    if not pattern:
        raise ValueError("this dataset has no site pattern: its patient ids carry no site code")
    regex = re.compile(pattern)
    if regex.groups != 1:
        raise ValueError(f"site pattern {pattern!r} must have exactly one group")
    codes, unmatched = [], []
    for pid in data.patient_ids:
        m = regex.search(str(pid))
        if m is None or not m.group(1):
            unmatched.append(str(pid))
            codes.append("")
        else:
            codes.append(m.group(1))
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of {data.n} patient id(s) do not match the site pattern "
            f"{pattern!r}: {examples(unmatched)}"
        )
    return np.array(codes, dtype=str)
