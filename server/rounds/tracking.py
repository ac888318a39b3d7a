"""Model selection over rounds: the best validated round, early stop, callbacks."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

from flwr.app import Message

from common.model_selection import BestTracker
from server.rounds.outcome import FederationOutcome
from server.rounds.records import RoundRecord

logger = logging.getLogger(__name__)


class RoundTracker:
    """Completes a round once its validation arrives: best round, callbacks, stop.

    Selection uses the pooled validation metrics only, never the test split. With
    ``latest`` (distributed DP, whose rounds release no validation) the latest round is
    the run's model and training never stops early.
    """

    def __init__(self, outcome: FederationOutcome, selection: str, patience: int,
                 on_round: Callable[[dict], None] | None = None,
                 checkpoint: Callable[[dict], None] | None = None, *,
                 latest: bool = False) -> None:
        self.outcome, self.patience, self.latest = outcome, patience, latest
        self.on_round, self.checkpoint = on_round, checkpoint
        self.best = BestTracker(selection)

    def finish(self, record: RoundRecord, state: dict[str, Any], replies: list[Message]
               ) -> bool:
        """Attach the validation in ``replies``, keep the best state, checkpoint; return
        True when training should stop (``patience`` rounds without improvement)."""
        record.add_validation(replies)
        val = record.val
        f1, loss = (val.f1_macro, val.loss) if val is not None else (-math.inf, math.inf)
        outcome = self.outcome
        if self.latest:
            self.best.best_step = record.round
        if self.latest or self.best.update(record.round, f1, loss):
            outcome.best_round = record.round
            outcome.best_state = copy.deepcopy(state)
        done = record.to_dict()
        outcome.rounds.append(done)
        logger.info("round %d: val loss %.3f, val macro-F1 %.3f%s%s", record.round, loss, f1,
                    f", test macro-F1 {record.test['f1_macro']:.3f}" if record.test else "",
                    " (best so far)" if outcome.best_round == record.round else "")
        if self.on_round is not None:
            self.on_round(done)
        if self.checkpoint is not None:
            self.checkpoint(state)
        stop = not self.latest and self.best.stale(record.round, self.patience)
        if stop:
            logger.info("early stop after round %d (best %d)", record.round, outcome.best_round)
        return stop

    def fail(self, record: RoundRecord) -> None:
        """Record a round that produced no usable aggregate."""
        record.failed = True
        done = record.to_dict()
        self.outcome.rounds.append(done)
        if self.on_round is not None:
            self.on_round(done)

    def stopped_early(self, last_round: int) -> bool:
        """True when a run resumed after ``last_round`` had already stopped early."""
        return not self.latest and self.best.stale(last_round, self.patience)
