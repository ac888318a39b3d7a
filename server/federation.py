"""The coordinator's round loop.

One run: ask every site to ``describe`` itself (schema, class counts, feature sums),
merge those into the consortium schema, the standardizer and the class weights, then
run ``rounds`` of train -> aggregate -> federated validation (-> test evaluation in
simulation), keep the round with the best pooled validation macro-F1 (never the test
split), checkpoint after every round, and stop early after ``round_patience`` rounds
without improvement.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data import MultiOmicsData
from common.preprocessing import FeatureStats, Standardizer
from common.protocol import (
    CONFIG,
    DESCRIBE,
    METRICS,
    NUM_EXAMPLES,
    QUERY_KIND,
    VAL_EXAMPLES,
    RoundConfig,
    SiteDescription,
    refusal_reason,
    site_name,
)
from common.schema import FeatureSchema, SchemaMismatchError
from strategies.metrics import macro_f1, pool_validation

logger = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """The federation cannot go on (too few sites, incompatible sites, ...)."""


@dataclass
class FederationOutcome:
    schema: FeatureSchema
    standardizer: Standardizer
    class_weight: np.ndarray
    sites: list[dict]
    rounds: list[dict] = field(default_factory=list)
    best_round: int = 0
    best_state: dict[str, Any] | None = None
    setup_seconds: float = 0.0  # sites connecting and describing themselves, model init
    stopped: str = ""  # why the federation ended before its last round, if it did
    central_dp: dict | None = None  # budget, delta, noise, clipping, epsilon spent
    seconds: float = 0.0  # the whole federation, setup included


def wait_for_sites(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Node ids once at least ``minimum`` sites are connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of the required {minimum} sites connected "
                                  f"within {timeout:.0f} s")
        time.sleep(0.5)


def describe_sites(grid: Grid, nodes: list[int], timeout: float) -> list[SiteDescription]:
    messages = [
        Message(content=RecordDict({CONFIG: ConfigRecord({QUERY_KIND: DESCRIBE})}),
                message_type=MessageType.QUERY, dst_node_id=node)
        for node in nodes
    ]
    out = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            logger.warning("site on node %s could not describe itself: %s",
                           reply.metadata.src_node_id, reply.error.reason)
            continue
        out.append(SiteDescription.from_record(reply.content))
    return out


def consortium_schema(descriptions: list[SiteDescription]) -> FeatureSchema:
    """Union of the sites' modalities; shared modalities must have identical features.

    A site may lack a whole modality (it trains with that modality masked), but two
    sites may not disagree on a modality's features or on the class names.
    """
    modalities: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    labels = descriptions[0].schema.label_names
    for d in descriptions:
        if d.schema.label_names != labels:
            raise SchemaMismatchError(
                f"site {d.site!r} has classes {list(d.schema.label_names)}, site "
                f"{descriptions[0].site!r} has {list(labels)}; give every site the same "
                "label_names in its dataset.toml"
            )
        for m, feats in d.schema.modalities:
            if m not in modalities:
                modalities[m], owner[m] = feats, d.site
            elif set(modalities[m]) != set(feats):
                raise SchemaMismatchError(
                    f"modality {m!r}: site {d.site!r} and site {owner[m]!r} have different "
                    "feature names"
                )
    return FeatureSchema(tuple(modalities.items()), labels)


def _site_val_record(content: RecordDict, n_classes: int) -> dict:
    m = content[METRICS]
    n = int(m[VAL_EXAMPLES])
    cm = np.asarray(m["confusion"], dtype=np.int64).reshape(n_classes, n_classes)
    return {
        "n_val": n,
        "loss": float(m["val-loss-sum"]) / max(n, 1),
        "accuracy": float(np.trace(cm) / max(n, 1)),
        "f1_macro": macro_f1(cm),
    }


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    *,
    test: MultiOmicsData | None = None,
    checkpoint: Callable[[FederationOutcome, dict], None] | None = None,
    on_round: Callable[[dict], None] | None = None,
    timeout: float = 600.0,
) -> FederationOutcome:
    """Run the whole federation on ``grid``; ``test`` (simulation only) is for reporting."""
    from common.metrics import METRIC_KEYS, classification_metrics
    from common.model import ModelSpec, build_model
    from common.training import class_weights, predict_proba, seed_everything
    from strategies import build_strategy

    start = time.perf_counter()
    nodes = wait_for_sites(grid, cfg.min_sites, timeout)
    descriptions = describe_sites(grid, nodes, timeout)
    if len(descriptions) < cfg.min_sites:
        raise FederationError(f"{len(descriptions)} sites answered, {cfg.min_sites} required")
    schema = consortium_schema(descriptions)
    standardizer = Standardizer.from_stats(FeatureStats.merge([d.stats for d in descriptions]),
                                           schema)
    counts = np.sum([d.class_counts for d in descriptions], axis=0)
    weight = class_weights(counts, cfg.train.class_weighting)
    sites = [{"site": d.site, "n_train": d.n_train, "n_val": d.n_val,
              "class_counts": {n: int(c) for n, c in zip(schema.label_names, d.class_counts,
                                                         strict=True)}}
             for d in descriptions]
    outcome = FederationOutcome(schema, standardizer, weight, sites)
    max_weight = max(d.n_train for d in descriptions)  # SecAgg+ fixed-point weight range
    logger.info("%d sites, %d training patients; classes %s", len(sites), int(counts.sum()),
                dict(zip(schema.label_names, counts.tolist(), strict=True)))

    seed_everything(cfg.seed)
    model = build_model(ModelSpec.for_schema(cfg.model, schema))
    arrays = ArrayRecord(model.state_dict())
    central = None
    if cfg.dp == "central":
        from strategies.central_dp import calibrate_central_noise

        delta = cfg.delta or 1.0 / (10 * len(descriptions))
        central = {"epsilon_budget": cfg.epsilon, "delta": delta,
                   "noise_multiplier": calibrate_central_noise(cfg.epsilon, delta, cfg.rounds),
                   "clipping_norm": cfg.max_grad_norm}
        outcome.central_dp = central
        logger.info("central DP: noise multiplier %.3f for epsilon %g over %d rounds",
                    central["noise_multiplier"], cfg.epsilon, cfg.rounds)
    strategy = build_strategy(
        "central-dp" if central else cfg.strategy, fraction_train=cfg.fraction_train,
        min_sites=cfg.min_sites, proximal_mu=cfg.proximal_mu, seed=cfg.seed,
        noise_multiplier=central["noise_multiplier"] if central else 0.0,
        clipping_norm=cfg.max_grad_norm,
    )
    prepared_test = standardizer.transform(test.align_to(schema, "test split")) \
        if test is not None else None
    tracker = _RoundTracker(outcome, cfg.train.selection, cfg.round_patience, on_round,
                            checkpoint)
    pending: tuple[dict, dict] | None = None  # (record, weights) of a round awaiting validation
    outcome.setup_seconds = time.perf_counter() - start
    for rnd in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        rc = RoundConfig(schema, standardizer, weight, local_epochs=cfg.local_epochs,
                         progress_start=(rnd - 1) / cfg.rounds, progress_end=rnd / cfg.rounds,
                         server_round=rnd)
        # Each training reply also carries the validation metrics of the global model the
        # site received, i.e. of the previous round's aggregate: one message per site and
        # round instead of two.
        if cfg.secagg:
            secure = _secure_round(grid, rnd, arrays, rc, cfg, max_weight, timeout)
            train_replies, new_arrays = secure.replies, secure.arrays
            train_metrics = None if secure.train_loss is None else {
                "train-loss": secure.train_loss}
            rejected, accepted = secure.rejected, secure.accepted
        else:
            train_replies = list(grid.send_and_receive(
                strategy.configure_train(rnd, arrays, rc.to_record(), grid), timeout=timeout))
        if pending is not None:
            stop = tracker.finish(*pending, train_replies, schema.n_classes)
            pending = None
            if stop:
                break
        if not cfg.secagg:
            new_arrays, train_metrics = strategy.aggregate_train(rnd, train_replies)
            rejected = list(strategy.rejected)
            accepted = len(train_replies) - len(rejected)
        record: dict[str, Any] = {"round": rnd, "rejected": rejected}
        if accepted < cfg.min_sites:
            # Sites may decline (privacy budget spent) or fail; below the minimum the
            # federation ends cleanly with the best round so far.
            reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in rejected)
            outcome.stopped = (f"round {rnd}: {accepted} usable updates, fewer than the "
                               f"{cfg.min_sites} required" + (f" ({reasons})" if reasons else ""))
            logger.warning("stopping: %s", outcome.stopped)
            outcome.rounds.append({**record, "failed": True})
            break
        if new_arrays is None:
            logger.warning("round %d: no usable update (%d replies)", rnd, len(train_replies))
            outcome.rounds.append({**record, "failed": True})
            pending = None
            continue
        arrays = new_arrays
        record["train"] = {"loss": float(train_metrics["train-loss"])} if train_metrics else {}
        record["sites"] = _site_train_records(train_replies)
        if central is not None:
            from strategies.central_dp import central_epsilon

            central["epsilon_spent"] = central_epsilon(
                central["noise_multiplier"], strategy.releases, central["delta"])
            record["central_epsilon"] = central["epsilon_spent"]
        state = arrays.to_torch_state_dict()
        if prepared_test is not None:
            model.load_state_dict(state)
            proba = predict_proba(model, prepared_test)
            metrics = classification_metrics(prepared_test.labels, proba, schema.label_names)
            record["test"] = {k: metrics[k] for k in METRIC_KEYS}
        record["seconds"] = time.perf_counter() - t0
        pending = (record, state)
    if pending is not None:  # validate the last aggregate
        rc = RoundConfig(schema, standardizer, weight, server_round=pending[0]["round"])
        eval_replies = list(grid.send_and_receive(
            strategy.configure_evaluate(pending[0]["round"], arrays, rc.to_record(), grid),
            timeout=timeout))
        tracker.finish(*pending, eval_replies, schema.n_classes)
    if outcome.best_state is None:
        raise FederationError(outcome.stopped or "no round produced a validated global model")
    for rec in outcome.rounds:
        rec["best"] = rec["round"] == outcome.best_round
    outcome.seconds = time.perf_counter() - start
    return outcome


def _secure_round(grid: Grid, rnd: int, arrays: ArrayRecord, rc: RoundConfig, cfg: RunConfig,
                  max_weight: int, timeout: float):
    """A training round aggregated with SecAgg+ (see :mod:`server.secagg`)."""
    from server.secagg import SecAggSettings, secure_train_round

    config = rc.to_record()
    # Flower's strategies add these keys themselves on the plain path.
    config["server-round"] = rnd
    if cfg.strategy == "fedprox":
        config["proximal-mu"] = cfg.proximal_mu
    return secure_train_round(grid, rnd, arrays, config, max_weight=max_weight,
                              settings=SecAggSettings(cfg.secagg_threshold, timeout=timeout))


def _site_train_records(replies: list[Message]) -> list[dict]:
    out = []
    for msg in replies:
        if not msg.has_error():
            m = msg.content[METRICS]
            if refusal_reason(msg.content) is not None:
                continue
            rec = {"site": site_name(msg.content), "n_train": int(m[NUM_EXAMPLES]),
                   "train_loss": float(m["train-loss"])}
            if "epsilon" in m:  # local DP: the site's cumulative spend after this round
                rec["epsilon"] = float(m["epsilon"])
            out.append(rec)
    return sorted(out, key=lambda r: r["site"])


class _RoundTracker:
    """Completes a round once its validation metrics arrive: best round, callbacks, stop."""

    def __init__(self, outcome: FederationOutcome, selection: str, patience: int,
                 on_round: Callable[[dict], None] | None,
                 checkpoint: Callable[[FederationOutcome, dict], None] | None) -> None:
        from common.training import BestTracker

        self.outcome, self.patience = outcome, patience
        self.on_round, self.checkpoint = on_round, checkpoint
        self.best = BestTracker(selection)

    def finish(self, record: dict, state: dict, replies: list[Message], n_classes: int) -> bool:
        """Attach pooled and per-site validation; return True when training should stop."""
        ok = [m.content for m in replies if not m.has_error() and VAL_EXAMPLES in
              next(iter(m.content.metric_records.values()), {})]
        pooled = pool_validation(ok)
        if int(pooled[VAL_EXAMPLES]) > 0:
            record["val"] = {"loss": float(pooled["val-loss"]),
                             "accuracy": float(pooled["val-accuracy"]),
                             "f1_macro": float(pooled["val-f1-macro"])}
        per_site = {r["site"]: r for r in record.get("sites", [])}
        for content in ok:
            name = site_name(content)
            per_site.setdefault(name, {"site": name})["val"] = _site_val_record(content,
                                                                                n_classes)
        record["sites"] = [per_site[k] for k in sorted(per_site)]
        outcome = self.outcome
        val = record.get("val", {"f1_macro": -np.inf, "loss": np.inf})
        if self.best.update(record["round"], val["f1_macro"], val["loss"]):
            outcome.best_round = record["round"]
            outcome.best_state = copy.deepcopy(state)
        outcome.rounds.append(record)
        logger.info("round %d: val loss %.3f, val macro-F1 %.3f%s%s", record["round"],
                    val["loss"], val["f1_macro"],
                    f", test macro-F1 {record['test']['f1_macro']:.3f}" if "test" in record
                    else "", " (best so far)" if outcome.best_round == record["round"] else "")
        if self.on_round is not None:
            self.on_round(record)
        if self.checkpoint is not None:
            self.checkpoint(outcome, state)
        stop = self.best.stale(record["round"], self.patience)
        if stop:
            logger.info("early stop after round %d (best %d)", record["round"],
                        outcome.best_round)
        return stop


def save_checkpoint(directory: Path, outcome: FederationOutcome, state: dict[str, Any]) -> None:
    """Last completed round's global weights and history (atomic replace)."""
    import torch

    from common.bundle import write_json

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".global.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / "global.pt")
    write_json(directory / "state.json", {
        "round": outcome.rounds[-1]["round"] if outcome.rounds else 0,
        "best_round": outcome.best_round,
        "rounds": outcome.rounds,
    })
