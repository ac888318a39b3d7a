"""``/v1/explain`` returns the report's quantities for one patient, computed by the
report's own functions: cross-modal attention, per-modality integrated gradients and
their completeness."""

from __future__ import annotations

import numpy as np
import pytest
from test_serving_helpers import call, patient_json, serve_test_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread):
    return serve_test_model(tmp_path_factory.mktemp("explain"))


def test_explain_matches_the_report_for_one_patient(served) -> None:
    from server.report.explanations import explain_classes
    from server.report.inspection import inspect_model

    data, bundle = served["data"], served["bundle"]
    i = int(np.flatnonzero(~data.mask.all(axis=1))[0])  # a patient lacking a modality
    r = call(served, "POST", "/v1/explain", "researcher",
             json={**patient_json(data, i), "steps": 32, "top_k": 5})
    assert r.status_code == 200, r.text
    e = r.json()

    one = bundle.prepare(data.subset([i]))
    model = bundle.build_model()
    report_attention = inspect_model(model, one).attention
    modalities = list(model.modalities)
    attention = np.array([[e["attention"][q][k] for k in modalities] for q in modalities])
    np.testing.assert_allclose(attention, report_attention, atol=1e-5)
    present = [j for j, m in enumerate(modalities) if m in e["prediction"]["modalities_used"]]
    np.testing.assert_allclose(attention[present].sum(axis=1), 1.0, atol=1e-5)
    assert e["attention_check"] < 1e-4

    target = list(bundle.schema.label_names).index(e["target"])
    report = explain_classes(model, one, np.array([target]), bundle.schema.label_names,
                             steps=32, max_patients=1)
    shares = report.classes[target].modality_share
    for m in e["modalities"]:
        assert m["share"] == pytest.approx(shares[m["modality"]], abs=1e-5)
    assert e["completeness_gap"] == pytest.approx(report.max_completeness_gap, abs=1e-6)
    total = sum(m["attribution"] for m in e["modalities"])
    assert e["completeness_gap"] == pytest.approx(
        abs(total - (e["target_probability"] - e["baseline_probability"])), abs=1e-6)


def test_concurrent_explanations_and_predictions_do_not_mix_their_tensors(served) -> None:
    """The service shares one model between request threads: explanations running at
    the same time as each other and as plain forward passes get their own attention."""
    import threading

    import torch

    from server.report.inspection import inspect_model

    data, bundle = served["data"], served["bundle"]
    model = bundle.build_model()
    patients = [bundle.prepare(data.subset([i])) for i in range(6)]
    alone = [inspect_model(model, p).attention for p in patients]
    x, mask = (torch.as_tensor(a) for a in (bundle.prepare(data).concat(), data.mask))
    together: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(patients) + 1)

    def explain(i: int) -> None:
        start.wait()
        try:
            for _ in range(5):
                together[i] = inspect_model(model, patients[i]).attention
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    def predict() -> None:
        start.wait()
        with torch.inference_mode():
            for _ in range(20):
                model(x.float(), mask.float())

    threads = [threading.Thread(target=explain, args=(i,)) for i in range(len(patients))]
    threads.append(threading.Thread(target=predict))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, attention in enumerate(alone):
        np.testing.assert_allclose(together[i], attention, atol=1e-5)
