"""The coordinator's round loop.

One run: ask every site to ``describe`` itself (schema, class counts, feature sums),
merge those into the consortium schema, the standardizer and the class weights, then
run ``rounds`` of train -> aggregate -> federated validation (-> test evaluation in
simulation), keep the round with the best pooled validation macro-F1 (never the test
split), checkpoint after every round, and stop early after ``round_patience`` rounds
without improvement.

Faults (deployment): a round waits at most ``round_timeout`` seconds for its replies
and goes on with the sites that answered (Flower also answers, with an error, for a
site it has marked offline after missed heartbeats); below ``min_sites`` usable
updates, or fewer than ``min_sites`` connected sites for ``round_timeout`` seconds, the
run ends cleanly with the best round so far. A site that comes back is sampled again
from the next round. The checkpoint (:class:`Checkpoint`) holds everything needed to
continue after the last completed round when the coordinator restarts (``resume``).
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
from server.monitoring import update_sizes
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
    resumed_from: list[int] = field(default_factory=list)  # last completed round at restarts


CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Run settings a resumed run must share with its checkpoint: anything else would mix two
# different experiments in one history.
_RESUME_KEYS = ("data", "partition", "sites", "strategy", "proximal_mu", "seed", "dp",
                "epsilon", "delta", "max_grad_norm", "model", "train", "local_epochs")


@dataclass
class Checkpoint:
    """The state after the last completed round: enough to continue the run exactly.

    Saved as one torch file replaced atomically, so a crash leaves the previous
    checkpoint or the new one, never a mix; ``state.json`` beside it is a readable
    summary and is never read back.
    """

    round: int
    global_state: dict[str, Any]  # global weights after ``round`` (what the next round sends)
    best_round: int
    best_state: dict[str, Any]
    rounds: list[dict]
    sites: list[dict]
    schema: dict
    standardizer: dict[str, list[float]]
    class_weight: list[float]
    selection: dict  # model selection (BestTracker): best key and round
    strategy: dict  # aggregation state: central DP releases and noise RNG
    central_dp: dict | None
    config: dict  # RunConfig.to_dict() of the run that wrote it
    resumed_from: list[int] = field(default_factory=list)
    seconds: float = 0.0
    setup_seconds: float = 0.0
    format: int = CHECKPOINT_FORMAT

    def check_compatible(self, cfg: RunConfig) -> None:
        """Raise :class:`FederationError` naming every setting that differs."""
        saved, now = self.config, cfg.to_dict()
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
                 for k in _RESUME_KEYS if saved.get(k) != now[k]]
        if diffs:
            raise FederationError("cannot resume: the run config differs from the "
                                  "checkpoint's (" + "; ".join(diffs) + ")")


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


def exchange(grid: Grid, messages: list[Message], timeout: float
             ) -> tuple[list[Message], list[int]]:
    """Send ``messages`` and collect the replies: ``(replies, nodes lost)``.

    Like ``Grid.send_and_receive``, but a site whose node goes offline while its message
    is out (Flower: missed heartbeats) is given up at once, even if it reconnects later:
    a restarted SuperNode never answers a message its previous process had taken, so
    waiting for it would hold the round until ``timeout``. Polls quickly at first (the
    simulation answers in milliseconds) and every second at most (deployment).
    """
    if not messages:
        return [], []
    ids = list(grid.push_messages(messages))
    if len(ids) == len(messages):
        destination = {mid: msg.metadata.dst_node_id
                       for mid, msg in zip(ids, messages, strict=True)}
    else:  # some could not be stored: keep those that were (the grid set their ids)
        destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages
                       if m.metadata.message_id in set(ids)}
    pending, replies, lost = set(destination), [], []
    deadline = time.monotonic() + timeout
    poll = 0.02
    while pending:
        for reply in grid.pull_messages(pending):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if not pending:
            break
        online = set(grid.get_node_ids())
        for mid in [m for m in pending if destination[m] not in online]:
            lost.append(destination[mid])
            pending.discard(mid)
            logger.warning("node %s went offline with its message out; going on without it",
                           destination[mid])
        if pending and time.monotonic() > deadline:
            lost += [destination[m] for m in pending]
            logger.warning("no reply from node(s) %s within %g s; going on without them",
                           sorted(destination[m] for m in pending), timeout)
            break
        time.sleep(poll)
        poll = min(poll * 1.5, 1.0)
    return replies, lost


def describe_sites(grid: Grid, nodes: list[int], timeout: float) -> list[SiteDescription]:
    messages = [
        Message(content=RecordDict({CONFIG: ConfigRecord({QUERY_KIND: DESCRIBE})}),
                message_type=MessageType.QUERY, dst_node_id=node)
        for node in nodes
    ]
    out = []
    for reply in exchange(grid, messages, timeout)[0]:
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
    checkpoint: Callable[[Checkpoint], None] | None = None,
    on_round: Callable[[dict], None] | None = None,
    timeout: float | None = None,
    resume: Checkpoint | None = None,
) -> FederationOutcome:
    """Run the whole federation on ``grid``; ``test`` (simulation only) is for reporting.

    ``timeout`` (default ``cfg.round_timeout``) bounds every wait for sites or replies.
    With ``resume``, the consortium setup (schema, standardizer, class weights) and the
    history come from the checkpoint, and training continues after its round.
    """
    from common.metrics import METRIC_KEYS, classification_metrics
    from common.model import ModelSpec, build_model
    from common.training import predict_proba, seed_everything
    from strategies import build_strategy

    timeout = cfg.round_timeout if timeout is None else timeout
    start = time.perf_counter()
    if resume is None:
        outcome = _consortium(grid, cfg, timeout)
    else:
        resume.check_compatible(cfg)
        outcome = _restored(resume)
        logger.info("resuming after round %d of %d (best round so far: %d)", resume.round,
                    cfg.rounds, resume.best_round)
        wait_for_sites(grid, cfg.min_sites, timeout)
    schema, standardizer, weight = outcome.schema, outcome.standardizer, outcome.class_weight
    max_weight = max(s["n_train"] for s in outcome.sites)  # SecAgg+ fixed-point weight range

    seed_everything(cfg.seed)
    model = build_model(ModelSpec.for_schema(cfg.model, schema))
    arrays = ArrayRecord(model.state_dict() if resume is None else resume.global_state)
    central = None
    if resume is not None and resume.central_dp is not None:
        central = outcome.central_dp  # the noise calibrated when the run started
    elif cfg.dp == "central":
        from strategies.central_dp import calibrate_central_noise

        delta = cfg.delta or 1.0 / (10 * len(outcome.sites))
        central = {"epsilon_budget": cfg.epsilon, "delta": delta,
                   "noise_multiplier": calibrate_central_noise(cfg.epsilon, delta, cfg.rounds),
                   "clipping_norm": cfg.max_grad_norm}
        outcome.central_dp = central
        logger.info("central DP: noise multiplier %.3f for epsilon %g over %d rounds",
                    central["noise_multiplier"], cfg.epsilon, cfg.rounds)
    strategy = build_strategy(
        "central-dp" if central else cfg.strategy, fraction_train=cfg.fraction_train,
        min_sites=cfg.min_sites, proximal_mu=cfg.proximal_mu, seed=cfg.seed,
        server_momentum=cfg.server_momentum,
        noise_multiplier=central["noise_multiplier"] if central else 0.0,
        clipping_norm=cfg.max_grad_norm,
    )
    prepared_test = standardizer.transform(test.align_to(schema, "test split")) \
        if test is not None else None
    tracker = _RoundTracker(outcome, cfg.train.selection, cfg.round_patience, on_round)
    first = 1
    if resume is not None:
        tracker.restore(resume.selection)
        _restore_strategy(strategy, resume.strategy)
        first = resume.round + 1
        if tracker.best.stale(resume.round, cfg.round_patience):
            first = cfg.rounds + 1  # the run had already stopped early
    prior = resume.seconds if resume is not None else 0.0
    if checkpoint is not None:
        def save(o: FederationOutcome, state: dict) -> None:
            checkpoint(_checkpoint(o, state, cfg, tracker, strategy,
                                   prior + time.perf_counter() - start))

        tracker.checkpoint = save
    pending: tuple[dict, dict] | None = None  # (record, weights) of a round awaiting validation
    names: dict[int, str] = {}  # node id -> site name, from the replies seen so far
    if resume is None:
        outcome.setup_seconds = time.perf_counter() - start
    for rnd in range(first, cfg.rounds + 1):
        t0 = time.perf_counter()
        try:  # Flower's node sampling would wait for absent sites forever
            wait_for_sites(grid, cfg.min_sites, timeout)
        except FederationError as exc:
            outcome.stopped = f"round {rnd}: {exc}"
            logger.warning("stopping: %s", outcome.stopped)
            break
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
            train_replies, lost = exchange(
                grid, list(strategy.configure_train(rnd, arrays, rc.to_record(), grid)),
                timeout)
        names.update(_node_names(train_replies))
        if pending is not None:
            stop = tracker.finish(*pending, train_replies, schema.n_classes)
            pending = None
            if stop:
                break
        if not cfg.secagg:
            new_arrays, train_metrics = strategy.aggregate_train(rnd, train_replies)
            accepted = len(train_replies) - len(strategy.rejected)
            rejected = list(strategy.rejected) + [
                {"site": names.get(node, "?"), "node": node,
                 "reason": "no reply: the site went offline or timed out mid-round"}
                for node in lost]
        record: dict[str, Any] = {"round": rnd, "rejected": rejected}
        if not cfg.secagg:  # under SecAgg+ the coordinator never sees one site's update
            record["update_bytes"] = update_sizes(train_replies)
        if accepted < cfg.min_sites:
            # Sites may decline (privacy budget spent) or fail; below the minimum the
            # federation ends cleanly with the best round so far.
            reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in rejected)
            outcome.stopped = (f"round {rnd}: {accepted} usable updates, fewer than the "
                               f"{cfg.min_sites} required" + (f" ({reasons})" if reasons else ""))
            logger.warning("stopping: %s", outcome.stopped)
            _failed_round(outcome, record, on_round)
            break
        if new_arrays is None:
            logger.warning("round %d: no usable update (%d replies)", rnd, len(train_replies))
            _failed_round(outcome, record, on_round)
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
        eval_replies, _ = exchange(
            grid, list(strategy.configure_evaluate(pending[0]["round"], arrays,
                                                   rc.to_record(), grid)), timeout)
        tracker.finish(*pending, eval_replies, schema.n_classes)
    if outcome.best_state is None:
        raise FederationError(outcome.stopped or "no round produced a validated global model")
    for rec in outcome.rounds:
        rec["best"] = rec["round"] == outcome.best_round
    outcome.seconds = prior + time.perf_counter() - start
    return outcome


def _consortium(grid: Grid, cfg: RunConfig, timeout: float) -> FederationOutcome:
    """Ask the sites to describe themselves; merge schema, standardizer, class weights."""
    from common.training import class_weights

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
    logger.info("%d sites, %d training patients; classes %s", len(sites), int(counts.sum()),
                dict(zip(schema.label_names, counts.tolist(), strict=True)))
    return FederationOutcome(schema, standardizer, weight, sites)


def _restored(ckpt: Checkpoint) -> FederationOutcome:
    standardizer = Standardizer.from_arrays(
        {k: np.asarray(v, dtype=np.float32) for k, v in ckpt.standardizer.items()})
    return FederationOutcome(
        FeatureSchema.from_dict(ckpt.schema), standardizer,
        np.asarray(ckpt.class_weight, dtype=np.float32), list(ckpt.sites),
        rounds=list(ckpt.rounds), best_round=ckpt.best_round, best_state=ckpt.best_state,
        setup_seconds=ckpt.setup_seconds,
        central_dp=dict(ckpt.central_dp) if ckpt.central_dp is not None else None,
        resumed_from=[*ckpt.resumed_from, ckpt.round],
    )


def _strategy_state(strategy: Any) -> dict:
    state: dict[str, Any] = {}
    if hasattr(strategy, "releases"):
        state["releases"] = int(strategy.releases)
    rng = getattr(strategy, "_rng", None)
    if rng is not None:
        state["rng"] = rng.bit_generator.state
    return state


def _restore_strategy(strategy: Any, state: dict) -> None:
    if "releases" in state:
        strategy.releases = int(state["releases"])
    if "rng" in state and getattr(strategy, "_rng", None) is not None:
        strategy._rng.bit_generator.state = state["rng"]


def _checkpoint(outcome: FederationOutcome, state: dict, cfg: RunConfig,
                tracker: _RoundTracker, strategy: Any, seconds: float) -> Checkpoint:
    assert outcome.best_state is not None
    return Checkpoint(
        round=outcome.rounds[-1]["round"], global_state=state, best_round=outcome.best_round,
        best_state=outcome.best_state, rounds=outcome.rounds, sites=outcome.sites,
        schema=outcome.schema.to_dict(),
        standardizer={k: [float(x) for x in np.ravel(v)]
                      for k, v in outcome.standardizer.to_arrays().items()},
        class_weight=[float(w) for w in outcome.class_weight],
        selection=tracker.snapshot(), strategy=_strategy_state(strategy),
        central_dp=outcome.central_dp, config=cfg.to_dict(),
        resumed_from=outcome.resumed_from, seconds=seconds,
        setup_seconds=outcome.setup_seconds,
    )


def _failed_round(outcome: FederationOutcome, record: dict,
                  on_round: Callable[[dict], None] | None) -> None:
    failed = {**record, "failed": True}
    outcome.rounds.append(failed)
    if on_round is not None:
        on_round(failed)


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


def _node_names(replies: list[Message]) -> dict[int, str]:
    return {m.metadata.src_node_id: site_name(m.content) for m in replies
            if not m.has_error()}


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
                 checkpoint: Callable[[FederationOutcome, dict], None] | None = None) -> None:
        from common.training import BestTracker

        self.outcome, self.patience = outcome, patience
        self.on_round, self.checkpoint = on_round, checkpoint
        self.best = BestTracker(selection)

    def snapshot(self) -> dict:
        return {"best": [float(v) for v in self.best._best], "best_step": self.best.best_step}

    def restore(self, saved: dict) -> None:
        self.best._best = tuple(float(v) for v in saved["best"])
        self.best.best_step = int(saved["best_step"])

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


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint (atomic replace), the global weights and a readable summary."""
    import dataclasses

    from common.bundle import write_json
    from server.outputs import per_site_epsilon

    directory.mkdir(parents=True, exist_ok=True)
    _torch_save_atomic(dataclasses.asdict(ckpt), directory / CHECKPOINT_FILE)
    _torch_save_atomic(ckpt.global_state, directory / "global.pt")
    write_json(directory / "state.json", {
        "round": ckpt.round,
        "best_round": ckpt.best_round,
        "resumed_from": ckpt.resumed_from,
        "strategy": {k: v for k, v in ckpt.strategy.items() if k != "rng"},
        "ledgers": {"per_site_epsilon": per_site_epsilon(ckpt.rounds) or None,
                    "central_dp": ckpt.central_dp},
        "rounds": ckpt.rounds,
    })


def _torch_save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory``; None when there is none (no round completed)."""
    import torch

    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise FederationError(f"checkpoint {path} cannot be read ({exc}); move it away "
                              "to start the run over") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise FederationError(f"checkpoint {path} has an unknown format")
    return Checkpoint(**data)
