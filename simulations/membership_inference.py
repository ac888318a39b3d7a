"""Membership-inference audit of a trained federated model.

The attacker holds the global model and a patient's record with its label, and guesses
whether that patient was in some hospital's training data. Members are the training
patients of every site (validation patients were never trained on and are left out);
non-members are the held-out test patients. The split is rebuilt from the run's own
``config.json`` (same data, partition and seed), so nothing about patients is stored.

Two scores, the standard black-box attacks:

* ``loss``: minus the cross-entropy of the true label (Yeom et al., 2018): training
  lowers it on members;
* ``likelihood ratio``: the true-label log-odds of the model, centred per class on
  non-member statistics (a per-class calibrated variant in the spirit of LiRA's
  offline attack, without shadow models): some classes are simply easier.

Reported per score: attack AUC (0.5 = no better than a coin) and the true-positive rate
at 1 % false-positive rate, the low-error regime where membership leakage matters.
The per-class centring uses the non-member scores, which gives the attacker knowledge
it would have to estimate; the audit is therefore, if anything, generous to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class AttackResult:
    auc: float
    tpr_at_1pct_fpr: float


def attack_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> AttackResult:
    """AUC and TPR at 1 % FPR of "higher score = member"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    s = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(y, s)
    return AttackResult(auc=float(roc_auc_score(y, s)),
                        tpr_at_1pct_fpr=float(np.interp(0.01, fpr, tpr)))


def _true_label_scores(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.clip(proba[np.arange(len(labels)), labels], 1e-12, 1 - 1e-12)
    return np.log(p), np.log(p) - np.log1p(-p)  # minus loss, log-odds


def membership_inference(run_dir: Path, data: str = "") -> dict:
    """Audit the model in ``run_dir`` against its own training patients."""
    from common.bundle import load_bundle
    from common.config import RunConfig
    from common.dataset.multiomics import MultiOmicsData
    from common.simulated_federation import concat_data, load_federation

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not a run directory (the audit rebuilds the "
                                "training split from the run's config.json)")
    saved = json.loads(config_path.read_text())["run_config"]
    if data:
        saved["data"] = data
    cfg = RunConfig.from_dict(saved)
    bundle = load_bundle(run_dir)
    fed = load_federation(cfg)
    members: list[MultiOmicsData] = [fed.site_data(i)[1] for i in range(len(fed.plan.sites))]
    member_data = concat_data(members)
    scores = {}
    labels = {}
    for name, part in (("member", member_data), ("nonmember", fed.test)):
        proba = bundle.predict_proba(part, name)
        labels[name] = part.labels
        scores[name] = _true_label_scores(proba, part.labels)
    loss = attack_metrics(scores["member"][0], scores["nonmember"][0])
    # Per-class centring: subtract the non-members' mean log-odds of the patient's class.
    centred = {}
    for name in scores:
        logit = scores[name][1].copy()
        for c in np.unique(labels[name]):
            ref = scores["nonmember"][1][labels["nonmember"] == c]
            logit[labels[name] == c] -= ref.mean() if len(ref) else 0.0
        centred[name] = logit
    lr = attack_metrics(centred["member"], centred["nonmember"])
    metrics = json.loads((run_dir / "metrics.json").read_text()) \
        if (run_dir / "metrics.json").exists() else {}
    return {
        "model": str(run_dir),
        "dp": cfg.dp,
        "epsilon_budget": cfg.epsilon if cfg.dp != "none" else None,
        "per_site_epsilon": metrics.get("per_site_epsilon"),
        "members": int(member_data.n),
        "nonmembers": int(fed.test.n),
        "loss_attack": {"auc": loss.auc, "tpr_at_1pct_fpr": loss.tpr_at_1pct_fpr},
        "likelihood_ratio_attack": {"auc": lr.auc, "tpr_at_1pct_fpr": lr.tpr_at_1pct_fpr},
    }
