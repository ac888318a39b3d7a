"""What a round config tells the sites about the run's privacy account.

* ``run-key``: a random name the coordinator draws when a run starts and keeps in its
  checkpoint, so a resumed run is the same run to the sites (they answer a repeated
  request with the release they already sent: :mod:`client.privacy.replay`).
* ``spent.<site>``: for each site the run has heard from, the cumulative epsilon it
  reported. A site whose ledger shows less has lost part of its account (deleted,
  truncated or replaced ledger) and refuses to train until the ledger is restored
  (:mod:`client.privacy_guard`).
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord

RUN_KEY = "run-key"
SPENT_PREFIX = "spent."


def with_account(record: ConfigRecord, run_key: str, spend: Mapping[str, float]
                 ) -> ConfigRecord:
    """``record`` plus the run's key and each site's acknowledged epsilon."""
    out = ConfigRecord(dict(record))
    out[RUN_KEY] = run_key
    for site, epsilon in spend.items():
        out[SPENT_PREFIX + site] = float(epsilon)
    return out


def run_key_of(record: Mapping) -> str:
    """The run's key; "" from a coordinator that sends none."""
    return str(record.get(RUN_KEY, ""))


def spend_of(record: Mapping, site: str) -> float | None:
    """The epsilon the coordinator recorded for ``site``; None when it recorded none."""
    value = record.get(SPENT_PREFIX + site)
    return None if value is None else float(value)
