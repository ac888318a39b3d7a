"""Run configuration: one dataclass, one set of defaults, for the CLI and Flower.

Flower's run config is a flat ``{"kebab-key": scalar}`` mapping (``flwr run
--run-config``, ``[tool.flwr.app.config]``); :meth:`RunConfig.to_flower` and
:meth:`RunConfig.from_flower` translate. Model and optimiser settings are nested
dataclasses flattened with ``model.`` and ``train.`` prefixes.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

STRATEGIES = ("fedavg", "fedavgm", "fedprox")
DP_MODES = ("none", "local", "central")


def offline_flower_env(flwr_home: Path | None = None) -> None:
    """Keep Flower from installing packages, checking for updates or sending telemetry."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    if flwr_home is not None:
        os.environ.setdefault("FLWR_HOME", str(flwr_home))


class _Section:
    """A nested config section: plain dict form, tolerant of keys from other versions."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        fields_ = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in fields_})


@dataclass
class ModelConfig(_Section):
    """Architecture hyper-parameters (stored in every model bundle)."""

    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 2
    ffn_mult: int = 2
    tokens_per_modality: int = 4
    dropout: float = 0.2
    attention_dropout: float = 0.1
    # Probability of hiding a whole modality from a patient during training, so the
    # model learns to predict when a hospital or test split lacks one.
    modality_dropout: float = 0.15


@dataclass
class TrainConfig(_Section):
    """Optimisation hyper-parameters (recorded in every run's config.json)."""

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


# Local DP-SGD at hospitals of tens of patients: a small model (the noise grows with the
# number of parameters), no dropout (it fights the noise), and one full-batch step per
# round (the fewest noisy releases for the budget). Chosen on pooled validation macro-F1
# of the bundled BRCA federation; see README, "Privacy".
LOCAL_DP_PRESET: dict[str, Any] = {
    "rounds": 20,
    "local_epochs": 1,
    "model": ModelConfig(d_model=16, n_heads=2, n_layers=1, tokens_per_modality=1,
                         dropout=0.0, attention_dropout=0.0, modality_dropout=0.0),
    "train": TrainConfig(batch_size=0, optimizer="sgd", lr=1.0, momentum=0.0,
                         warmup_fraction=0.0),
}


@dataclass
class RunConfig:
    """Everything a federated run needs; stored in the run's ``config.json``."""

    data: str = "brca"
    test_data: str = ""  # empty: hold out a stratified test split from ``data``
    manifest: str = ""
    partition: str = "site"
    sites: int = 0  # 0: automatic (site partition) or 8 (iid/dirichlet)
    min_site_size: int = 20
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    rounds: int = 10
    local_epochs: int = 4
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_momentum: float = 0.9  # fedavgm: momentum of the server's SGD on averaged updates
    fraction_train: float = 1.0
    min_sites: int = 2
    round_patience: int = 10
    seed: int = 0
    out: str = ""
    # Differential privacy: "none", "local" (DP-SGD at every site, see client.dp) or
    # "central" (server clips site updates and noises their mean, strategies.central_dp).
    dp: str = "none"
    epsilon: float = 8.0  # local: each site's budget (its node config overrides); central: run's
    delta: float = 0.0  # 0: local, 1 / (10 * site's patients); central, 1 / (10 * sites)
    max_grad_norm: float = 1.0  # clipping: per-sample gradients (local), site updates (central)
    # A site declines a round that would need more noise than this to fit its budget.
    max_noise_multiplier: float = 10.0
    state_dir: str = ""  # simulation: site ledgers live in STATE_DIR/<site>
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
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            d_model=512, n_heads=8, n_layers=1, tokens_per_modality=2
        )
    )
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
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
        if self.dp == "central" and self.strategy != "fedavg":
            problems.append("central DP aggregates with FedAvg; use --strategy fedavg")
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
            if self.dp == "local" and self.strategy == "fedprox":
                # Opacus computes per-sample gradients of the data loss only; the proximal
                # term's gradient would bypass clipping and noise.
                problems.append("fedprox cannot be combined with local DP; use fedavg")
        if self.secagg:
            if self.strategy == "fedavgm":
                problems.append("secure aggregation computes the plain weighted mean; use "
                                "--strategy fedavg or fedprox with --secagg")
            if self.dp == "central":
                problems.append("secure aggregation hides the individual updates that central "
                                "DP must clip; combine --secagg with --dp local or none")
            if not 0 < self.secagg_threshold <= 1:
                problems.append("secagg_threshold must be in (0, 1], got "
                                f"{self.secagg_threshold}")
        if problems:
            raise ValueError("invalid run configuration: " + "; ".join(problems))

    @classmethod
    def for_privacy(cls, dp: str = "none", **settings: Any) -> RunConfig:
        """A run config with the defaults that suit ``dp`` (local DP: ``LOCAL_DP_PRESET``),
        overridden by ``settings``."""
        preset = LOCAL_DP_PRESET if dp == "local" else {}
        return cls(dp=dp, **{**copy.deepcopy(preset), **settings})

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
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        known = {f.name for f in fields(cls)}
        for key, value in flat.items():
            name = key.replace("-", "_")
            prefix, dot, rest = name.partition(".")
            section = {"model": ModelConfig, "train": TrainConfig}.get(prefix)
            if dot and section is not None and rest in section.__dataclass_fields__:
                nested[prefix][rest] = value
            elif name in known:
                top[name] = value
            else:
                raise ValueError(f"unknown run config key {key!r}")
        base = cls()
        model = ModelConfig.from_dict({**base.model.to_dict(), **nested["model"]})
        train = TrainConfig.from_dict({**base.train.to_dict(), **nested["train"]})
        return cls(**top, model=model, train=train)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        model = ModelConfig.from_dict(d.pop("model", {}))
        train = TrainConfig.from_dict(d.pop("train", {}))
        return cls(**d, model=model, train=train)
