"""The record of one round, as the run directory, the checkpoint and the metrics keep it.

A round record is built in two steps: its training part when the round's replies are in
(:meth:`RoundRecord.add_training`), its validation part when the next round's replies
(or the final evaluation) report on its aggregate (:meth:`RoundRecord.add_validation`).
:meth:`RoundRecord.to_dict` gives the JSON form ``metrics.json`` and
:class:`server.monitoring.CoordinatorMetrics` read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from common.protocol import SiteMetrics, refusal_reason, site_name
from strategies.validation_pooling import ValidationSummary, pool_site_metrics


@dataclass
class RoundRecord:
    """One round: who took part, what was rejected, training and validation results."""

    round: int
    rejected: list[dict] = field(default_factory=list)  # {"site", "reason"[, "node"]}
    update_bytes: dict[str, int] | None = None  # per site (plain rounds only)
    train_loss: float | None = None  # the strategy's aggregated training loss
    sites: dict[str, dict] = field(default_factory=dict)  # per site, by name
    central_epsilon: float | None = None  # central DP: spent after this round
    test: dict[str, float] | None = None  # simulation: global test split, reporting only
    seconds: float | None = None
    val: ValidationSummary | None = None  # pooled validation of this round's aggregate
    failed: bool = False  # no usable aggregate

    def add_training(self, replies: list[Message]) -> None:
        """The training report (loss, patients, local epsilon) of each site whose update
        was aggregated: not of refusals, errors or the updates in :attr:`rejected`."""
        rejected_nodes = {r["node"] for r in self.rejected if "node" in r}
        for msg in replies:
            if (msg.has_error() or refusal_reason(msg.content) is not None
                    or msg.metadata.src_node_id in rejected_nodes):
                continue
            metrics = SiteMetrics.of_reply(msg.content)
            if metrics is None or (metrics.train_loss is None and metrics.epsilon is None):
                continue
            rec: dict = {"site": site_name(msg.content)}
            if metrics.train_loss is not None:  # distributed DP releases no per-site loss
                rec.update(n_train=metrics.num_examples, train_loss=metrics.train_loss)
            if metrics.epsilon is not None:  # local DP: the cumulative spend after the round
                rec["epsilon"] = metrics.epsilon
            self.sites.setdefault(rec["site"], {}).update(rec)

    def add_spent(self, replies: list[Message]) -> None:
        """Each site's epsilon after a release that is not training (distributed DP's
        final validation): the run's last word on what the site spent."""
        for msg in replies:
            metrics = None if msg.has_error() else SiteMetrics.of_reply(msg.content)
            if metrics is not None and metrics.epsilon is not None and not metrics.refused:
                name = site_name(msg.content)
                self.sites.setdefault(name, {"site": name})["epsilon"] = metrics.epsilon

    def add_validation(self, replies: list[Message]) -> None:
        """Pooled and per-site validation of this round's aggregate, from replies that
        carry it (training replies of the next round, or evaluation replies)."""
        reports = []
        for msg in replies:
            metrics = None if msg.has_error() else SiteMetrics.of_reply(msg.content)
            if metrics is None or not metrics.has_validation:
                continue
            reports.append(metrics)
            summary = pool_site_metrics([metrics])
            if summary is not None:
                name = site_name(msg.content)
                self.sites.setdefault(name, {"site": name})["val"] = {
                    "n_val": summary.n, **summary.as_dict()}
        self.val = pool_site_metrics(reports)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: only the parts this round has."""
        out: dict[str, Any] = {"round": self.round, "rejected": self.rejected}
        if self.update_bytes is not None:
            out["update_bytes"] = self.update_bytes
        if self.failed:
            out["failed"] = True
            return out
        out["train"] = {} if self.train_loss is None else {"loss": self.train_loss}
        out["sites"] = [self.sites[name] for name in sorted(self.sites)]
        if self.central_epsilon is not None:
            out["central_epsilon"] = self.central_epsilon
        if self.test is not None:
            out["test"] = self.test
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.val is not None:
            out["val"] = self.val.as_dict()
        return out
