"""Run configuration: one dataclass, one set of defaults, for the CLI and Flower.

Flower's run config is a flat ``{"kebab-key": scalar}`` mapping (``flwr run
--run-config``, ``[tool.flwr.app.config]``); :meth:`RunConfig.to_flower` and
:meth:`RunConfig.from_flower` translate. Model and optimiser settings are nested
dataclasses flattened with ``model.`` and ``train.`` prefixes.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

DP_MODES = ("none", "local", "central", "distributed")
SITE_STATE_DIR = "site-state"  # simulation: the virtual hospitals' state, in the run directory
# Distributed DP's default model: the class-centroid classifier (common.centroid), fit
# from two noised sums in two rounds; it beat the transformer's noised gradient steps on
# pooled validation macro-F1 of the bundled BRCA federation at epsilon 3 and 8
# (docs/privacy.md). Its clipping radius of deviations (relative to the largest norm of
# a patient's vector, 1) was chosen by cross-validation inside the training split.
CENTROID_KIND = "centroid"
CENTROID_ROUNDS = 2
CENTROID_RADIUS = 0.5
# Class sums in a random projection of this many dimensions when noise would swamp the
# rarest class's centroid in the full feature space (common.centroid.projection_for);
# both chosen on validation splits of the privacy benchmark.
CENTROID_PROJECTION = 32
CENTROID_PROJECTION_NOISE = 2.0
# The transformer's width, step size and rounds under distributed DP: chosen on pooled
# validation macro-F1 of the same federation.
DISTRIBUTED_D_MODEL = 16
DISTRIBUTED_LR = 2.0
DISTRIBUTED_ROUNDS = 40
GRADIENT_CLIP = 1.0  # clipping bound of gradients and updates (every other case)
# Update vetting of runs without DP, where the coordinator reads every update: the
# direction check and quarantine after one rejected round kept out sign-flip, noise and
# label-flip by up to 3 of 12 BRCA hospitals while rejecting the fewest honest sites
# over six seeds (0.25 rejected honest hospitals of ordinary heterogeneity in round 2;
# docs/federation.md, "Robust default for runs without SecAgg+").
NO_DP_DIRECTION_RATIO = 0.1
NO_DP_QUARANTINE_AFTER = 1
# The direction check's floor (strategies.guard): below this cosine an update points
# against the others' median whatever the round's median. Label-flipped updates reached
# -.24 to -.44 from round 3 (BRCA, robustness benchmark); honest ones not below -.11
# (round 9 of the full no-DP schedule, where a floor of -0.1 rejected two of them).
OPPOSED_DIRECTION = -0.2


def offline_flower_env(flwr_home: Path | None = None) -> None:
    """Keep Flower from installing packages, checking for updates or sending telemetry."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    if flwr_home is not None:
        os.environ.setdefault("FLWR_HOME", str(flwr_home))


def _reject_unknown(kind: str, given: Any, valid: Any) -> None:
    """Raise naming every unknown key and listing the valid ones."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} key(s) {', '.join(map(repr, unknown))}; "
                         f"valid keys: {', '.join(valid)}")


class _Section:
    """A nested config section in plain dict form."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = False) -> Self:
        """``strict``: reject unknown keys (user input); otherwise drop them, so model
        bundles written by other versions still load."""
        fields_ = cls.__dataclass_fields__  # type: ignore[attr-defined]
        if strict:
            _reject_unknown(f"{cls.__name__}", d, fields_)
        return cls(**{k: v for k, v in d.items() if k in fields_})


