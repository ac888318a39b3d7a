"""Local DP sends nothing per site in clear: every value a site reports is a noised
release charged to its own ledger (class counts, the centroid sums or DP-SGD updates, the
final model's validation counts), and releases in clear must carry the whole noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from message_audit import audited_simulation

from common.config import RunConfig
from common.consortium_setup import ConsortiumSetup
from common.distributed_dp import NoisePlan
from common.protocol import TRAIN_TASK, RoundConfig

# What a site may report beside its releases: its name, refusals and its own ledger's
# account (epsilon, delta; under DP-SGD the noise multiplier it calibrated), and as its
# weight either 1 or its noised patient count from the setup.
ALLOWED_METRICS = {"num-examples", "epsilon", "delta", "refused", "noise-multiplier"}


def _plan(min_sites: int) -> NoisePlan:
    return NoisePlan.calibrate(8.0, 1e-5, 2, 1.0, min_sites, centre_round=True)


def test_releases_in_clear_must_carry_the_whole_noise():
    from client.app import release_refusal

    full, share = (RoundConfig(task=TRAIN_TASK, noise_plan=_plan(m)) for m in (1, 3))
    assert release_refusal("local", full, secure=False) is None
    assert "full noise" in release_refusal("local", share, secure=False)
    assert "not through SecAgg" in release_refusal("local", full, secure=True)
    assert release_refusal("distributed", share, secure=True) is None
    assert "only through secure aggregation" in release_refusal("distributed", share,
                                                                secure=False)
    assert "--dp none" in release_refusal("none", full, secure=False)


def test_noised_patient_counts_travel_with_the_setup():
    from scripted_grid import SCHEMA

    from common.consortium_setup import noised_patients
    from common.preprocessing import Standardizer

    plain = ConsortiumSetup(SCHEMA, Standardizer.for_each_patient(SCHEMA), np.ones(3))
    local = ConsortiumSetup(SCHEMA, Standardizer.for_each_patient(SCHEMA), np.ones(3),
                            site_patients={"a": 41.7, "b": 12.2})
    back = ConsortiumSetup.from_records(local.to_message_content())
    assert back.site_patients == {"a": 41.7, "b": 12.2} and back.digest() == local.digest()
    assert local.digest() != plain.digest()
    assert noised_patients(back, "b") == 12.2
    with pytest.raises(ValueError, match="no noised patient count for site 'c'"):
        noised_patients(back, "c")


def test_calibration_keeps_room_for_the_reserved_validation(tmp_path):
    from client.privacy import PrivacyBudget, PrivacyLedger, calibrate_noise, ledger_path
    from client.privacy.accounting import epsilon_of, merge_history

    ledger = PrivacyLedger.open(ledger_path(tmp_path))
    budget = PrivacyBudget(epsilon=4.0, delta=1e-5)
    reserved = [(_plan(1).validation_noise, 1.0, 1)]
    alone = calibrate_noise(ledger, budget, 0.25, 4, 5)
    kept = calibrate_noise(ledger, budget, 0.25, 4, 5, reserved=reserved)
    assert kept > alone
    history = merge_history([*ledger.projected_history(kept, 0.25, 4, 5), *reserved])
    assert epsilon_of(history, budget.delta, "rdp", integer_orders=True) <= budget.epsilon


# --- e2e: every message a virtual hospital sends in a local-DP run --------------------


def _audited_run(bundled_dir_module, tmp_path_factory, model_kind: str, **settings):
    out = tmp_path_factory.mktemp("local") / "run"
    cfg = RunConfig.preset("local", model_kind=model_kind,
                           data=str(bundled_dir_module("brca")), partition="iid", sites=3,
                           epsilon=8.0, seed=0, out=str(out), **settings)
    return audited_simulation(cfg, tmp_path_factory.mktemp("audit"))


@pytest.mark.e2e
@pytest.mark.parametrize("model_kind", ["centroid", "mmt"])
def test_a_local_dp_site_sends_only_charged_releases(bundled_dir_module, tmp_path_factory,
                                                     model_kind):
    from client.privacy import PrivacyLedger, ledger_path

    extra = {"rounds": 2} if model_kind == "mmt" else {}
    run_dir, messages = _audited_run(bundled_dir_module, tmp_path_factory, model_kind,
                                     **extra)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    local = metrics["local_dp"]
    assert NoisePlan(**local["noise_plan"]).min_sites == 1  # every release: the full noise
    assert "evaluate" not in {m["type"] for m in messages}
    for m in messages:
        assert not set(m["metrics"]) - ALLOWED_METRICS, m
        assert "stats" not in m["records"]
    for site, patients in local["site_patients"].items():
        sent = [m for m in messages if m.get("site") == site]
        releases = [m for m in sent if m["arrays"]]
        ledger = PrivacyLedger.open(ledger_path(run_dir / "site-state" / site))
        # Every reply that carries arrays is a release the site charged, and nothing else.
        assert len(releases) == len(ledger.entries) >= 3
        assert ledger.epsilon(ledger.delta) <= 8.0 + 1e-6
        for m in sent:
            weight = m["metrics"].get("num-examples", 1)
            assert weight in (0, 1, max(1, round(patients))), (site, weight)
        if model_kind == "centroid":  # noised sums in integer units, no weights
            for m in releases:
                for values in m["arrays"]:
                    np.testing.assert_array_equal(values, np.rint(values))
    assert metrics["rounds"][-1]["val"]["f1_macro"] >= 0  # the noised pooled validation


def test_the_feature_centre_is_the_mean_of_the_per_patient_standardized_values():
    from scripted_grid import SCHEMA, synthetic_data

    from common.consortium_features import site_input
    from common.patient_centre import centred_standardizer, unit_rows
    from common.preprocessing import Standardizer

    data = synthetic_data(40, seed=3)
    data.mask[::4, 1] = False  # every 4th patient lacks a modality
    plain = site_input(data, SCHEMA, Standardizer.for_each_patient(SCHEMA)).data
    rows = unit_rows(plain)
    assert rows.shape == (40, 5) and np.linalg.norm(rows, axis=1).max() <= 1 + 1e-9
    centred = centred_standardizer(SCHEMA, rows.sum(axis=0), 40.0)
    for m in SCHEMA.modality_names:  # the mean of each feature's standardized values
        np.testing.assert_allclose(centred.mean[m], plain.features[m].mean(axis=0),
                                   rtol=1e-5, atol=1e-6)
    after = site_input(data, SCHEMA, centred).data
    for j, m in enumerate(SCHEMA.modality_names):
        present = data.mask[:, j]
        np.testing.assert_allclose(after.features[m][present],
                                   plain.features[m][present] - centred.mean[m], atol=1e-5)
    with pytest.raises(ValueError, match="4 values, the schema has 5 features"):
        centred_standardizer(SCHEMA, np.zeros(4), 40.0)
