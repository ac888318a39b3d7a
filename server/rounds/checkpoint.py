"""Checkpoints: the state after the last completed round, to resume a run exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_torch_atomic
from common.config import RunConfig
from common.consortium_setup import ConsortiumSetup
from common.preprocessing import Standardizer
from common.schema import FeatureSchema
from server.rounds.outcome import FederationError, FederationOutcome

CHECKPOINT_FILE = "checkpoint.pt"
GLOBAL_WEIGHTS_FILE = "global.pt"
SUMMARY_FILE = "state.json"
CHECKPOINT_FORMAT = 1
# Run settings a resumed run must share with its checkpoint: anything else would mix two
# different experiments in one history.
RESUME_KEYS = ("data", "partition", "sites", "strategy", "proximal_mu", "seed", "dp",
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
    selection: dict  # model selection (BestTracker.state()): best key and round
    strategy: dict  # aggregation state: central DP releases, noise RNG, server momentum
    central_dp: dict | None
    config: dict  # RunConfig.to_dict() of the run that wrote it
    resumed_from: list[int] = field(default_factory=list)
    seconds: float = 0.0
    setup_seconds: float = 0.0
    class_prior: list[float] | None = None  # distributed DP: from the noised class counts
    distributed_dp: dict | None = None
    local_dp: dict | None = None
    site_patients: dict[str, float] | None = None  # local DP: the setup's noised counts
    run_key: str = ""  # "" in checkpoints written before runs had a key: a new one is drawn
    members: dict[int, str] = field(default_factory=dict)  # node id -> site taking part
    format: int = CHECKPOINT_FORMAT

    def check_compatible(self, cfg: RunConfig) -> None:
        """Raise :class:`FederationError` naming every setting that differs."""
        saved, now = self.config, cfg.to_dict()
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
                 for k in RESUME_KEYS if saved.get(k) != now[k]]
        if diffs:
            raise FederationError("cannot resume: the run config differs from the "
                                  "checkpoint's (" + "; ".join(diffs) + ")")

    def consortium_setup(self) -> ConsortiumSetup:
        standardizer = Standardizer.from_arrays(
            {k: np.asarray(v, dtype=np.float32) for k, v in self.standardizer.items()})
        prior = (None if self.class_prior is None
                 else np.asarray(self.class_prior, dtype=np.float32))
        return ConsortiumSetup(FeatureSchema.from_dict(self.schema), standardizer,
                               np.asarray(self.class_weight, dtype=np.float32), prior,
                               None if self.site_patients is None else dict(self.site_patients))

    def restored_outcome(self) -> FederationOutcome:
        """The outcome so far, as the run that wrote this checkpoint left it."""
        return FederationOutcome(
            self.consortium_setup(), list(self.sites), rounds=list(self.rounds),
            best_round=self.best_round, best_state=self.best_state,
            setup_seconds=self.setup_seconds,
            central_dp=dict(self.central_dp) if self.central_dp is not None else None,
            distributed_dp=(dict(self.distributed_dp) if self.distributed_dp is not None
                            else None),
            local_dp=dict(self.local_dp) if self.local_dp is not None else None,
            resumed_from=[*self.resumed_from, self.round], members=dict(self.members),
            **({"run_key": self.run_key} if self.run_key else {}),
        )

    @classmethod
    def of_run(cls, outcome: FederationOutcome, state: dict[str, Any], cfg: RunConfig,
               selection: dict, strategy: Any, seconds: float) -> Checkpoint:
        """The checkpoint after the last round in ``outcome`` (global weights ``state``)."""
        assert outcome.best_state is not None
        return cls(
            round=outcome.rounds[-1]["round"], global_state=state,
            best_round=outcome.best_round, best_state=outcome.best_state,
            rounds=outcome.rounds, sites=outcome.sites, schema=outcome.schema.to_dict(),
            standardizer={k: [float(x) for x in np.ravel(v)]
                          for k, v in outcome.standardizer.to_arrays().items()},
            class_weight=[float(w) for w in outcome.class_weight],
            selection=selection, strategy=strategy_state(strategy),
            central_dp=outcome.central_dp, config=cfg.to_dict(),
            resumed_from=outcome.resumed_from, seconds=seconds,
            setup_seconds=outcome.setup_seconds,
            distributed_dp=outcome.distributed_dp, local_dp=outcome.local_dp,
            site_patients=outcome.setup.site_patients, run_key=outcome.run_key,
            members=dict(outcome.members),
            class_prior=(None if outcome.setup.class_prior is None
                         else [float(p) for p in outcome.setup.class_prior]),
        )


def strategy_state(strategy: Any) -> dict:
    """What a strategy accumulates over rounds: central DP releases and noise RNG state,
    FedAvgM's momentum, FedAdam's and FedYogi's moments (as tensors: checkpoints load
    with ``weights_only``), and the update guard's per-site rejection counts."""
    import torch

    state: dict[str, Any] = {}
    if hasattr(strategy, "releases"):
        state["releases"] = int(strategy.releases)
    rng = getattr(strategy, "_rng", None)
    if rng is not None:
        state["rng"] = rng.bit_generator.state
    momentum = getattr(strategy, "momentum_vector", None)
    if momentum is not None:
        state["momentum"] = [torch.from_numpy(np.array(v, copy=True)) for v in momentum]
    for moment in ("m_t", "v_t"):  # Flower's FedAdam / FedYogi server moments
        values = getattr(strategy, moment, None)
        if values:
            state[moment] = {k: torch.from_numpy(np.array(v, copy=True))
                             for k, v in values.items()}
    counts = getattr(strategy, "rejection_counts", None)
    if counts:
        state["rejections"] = {str(site): int(n) for site, n in counts.items()}
    return state


def restore_strategy(strategy: Any, state: dict) -> None:
    """Continue ``strategy`` from a :func:`strategy_state` saved earlier."""
    if "releases" in state:
        strategy.releases = int(state["releases"])
    if "rng" in state and getattr(strategy, "_rng", None) is not None:
        strategy._rng.bit_generator.state = state["rng"]
    if "momentum" in state and hasattr(strategy, "momentum_vector"):
        strategy.momentum_vector = [t.numpy() for t in state["momentum"]]
    for moment in ("m_t", "v_t"):
        if moment in state and hasattr(strategy, moment):
            setattr(strategy, moment, {k: t.numpy() for k, t in state[moment].items()})
    if "rejections" in state and hasattr(strategy, "rejection_counts"):
        strategy.rejection_counts.update(state["rejections"])


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint (atomic replace), the global weights and a readable summary."""
    from common.bundle import write_json
    from server.outputs import per_site_epsilon

    directory.mkdir(parents=True, exist_ok=True)
    write_torch_atomic(directory / CHECKPOINT_FILE, dataclasses.asdict(ckpt))
    write_torch_atomic(directory / GLOBAL_WEIGHTS_FILE, ckpt.global_state)
    write_json(directory / SUMMARY_FILE, {
        "round": ckpt.round,
        "best_round": ckpt.best_round,
        "resumed_from": ckpt.resumed_from,
        "strategy": {k: v for k, v in ckpt.strategy.items() if k in ("releases",)},
        "ledgers": {"per_site_epsilon": per_site_epsilon(ckpt.rounds) or None,
                    "central_dp": ckpt.central_dp},
        "rounds": ckpt.rounds,
    })


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