@dataclass
class ModelConfig(_Section):
    """Architecture hyper-parameters (stored in every model bundle).

    The defaults are the architecture of runs without local DP; private runs use
    :meth:`for_local_dp`.
    """

    # The architecture: "mmt" (the multi-modal transformer) or another registered kind.
    kind: str = "mmt"
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 1
    ffn_mult: int = 2
    tokens_per_modality: int = 2
    # mmt: each modality's located features, in genome order, cut into this many
    # contiguous groups, one token each with a (chromosome, position) encoding
    # (common.genome_tokens); 0: learned soft groups of tokens_per_modality tokens.
    genome_tokens: int = 0
    dropout: float = 0.2
    attention_dropout: float = 0.1
    # Probability of hiding a whole modality from a patient during training, so the
    # model learns to predict when a hospital or test split lacks one.
    modality_dropout: float = 0.15
    # mmt: add to the transformer's logits a path linear in the patient's features (a
    # "wide" path beside the deep one): the best plain baseline on omics is often linear.
    linear_path: bool = False
    # tabtransformer: comma-separated modalities whose columns become one embedded token
    # each (clinical, one-hot categorical columns); other modalities take the continuous
    # path. Modalities the data lack are ignored.
    tab_token_modalities: str = "clinical"
    # perceiver: tokens each modality's features are projected into, and latent vectors.
    perceiver_tokens_per_modality: int = 4
    perceiver_latents: int = 8

    def __post_init__(self) -> None:
        from common.model_kinds import check_kind

        check_kind(self.kind)

    @classmethod
    def for_local_dp(cls) -> ModelConfig:
        """The small model local DP-SGD trains: the noise grows with the number of
        parameters, and dropout fights the noise."""
        return cls(d_model=16, n_heads=2, n_layers=1, tokens_per_modality=1,
                   dropout=0.0, attention_dropout=0.0, modality_dropout=0.0)

    @classmethod
    def for_distributed_dp(cls) -> ModelConfig:
        """The model distributed DP trains by noised full-batch gradient steps (chosen on
        pooled validation macro-F1, see docs/privacy.md)."""
        return cls(d_model=DISTRIBUTED_D_MODEL, n_heads=2, n_layers=1, tokens_per_modality=1,
                   dropout=0.0, attention_dropout=0.0, modality_dropout=0.0)


@dataclass
class TrainConfig(_Section):
    """Optimisation hyper-parameters (recorded in every run's config.json).

    The defaults suit runs without local DP; private runs use :meth:`for_local_dp`.
    """

    batch_size: int = 16  # 0: the whole training split in every step (full batch)
    optimizer: str = "adamw"  # "adamw", or "sgd" (with momentum; steadier under DP noise)
    lr: float = 2e-3
    momentum: float = 0.9  # sgd only
    min_lr_fraction: float = 0.05
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # "balanced": weight class c by n / (C * n_c) from the pooled training counts.
    class_weighting: str = "balanced"
    max_epochs: int = 60
    patience: int = 10
    # Model selection on validation data: "f1_macro" (ties: lower loss) or "loss".
    selection: str = "f1_macro"
    device: str = "auto"
    amp: bool = True

    @classmethod
    def for_local_dp(cls) -> TrainConfig:
        """One full-batch plain SGD step per local epoch: the fewest noisy releases
        for the budget."""
        return cls(batch_size=0, optimizer="sgd", lr=1.0, momentum=0.0, warmup_fraction=0.0)

    @classmethod
    def for_distributed_dp(cls) -> TrainConfig:
        """The coordinator's step on the noised gradient sum: ``lr`` with a cosine decay
        over the run (server momentum comes from the strategy, FedAvgM)."""
        return cls(batch_size=0, optimizer="sgd", lr=DISTRIBUTED_LR, momentum=0.0,
                   warmup_fraction=0.0, class_weighting="none")


