"""What a federation yields, and the error that ends one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.consortium_setup import ConsortiumSetup
from common.preprocessing import Standardizer
from common.schema import FeatureSchema


class FederationError(RuntimeError):
    """The federation cannot go on (too few sites, incompatible sites, ...)."""


@dataclass
class FederationOutcome:
    """The consortium, every round's record and the selected global model of one run."""

    setup: ConsortiumSetup
    sites: list[dict]  # per site: name, n_train, n_val, class_counts
    rounds: list[dict] = field(default_factory=list)  # round records (see records.py)
    best_round: int = 0
    best_state: dict[str, Any] | None = None
    setup_seconds: float = 0.0  # sites connecting and describing themselves, model init
    stopped: str = ""  # why the federation ended before its last round, if it did
    central_dp: dict | None = None  # budget, delta, noise, clipping, epsilon spent
    # Distributed DP: the noise plan, the noised class counts and patient total.
    distributed_dp: dict | None = None
    # Local DP: the plan of the noised releases (counts, validation), the noised counts.
    local_dp: dict | None = None
    seconds: float = 0.0  # the whole federation, setup included
    resumed_from: list[int] = field(default_factory=list)  # last completed round at restarts
    # Names the run to the sites across restarts (see common.spend_record).
    run_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The nodes taking part and their sites (see server.rounds.admission).
    members: dict[int, str] = field(default_factory=dict)

    @property
    def schema(self) -> FeatureSchema:
        return self.setup.schema

    @property
    def standardizer(self) -> Standardizer:
        return self.setup.standardizer

    @property
    def class_weight(self) -> np.ndarray:
        return self.setup.class_weight
