"""The coordinator's round loop.

One run: ask every site to ``describe`` itself, merge the descriptions into the
consortium setup (schema, standardizer, class weights) and send it to the sites once,
then run ``rounds`` of train -> aggregate -> federated validation (-> test evaluation in
simulation), keep the round with the best pooled validation macro-F1 (never the test
split), checkpoint after every round, and stop early after ``round_patience`` rounds
without improvement.

Each training reply also carries the validation metrics of the global model the site
received, i.e. of the previous round's aggregate: one message per site and round instead
of two. A round's record is therefore completed by the next round (or, for the last
round, by a final evaluation).

Faults (deployment): a round waits at most ``round_timeout`` seconds for its replies
and goes on with the sites that answered (Flower also answers, with an error, for a
site it has marked offline after missed heartbeats); below ``min_sites`` usable
updates, or fewer than ``min_sites`` connected sites for ``round_timeout`` seconds, the
run ends cleanly with the best round so far. A site that comes back is sampled again
from the next round. The checkpoint (:class:`Checkpoint`) holds everything needed to
continue after the last completed round when the coordinator restarts (``resume``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from common.config import RunConfig
from common.dataset.multiomics import MultiOmicsData
from common.protocol import TRAIN_LOSS, RoundConfig
from server.rounds.admission import Membership
from server.rounds.checkpoint import Checkpoint, restore_strategy
from server.rounds.consortium import form_consortium
from server.rounds.exchange import wait_for_sites
from server.rounds.executor import RoundExecutor, TrainResult
from server.rounds.outcome import FederationError, FederationOutcome
from server.rounds.records import RoundRecord
from server.rounds.spend_book import SpendBook
from server.rounds.tracking import RoundTracker

logger = logging.getLogger(__name__)


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    *,
    test: MultiOmicsData | None = None,
    checkpoint: Callable[[Checkpoint], None] | None = None,
    on_round: Callable[[dict], None] | None = None,
    timeout: float | None = None,
    resume: Checkpoint | None = None,
    spend_book: SpendBook | None = None,
) -> FederationOutcome:
    """Run the whole federation on ``grid``; ``test`` (simulation only) is for reporting.

    ``timeout`` (default ``cfg.round_timeout``) bounds every wait for sites or replies.
    With ``resume``, the consortium setup and the history come from the checkpoint, and
    training continues after its round. ``spend_book`` (deployment) carries the sites'
    epsilon from earlier runs into this run's round configs.
    """
    run = _Run(grid, cfg, cfg.round_timeout if timeout is None else timeout, test, resume,
               on_round, checkpoint, spend_book)
    pending: tuple[RoundRecord, dict] | None = None  # a round awaiting its validation
    for rnd in range(run.first_round, cfg.rounds + 1):
        if not run.sites_connected(rnd):
            break
        collected = run.executor.collect_train(rnd, run.arrays, run.round_record(rnd))
        if pending is not None:  # checkpointed before the strategy aggregates this round
            stop = run.tracker.finish(*pending, collected.replies)
            pending = None
            if stop:
                break
        result = run.executor.aggregate_train(collected)
        record = RoundRecord(rnd, rejected=result.rejected, update_bytes=result.update_bytes)
        if result.accepted < cfg.min_sites:
            # Sites may decline (privacy budget spent) or fail; below the minimum the
            # federation ends cleanly with the best round so far.
            run.stop_below_minimum(record, result)
            break
        if result.arrays is None:
            logger.warning("round %d: no usable update (%d replies)", rnd, len(result.replies))
            run.tracker.fail(record)
            continue
        pending = run.aggregated(record, result)
    if pending is not None:  # validate the last aggregate
        replies = run.executor.evaluate(pending[0].round, run.arrays,
                                        run.round_record(pending[0].round))
        if run.distributed is not None or run.local_plan is not None:
            pending[0].add_spent(replies)
        run.tracker.finish(*pending, replies)
    return run.finish()


class _Run:
    """The state of one federation between rounds."""

    def __init__(self, grid: Grid, cfg: RunConfig, timeout: float,
                 test: MultiOmicsData | None, resume: Checkpoint | None,
                 on_round: Callable[[dict], None] | None,
                 checkpoint: Callable[[Checkpoint], None] | None,
                 spend_book: SpendBook | None) -> None:
        from common.model import ModelSpec, build_model
        from common.training import seed_everything
        from server.secagg import SecAggSettings
        from strategies import strategy_for_run

        self.grid, self.cfg, self.timeout = grid, cfg, timeout
        self.spend_book = spend_book  # deployment: spend from earlier runs
        self.start = time.perf_counter()
        self.prior_seconds = resume.seconds if resume is not None else 0.0
        if resume is None:
            import uuid

            spend = dict(spend_book.spent) if spend_book is not None else {}
            self.outcome = form_consortium(grid, cfg, timeout, run_key=uuid.uuid4().hex,
                                           spend=spend)
        else:
            resume.check_compatible(cfg)
            self.outcome = resume.restored_outcome()
            logger.info("resuming after round %d of %d (best round so far: %d)", resume.round,
                        cfg.rounds, resume.best_round)
        nodes = wait_for_sites(grid, cfg.min_sites, timeout)
        seed_everything(cfg.seed)
        self.model = build_model(ModelSpec.for_schema(cfg.model, self.outcome.schema))
        self.arrays = ArrayRecord(self.model.state_dict() if resume is None
                                  else resume.global_state)
        self.central = self._central_dp(resume)
        self.strategy = strategy_for_run(
            cfg, **({"noise_multiplier": self.central["noise_multiplier"]}
                    if self.central else {}))
        self.strategy.register_sites(self.outcome.sites)  # declared sizes are checked
        self.distributed = None
        # Local DP with DP-SGD: the plan of the noised counts and validation.
        self.local_plan = None
        if self.outcome.local_dp is not None and self.outcome.distributed_dp is None:
            from common.distributed_dp import NoisePlan

            self.local_plan = NoisePlan(**self.outcome.local_dp["noise_plan"])
        if self.outcome.distributed_dp is not None:
            from server.rounds.distributed import DistributedRun, secagg_settings

            self.distributed = DistributedRun.of(
                self.outcome.distributed_dp, cfg, self.outcome.schema.n_classes,
                sum(self.outcome.schema.feature_counts().values()))
            # Local DP's sums carry every site's full noise: added up in clear.
            secagg = (None if self.outcome.local_dp is not None
                      else secagg_settings(timeout, self.distributed.plan))
            max_weight = 1  # every site's noised sum counts once
        else:
            secagg = (SecAggSettings(cfg.secagg_threshold, timeout=timeout)
                      if cfg.secure_aggregation else None)
            # SecAgg+ fixed-point weight range: the largest site's training patients
            # (under local DP, the noised counts the sites weigh their updates by).
            patients = self.outcome.setup.site_patients
            max_weight = (max(s["n_train"] for s in self.outcome.sites) if patients is None
                          else max(round(n) for n in patients.values()))
        membership = Membership(grid, self.outcome, timeout,
                                on_join=self.strategy.register_sites)
        self.executor = RoundExecutor(grid, self.strategy, self.outcome.setup,
                                      timeout=timeout, secagg=secagg, max_weight=max_weight,
                                      distributed=self.distributed, membership=membership,
                                      local_validation=self.local_plan is not None)
        self.executor.ensure_setup(sorted(membership.members_among(nodes)))
        self.test = (self.outcome.standardizer.transform(test.align_to(self.outcome.schema,
                                                                       "test split"))
                     if test is not None else None)
        self.tracker = RoundTracker(self.outcome, cfg.train.selection, cfg.round_patience,
                                    on_round, self._saver(checkpoint),
                                    latest=(self.distributed is not None
                                            or self.local_plan is not None))
        self.first_round = 1
        if resume is not None:
            self.tracker.best.restore(resume.selection)
            restore_strategy(self.strategy, resume.strategy)
            self.first_round = resume.round + 1
            if self.tracker.stopped_early(resume.round):
                self.first_round = cfg.rounds + 1
        else:
            self.outcome.setup_seconds = time.perf_counter() - self.start

    def _central_dp(self, resume: Checkpoint | None) -> dict | None:
        """Central DP's calibration: from the checkpoint, or calibrated now."""
        cfg = self.cfg
        if resume is not None and resume.central_dp is not None:
            return self.outcome.central_dp  # the noise calibrated when the run started
        if cfg.dp != "central":
            return None
        from strategies.central_dp import calibrate_central_noise

        delta = cfg.delta or 1.0 / (10 * len(self.outcome.sites))
        central = {"epsilon_budget": cfg.epsilon, "delta": delta,
                   "noise_multiplier": calibrate_central_noise(cfg.epsilon, delta, cfg.rounds),
                   "clipping_norm": cfg.max_grad_norm}
        self.outcome.central_dp = central
        logger.info("central DP: noise multiplier %.3f for epsilon %g over %d rounds",
                    central["noise_multiplier"], cfg.epsilon, cfg.rounds)
        return central

    def _saver(self, checkpoint: Callable[[Checkpoint], None] | None
               ) -> Callable[[dict], None] | None:
        if checkpoint is None:
            return None

        def save(state: dict) -> None:
            ckpt = Checkpoint.of_run(self.outcome, state, self.cfg, self.tracker.best.state(),
                                     self.strategy, self.elapsed())
            try:
                checkpoint(ckpt)
            except OSError as exc:
                # A full disk or a lost permission must not end the run: the checkpoint is
                # replaced atomically, so the last good one stays for a resume.
                logger.error("round %d: checkpoint not written (%s); the run goes on, and "
                             "a resume would start after the last checkpoint written",
                             ckpt.round, exc)

        return save

    def elapsed(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.start

    def round_config(self, rnd: int) -> RoundConfig:
        cfg = self.cfg
        return RoundConfig(self.outcome.setup.digest(), local_epochs=cfg.local_epochs,
                           progress_start=(rnd - 1) / cfg.rounds, progress_end=rnd / cfg.rounds,
                           server_round=rnd,
                           noise_plan=(self.distributed.plan if self.distributed
                                       else self.local_plan))

    def round_record(self, rnd: int) -> ConfigRecord:
        """The round's config as sent: :meth:`round_config` plus the run's key and each
        site's epsilon recorded so far, which a site checks its ledger against."""
        from common.spend_record import with_account

        return with_account(self.round_config(rnd).to_record(), self.outcome.run_key,
                            self.noted_spend())

    def noted_spend(self) -> dict[str, float]:
        """Each site's epsilon as reported in this run, kept in the spend book if there
        is one, and never below what the book recorded in earlier runs."""
        from server.outputs import per_site_epsilon

        spend = per_site_epsilon(self.outcome.rounds)
        if self.spend_book is None:
            return spend
        self.spend_book.note(spend)
        return dict(self.spend_book.spent)

    def sites_connected(self, rnd: int) -> bool:
        """Wait for ``min_sites``; False (and the reason recorded) when they do not come.

        Flower's node sampling would wait for absent sites forever.
        """
        self.round_started = time.perf_counter()
        try:
            wait_for_sites(self.grid, self.cfg.min_sites, self.timeout)
        except FederationError as exc:
            self.outcome.stopped = f"round {rnd}: {exc}"
            logger.warning("stopping: %s", self.outcome.stopped)
            return False
        return True

    def stop_below_minimum(self, record: RoundRecord, result: TrainResult) -> None:
        reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in result.rejected)
        self.outcome.stopped = (f"round {record.round}: {result.accepted} usable updates, fewer "
                                f"than the {self.cfg.min_sites} required"
                                + (f" ({reasons})" if reasons else ""))
        logger.warning("stopping: %s", self.outcome.stopped)
        self.tracker.fail(record)

    def aggregated(self, record: RoundRecord, result: TrainResult
                   ) -> tuple[RoundRecord, dict[str, Any]]:
        """Adopt the round's aggregate; the record and weights await validation."""
        from common.metrics import METRIC_KEYS, classification_metrics
        from common.training import predict_proba

        assert result.arrays is not None
        self.arrays = result.arrays
        if result.metrics is not None and TRAIN_LOSS in result.metrics:
            record.train_loss = float(result.metrics[TRAIN_LOSS])
        record.add_training(result.replies)
        if self.central is not None:
            from strategies.central_dp import central_epsilon

            self.central["epsilon_spent"] = central_epsilon(
                self.central["noise_multiplier"], self.strategy.releases, self.central["delta"])
            record.central_epsilon = self.central["epsilon_spent"]
        state = self.arrays.to_torch_state_dict()
        if self.test is not None:
            self.model.load_state_dict(state)
            proba = predict_proba(self.model, self.test)
            metrics = classification_metrics(self.test.labels, proba,
                                             self.outcome.schema.label_names)
            record.test = {k: metrics[k] for k in METRIC_KEYS}
        record.seconds = time.perf_counter() - self.round_started
        return record, state

    def finish(self) -> FederationOutcome:
        outcome = self.outcome
        if outcome.best_state is None:
            raise FederationError(outcome.stopped or "no round produced a validated global model")
        for rec in outcome.rounds:
            rec["best"] = rec["round"] == outcome.best_round
        self.noted_spend()
        outcome.seconds = self.elapsed()
        return outcome
