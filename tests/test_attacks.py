"""Tests for simulated attacks: parsing, the forged updates, who attacks, and a short
poisoned federation on the real data with the robust default."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from common.protocol import ARRAYS
from simulations.attacks import Attack, AttackPlan, attack_mod, flipped_training_labels, plan_attack

pytestmark = pytest.mark.usefixtures("task_identity")


def record(value: float, shape=(4, 3)) -> ArrayRecord:
    rng = np.random.default_rng(int(value * 10))
    return ArrayRecord({"w": Array((value + rng.normal(size=shape)).astype(np.float32)),
                        "b": Array(np.full(3, value, dtype=np.float32))})


def numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in rec.items()}


def norm(arrays: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum((v**2).sum() for v in arrays.values())))


@pytest.mark.parametrize(("text", "kind", "factor"), [
    ("label-flip", "label-flip", 1.0), ("sign-flip", "sign-flip", 1.0),
    ("scale:1e6", "scale", 1e6), ("scale:-3", "scale", -3.0), ("noise", "noise", 1.0),
    ("nan", "nan", 1.0), ("free-rider", "free-rider", 1.0)])
def test_attacks_parse(text, kind, factor):
    attack = Attack.parse(text)
    assert (attack.kind, attack.factor) == (kind, factor)
    assert attack.on_update == (kind != "label-flip")


@pytest.mark.parametrize("text", ["scale", "scale:x", "scale:inf", "flip", "nan:2", ""])
def test_bad_attacks_are_refused_listing_the_valid_ones(text):
    with pytest.raises(ValueError, match="scale"):
        Attack.parse(text)


def test_forged_updates():
    received, trained = record(0.0), record(1.0)
    update = {k: numpy(trained)[k] - numpy(received)[k] for k in ("w", "b")}
    g = numpy(received)

    def sent(text):
        return numpy(Attack.parse(text).forge(trained, received, seed=1))

    flipped = sent("sign-flip")
    assert all(np.allclose(flipped[k], g[k] - update[k], atol=1e-5) for k in g)
    big = sent("scale:10")
    assert all(np.allclose(big[k], g[k] + 10 * update[k], atol=1e-4) for k in g)
    noise = {k: v - g[k] for k, v in sent("noise").items()}
    assert norm(noise) == pytest.approx(norm(update), rel=1e-5)
    assert not np.allclose(noise["w"], update["w"])
    assert all(np.isnan(v).all() for v in sent("nan").values())
    assert all(np.array_equal(v, g[k]) for k, v in sent("free-rider").items())
    assert trained["w"].numpy().dtype == Attack.parse("noise").forge(
        trained, received, 1)["w"].numpy().dtype


def test_the_largest_sites_attack():
    sizes = [("a", 10), ("b", 40), ("c", 25), ("d", 40), ("e", 5)]
    plan = plan_attack("sign-flip", 3, sizes)
    assert plan.sites == ("b", "c", "d") and plan.partition_ids == (1, 2, 3)
    assert plan.record() == {"attack": "sign-flip", "malicious": 3, "sites": ["b", "c", "d"]}
    for bad in (0, 5):
        with pytest.raises(ValueError, match="between 1 and 4"):
            plan_attack("nan", bad, sizes)


def test_random_attackers_are_drawn_from_the_seed():
    sizes = [(name, 10 + i) for i, name in enumerate("abcdefghijkl")]
    plans = {seed: plan_attack("nan", 3, sizes, attackers="random", seed=seed)
             for seed in range(6)}
    assert all(len(set(plan.sites)) == 3 for plan in plans.values())
    assert plan_attack("nan", 3, sizes, attackers="random", seed=4) == plans[4]
    assert len({plan.sites for plan in plans.values()}) > 1  # the seed chooses
    assert plan_attack("nan", 3, sizes).sites == ("j", "k", "l")
    with pytest.raises(ValueError, match=r"largest, random.*'smallest'"):
        plan_attack("nan", 3, sizes, attackers="smallest")


def _train_message(arrays: ArrayRecord) -> Message:
    msg = Message(content=RecordDict({ARRAYS: arrays}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _context(partition: int) -> Context:
    return Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition},
                   state=RecordDict(), run_config={})


def test_only_the_malicious_sites_forge_their_reply():
    mod = attack_mod(AttackPlan(Attack.parse("scale:100"), (1,), ("b",)))
    received, trained = record(0.0), record(1.0)

    def train(msg, context):
        return Message(content=RecordDict({ARRAYS: trained}), reply_to=msg)

    honest = mod(_train_message(received), _context(0), train)
    hostile = mod(_train_message(received), _context(1), train)
    assert np.array_equal(honest.content[ARRAYS]["w"].numpy(), trained["w"].numpy())
    expected = 100 * (trained["w"].numpy() - received["w"].numpy()) + received["w"].numpy()
    assert np.allclose(hostile.content[ARRAYS]["w"].numpy(), expected, rtol=1e-4)


def test_label_flip_reverses_the_training_labels_only_while_attacking():
    import client.site as site_module
    from common.config import RunConfig

    cfg = RunConfig(dp="none", sites=3)
    try:
        honest = site_module.load_site({"partition-id": 0}, cfg)
    except FileNotFoundError:
        pytest.skip("bundled data not found")
    with flipped_training_labels():
        flipped = site_module.load_site({"partition-id": 0}, cfg)
    again = site_module.load_site({"partition-id": 0}, cfg)
    n_classes = honest.train.schema.n_classes
    assert np.array_equal(flipped.train.labels, n_classes - 1 - honest.train.labels)
    assert np.array_equal(flipped.val.labels, honest.val.labels)
    assert np.array_equal(again.train.labels, honest.train.labels)


# --- a short poisoned federation on the real data ----------------------------------------

# The robust default of a run without DP (FedAvg, the direction check, quarantine after
# one rejected round) against the 3 largest of 12 BRCA hospitals (185 of 430 training
# patients). Measured (site partition, seed 0, d_model 64, 4 rounds x 1 epoch): clean
# .585; sign-flip, x 1e6 or NaN by the 3: .412 each. The attackers are rejected in
# round 1 and quarantined; what the run still loses is their patients, 17 points here:
# the defence cannot give that back, so the margin is that loss plus 3 points.
POISONED_ROUNDS = 4
POISONED_MARGIN = 0.21


@pytest.mark.e2e
def test_a_short_poisoned_federation_with_the_robust_default_stays_near_clean(tmp_path):
    import json

    import torch

    from common.config import ModelConfig, RunConfig
    from simulations.benchmarks.robustness import run_federation_in_process

    cfg = RunConfig.preset("none", data="brca", rounds=POISONED_ROUNDS, local_epochs=1,
                           round_patience=POISONED_ROUNDS,
                           model=ModelConfig(d_model=64, n_heads=4))
    try:
        clean = run_federation_in_process(cfg, tmp_path / "clean", None, 0)
    except FileNotFoundError:
        pytest.skip("bundled data not found")
    flipped = run_federation_in_process(cfg, tmp_path / "flipped", "sign-flip", 3)
    scaled = run_federation_in_process(cfg, tmp_path / "scaled", "scale:1e6", 3)
    assert not clean["rejections"]  # no honest site rejected
    assert flipped["f1_macro"] >= clean["f1_macro"] - POISONED_MARGIN
    # Rejected while the guard could judge them, then quarantined: never aggregated.
    attackers = flipped["malicious_sites"]
    assert len(attackers) == 3 and set(flipped["rejections"]) == set(attackers)
    strikes = cfg.quarantine_after
    late = {"quarantined": cfg.rounds - strikes}
    assert flipped["rejections"] == {s: {"direction": strikes, **late} for s in attackers}
    assert scaled["rejections"] == {s: {"norm_bound": strikes, **late} for s in attackers}
    metrics = json.loads((tmp_path / "scaled" / "metrics.json").read_text())
    assert metrics["rejections"] == scaled["rejections"]
    # Both hostile federations end with one model: that of the honest sites alone.
    weights = [torch.load(tmp_path / run / "checkpoint" / "global.pt", weights_only=True)
               for run in ("flipped", "scaled")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert max(float(t.abs().max()) for t in weights[1].values() if t.is_floating_point()) < 100


def test_update_attacks_are_refused_under_secure_aggregation():
    from common.config import RunConfig
    from common.simulated_federation import load_federation
    from simulations.runner import attack_plan

    cfg = RunConfig(dp="none", secagg=True)
    try:
        fed = load_federation(cfg)
    except FileNotFoundError:
        pytest.skip("bundled data not found")
    with pytest.raises(ValueError, match="without secure aggregation"):
        attack_plan(cfg, fed, "scale:10", 1)
    assert attack_plan(cfg, fed, "label-flip", 1).sites == ("other",)


def test_the_benchmark_compares_the_shipped_default_with_bare_aggregators():
    from simulations.benchmarks.robustness import ROBUST_DEFAULT, base_config, strategy_config

    base = base_config("brca", rounds=5, local_epochs=2, d_model=64, seed=0)
    default = strategy_config(base, ROBUST_DEFAULT, n_sites=12, tolerate=3)
    assert default == base and default.update_direction_ratio > 0 and default.quarantine_after
    for name in ("fedavg", "trimmedavg", "bulyan"):
        bare = strategy_config(base, name, n_sites=12, tolerate=3)
        assert (bare.strategy, bare.update_direction_ratio, bare.quarantine_after) == (name, 0, 0)
        assert bare.max_update_norm_ratio == base.max_update_norm_ratio