@dataclass
class RunConfig:
    """Everything a federated run needs; stored in the run's ``config.json``.

    The defaults are the private federation (local DP-SGD at every site with the model
    and schedule chosen for it) that ``cancer-alpha simulate`` and ``flwr run`` run
    when told nothing; :meth:`preset` gives the settings that suit another DP mode.
    """

    data: str = "brca"
    test_data: str = ""  # empty: hold out a stratified test split from ``data``
    # A file of patient ids (one a line) that form the test split, the rest of ``data``
    # being the pool (cross-validation folds); empty: see ``test_data``.
    test_ids: str = ""
    manifest: str = ""
    partition: str = "site"
    sites: int = 0  # 0: automatic (site partition) or 8 (iid/dirichlet)
    min_site_size: int = 20
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    # Distributed DP with the class-centroid model: the centre, then the class sums.
    rounds: int = CENTROID_ROUNDS
    local_epochs: int = 1
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_momentum: float = 0.9  # fedavgm: momentum of the server's SGD on averaged updates
    # Robust aggregation and server optimizers (strategies/*); ranges: strategies.registry.
    trim_fraction: float = 0.25  # trimmedavg: fraction cut from each tail, per coordinate
    malicious_sites: int = 1  # krum, bulyan: hostile sites the aggregation must tolerate
    krum_select: int = 1  # krum: updates averaged (1: Krum, more: multi-Krum)
    server_lr: float = 0.01  # fedadam, fedyogi: the server optimizer's learning rate (eta)
    server_tau: float = 1e-3  # fedadam, fedyogi: adaptivity (larger: closer to SGD)
    # Update vetting (strategies.guard): reject an update whose distance to the global
    # model exceeds this many times the round's median (0: no bound), or whose cosine
    # with the other updates' coordinate-wise median is below update_direction_ratio
    # times the round's median cosine (0: no check), and leave a site out of the run
    # after this many rejected rounds (0: never).
    max_update_norm_ratio: float = 5.0
    update_direction_ratio: float = 0.0
    quarantine_after: int = 0
    fraction_train: float = 1.0
    min_sites: int = 2
    round_patience: int = 10
    seed: int = 0
    out: str = ""
    # Differential privacy: "distributed" (sites add shares of the noise to clipped
    # gradient sums that only SecAgg+ opens, see server.rounds.distributed), "local"
    # (DP-SGD at every site, see client.dp), "central" (server clips site updates and
    # noises their mean, strategies.central_dp) or "none".
    dp: str = "distributed"
    # Distributed and local DP: each site's budget (its node config overrides); the
    # distributed noise is planned for this epsilon. Central DP: the run's.
    epsilon: float = 8.0
    # 0: distributed and local, 1e-5 (a default from a site's patient count would
    # disclose the count); central, 1 / (10 * sites)
    delta: float = 0.0
    # Clipping: per-patient deviations from the centre (distributed DP, centroid model),
    # per-patient gradients (distributed DP, other models; local DP), site updates (central).
    max_grad_norm: float = CENTROID_RADIUS
    # A site declines a round that would need more noise than this to fit its budget.
    max_noise_multiplier: float = 10.0
    # Simulation: virtual hospitals keep their ledgers in STATE_DIR/<site>; empty: in the
    # run directory (see site_state_root).
    state_dir: str = ""
    # Deployment: seconds the coordinator waits for a round's replies (a site that dies
    # mid-round is left out after this, or sooner once Flower marks it offline) and for
    # at least min_sites sites to be connected before a round.
    round_timeout: float = 600.0
    # Continue the run in ``out`` from its checkpoint (last completed round) instead of
    # starting over; the coordinator sets it on `coordinator start --resume`.
    resume: bool = False
    # Secure aggregation (Flower SecAgg+): the coordinator sees only the sum of updates.
    secagg: bool = False
    # Fraction of a site's neighbours whose shares unmask it: higher is more private,
    # lower tolerates more sites dropping out mid-round.
    secagg_threshold: float = 0.5
    model: ModelConfig = field(default_factory=lambda: ModelConfig(kind=CENTROID_KIND))
    train: TrainConfig = field(default_factory=TrainConfig.for_distributed_dp)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1, got {self.rounds}")
        if self.local_epochs < 1:
            problems.append(f"local_epochs must be >= 1, got {self.local_epochs}")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.fraction_train <= 1:
            problems.append(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.sites < 0 or self.min_sites < 1:
            problems.append("sites must be >= 0 and min_sites >= 1")
        if not self.round_timeout > 0:
            problems.append(f"round_timeout must be > 0 seconds, got {self.round_timeout}")
        if self.proximal_mu < 0:
            problems.append(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if self.dp not in DP_MODES:
            problems.append(f"dp {self.dp!r} is not one of {DP_MODES}")
        if self.dp != "none":
            if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
                problems.append(f"epsilon must be a positive number, got {self.epsilon}")
            if not 0 <= self.delta < 1:
                problems.append(f"delta must be in [0, 1) (0 = per-site default), got {self.delta}")
            if not self.max_noise_multiplier > 0:
                problems.append("max_noise_multiplier must be > 0, got "
                                f"{self.max_noise_multiplier}")
            if not self.max_grad_norm > 0:
                problems.append(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        # Which strategy / DP / SecAgg+ combinations exist: strategies.registry.
        if self.secagg and not 0 < self.secagg_threshold <= 1:
            problems.append(f"secagg_threshold must be in (0, 1], got {self.secagg_threshold}")
        if problems:
            raise ValueError("invalid run configuration: " + "; ".join(problems))

    def schedule_problems(self) -> list[str]:
        """Why the model cannot be trained with this schedule (checked before a run, with
        the strategy: :func:`strategies.check_combination`)."""
        problems = []
        if self.dp in ("distributed", "local") and self.model.kind == CENTROID_KIND:
            if self.rounds != CENTROID_ROUNDS:
                problems.append(f"{self.dp} DP fits the {CENTROID_KIND} model in "
                                f"{CENTROID_ROUNDS} rounds (the centre, then the class sums), "
                                f"got rounds {self.rounds} (a gradient-trained model such "
                                "as --model mmt takes more rounds)")
            if self.strategy != "fedavg":
                problems.append(f"{self.dp} DP fits the {CENTROID_KIND} model with "
                                f"strategy fedavg (it takes the fit as it is), got "
                                f"{self.strategy!r}")
        return problems

    @property
    def secure_aggregation(self) -> bool:
        """Whether the run sums through SecAgg+ (asked for, or distributed DP)."""
        return self.secagg or self.dp == "distributed"

    @classmethod
    def preset(cls, dp: str | None = None, *, model_kind: str | None = None,
               **settings: Any) -> RunConfig:
        """The run config that suits DP mode ``dp`` (default: the dataclass's), overridden
        by ``settings``.

        Distributed DP: the defaults (the class-centroid model), or with another
        ``model_kind`` its noised gradient steps (small model, FedAvgM, many rounds).
        Local DP: the class-centroid model, fit from noised sums as under distributed DP
        (each site's release carrying the whole noise), or with another ``model_kind``
        many one-epoch DP-SGD rounds of a small model. No DP and central DP (the server
        noises the mean of whole updates, so the sites' model size does not scale the
        noise): the default architecture and
        optimiser, fewer rounds of more local epochs. ``model_kind`` sets the architecture
        kind of any preset.
        """
        dp = cls.dp if dp is None else dp
        if dp == "distributed":
            kind = model_kind or CENTROID_KIND
            if kind == CENTROID_KIND:
                base: dict[str, Any] = {"model": ModelConfig(kind=kind)}
            else:
                base = {"rounds": DISTRIBUTED_ROUNDS, "strategy": "fedavgm",
                        "max_grad_norm": GRADIENT_CLIP,
                        "model": replace(ModelConfig.for_distributed_dp(), kind=kind)}
        elif dp == "local" and (model_kind or CENTROID_KIND) == CENTROID_KIND:
            base = {"strategy": "fedavg", "model": ModelConfig(kind=CENTROID_KIND)}
        elif dp == "local":
            base = {"rounds": 20, "local_epochs": 1, "strategy": "fedavg",
                    "max_grad_norm": GRADIENT_CLIP,
                    "model": ModelConfig.for_local_dp(), "train": TrainConfig.for_local_dp()}
        else:
            base = {"rounds": 10, "local_epochs": 4, "strategy": "fedavg",
                    "max_grad_norm": GRADIENT_CLIP, "model": ModelConfig(),
                    "train": TrainConfig()}
            if dp == "none":
                base.update(update_direction_ratio=NO_DP_DIRECTION_RATIO,
                            quarantine_after=NO_DP_QUARANTINE_AFTER)
        if model_kind and dp != "distributed":
            base["model"] = replace(base["model"], kind=model_kind)
        return cls(**{"dp": dp, **base, **settings})

    def site_state_root(self) -> Path:
        """Where a simulation's virtual hospitals keep their state (privacy ledgers):
        ``state_dir`` when named, else inside the run directory, so that every run
        starts with fresh budgets."""
        if self.state_dir:
            return Path(self.state_dir)
        return Path(self.out or "runs") / SITE_STATE_DIR

    # --- Flower's flat run config -------------------------------------------------
    def to_flower(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "train"):
                for k, v in asdict(value).items():
                    flat[f"{f.name}.{k}".replace("_", "-")] = v
            else:
                flat[f.name.replace("_", "-")] = value
        return flat

    @classmethod
    def from_flower(cls, flat: dict[str, Any]) -> RunConfig:
        """From Flower's flat run config; unknown keys are errors naming the valid ones."""
        nested: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        top: dict[str, Any] = {}
        _reject_unknown("run config", flat, cls().to_flower())
        for key, value in flat.items():
            prefix, dot, rest = key.replace("-", "_").partition(".")
            if dot:
                nested[prefix][rest] = value
            else:
                top[prefix] = value
        base = cls()
        model = ModelConfig.from_dict({**base.model.to_dict(), **nested["model"]})
        train = TrainConfig.from_dict({**base.train.to_dict(), **nested["train"]})
        return cls(**top, model=model, train=train)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """From :meth:`to_dict` form; unknown keys are errors naming the valid ones."""
        d = dict(d)
        _reject_unknown("run config", d, [f.name for f in fields(cls)])
        defaults = cls()
        model = ModelConfig.from_dict({**defaults.model.to_dict(), **d.pop("model", {})},
                                      strict=True)
        train = TrainConfig.from_dict({**defaults.train.to_dict(), **d.pop("train", {})},
                                      strict=True)
        return cls(**d, model=model, train=train)
