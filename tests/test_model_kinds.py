"""Tests for the model kinds (common.model_kinds): the multi-modal transformer,
TabTransformer and Perceiver IO behind one interface (DP training, per-patient
gradients, missing modalities, bundles, serving)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from small_models import small_config
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.bundle import load_bundle, save_bundle
from common.config import ModelConfig, RunConfig
from common.dataset.multiomics import MultiOmicsData
from common.losses import weighted_loss
from common.model import ModelSpec, build_model
from common.model_kinds import KINDS, UnknownModelKind
from common.preprocessing import Standardizer
from common.schema import FeatureSchema
from common.training import predict_proba

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRADIENT_KINDS = ["mmt", "tabtransformer", "perceiver"]
SIZES = {"rna": 7, "mirna": 3, "clinical": 4}
LABELS = ["A", "B", "C"]


def small_model(kind: str, sizes: dict[str, int] = SIZES, seed: int = 0, **cfg) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelSpec(small_config(kind, **cfg), dict(sizes), len(LABELS)))
    with torch.no_grad():  # unequal modality weights, so their handling is exercised
        model.modality_logit.weight.copy_(torch.randn_like(model.modality_logit.weight))
    return model


def random_batch(n: int = 12, seed: int = 0, sizes: dict[str, int] = SIZES):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sum(sizes.values()), generator=g)
    mask = torch.ones(n, len(sizes))
    return x, mask


def make_data(n: int = 24, seed: int = 0) -> MultiOmicsData:
    rng = np.random.default_rng(seed)
    schema = FeatureSchema.build({m: [f"{m}_{i}" for i in range(k)] for m, k in SIZES.items()},
                                 LABELS)
    mask = rng.random((n, len(SIZES))) >= 0.25
    mask[:, 0] = True
    features = {}
    for j, (m, k) in enumerate(SIZES.items()):
        x = rng.normal(loc=rng.uniform(-5, 5, k), scale=rng.uniform(0.5, 3, k), size=(n, k))
        x[~mask[:, j]] = 0.0
        features[m] = x.astype(np.float32)
    labels = rng.integers(0, len(LABELS), n).astype(np.int64)
    return MultiOmicsData(np.array([f"p{i}" for i in range(n)]), features, mask, labels, schema)


# --- registry ----------------------------------------------------------------------------


def test_unknown_kind_is_rejected_with_the_valid_kinds():
    with pytest.raises(UnknownModelKind) as info:
        ModelConfig(kind="resnet")
    for kind in KINDS:
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="valid kinds: mmt"):
        RunConfig.preset("none", model_kind="resnet")


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_each_kind_builds_its_own_architecture(kind):
    names = {"mmt": "MultiModalTransformer", "tabtransformer": "TabTransformer",
             "perceiver": "PerceiverIO"}
    assert type(small_model(kind)).__name__ == names[kind]


def test_preset_model_kind_sets_the_architecture_of_every_mode():
    for dp in ("none", "local", "central", "distributed"):
        assert RunConfig.preset(dp, model_kind="perceiver").model.kind == "perceiver"


# --- interface ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_only_opacus_layers_hold_parameters(kind):
    from opacus.validators import ModuleValidator

    model = small_model(kind)
    allowed = (nn.Linear, nn.LayerNorm, nn.Embedding)
    owners = {type(m).__name__ for m in model.modules()
              if list(m.parameters(recurse=False)) and not isinstance(m, allowed)}
    assert owners == set()
    assert ModuleValidator.validate(model, strict=False) == []


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_missing_modality_is_masked_without_nan(kind):
    model = small_model(kind).eval()
    x, mask = random_batch()
    for missing in range(len(SIZES)):
        m = mask.clone()
        m[:, missing] = 0
        x_changed = x.clone()
        start = sum(list(SIZES.values())[:missing])
        x_changed[:, start:start + list(SIZES.values())[missing]] = 1e3
        with torch.no_grad():
            out, out_changed = model(x, m), model(x_changed, m)
        assert torch.isfinite(out).all()
        # The hidden modality's values cannot reach the output.
        assert torch.allclose(out, out_changed, atol=1e-5)
        weights = model.modality_weights(m > 0.5)
        assert torch.allclose(weights.sum(dim=1), torch.ones(len(x)))
        assert (weights[:, missing] == 0).all()
    with torch.no_grad():  # and the present modalities do change it
        assert not torch.allclose(model(x, mask), model(x + 1, mask), atol=1e-4)


def test_tabtransformer_without_token_modalities_has_no_token_path():
    sizes = {"rna": 7, "mirna": 3}
    model = small_model("tabtransformer", sizes=sizes).eval()
    assert not hasattr(model, "column_embedding")
    x, mask = random_batch(sizes=sizes)
    mask[::2, 1] = 0
    assert torch.isfinite(model(x, mask)).all()
    only_tokens = small_model("tabtransformer", sizes={"clinical": 4}).eval()
    assert not hasattr(only_tokens, "mlp")
    x, mask = random_batch(sizes={"clinical": 4})
    assert only_tokens(x, mask).shape == (len(x), len(LABELS))


# --- private training --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_one_opacus_dp_sgd_step_updates_every_parameter(kind):
    from opacus import PrivacyEngine

    from client.dp import grad_sample_mode

    torch.manual_seed(0)
    model = small_model(kind, modality_dropout=0.2)
    x, mask = random_batch(n=32)
    mask[::3, 2] = 0
    y = torch.arange(32) % 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer,
            data_loader=DataLoader(TensorDataset(x, mask, y), batch_size=8),
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=grad_sample_mode(model))
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    xb, mb, yb = next(b for b in loader if len(b[2]))
    optimizer.zero_grad()
    weighted_loss(model(xb, mb), yb, torch.ones(3)).backward()
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (len(yb), *p.shape), name
    optimizer.step()
    assert [k for k, p in model.named_parameters() if torch.equal(before[k], p.detach())] == []


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_torch_func_per_patient_gradients_sum_to_the_batch_gradient(kind):
    from client.distributed_dp import clipped_gradient_sum

    model = small_model(kind)
    x, mask = random_batch(n=6)
    mask[1, 0] = 0
    mask[2, 2] = 0
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    log_prior = torch.zeros(3)
    # A clipping bound no patient reaches: the clipped sum is the plain sum.
    sums, loss_sum = clipped_gradient_sum(model, x, mask, y, log_prior, clip=1e9, chunk=4)
    model.eval()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x, mask), y, reduction="sum")
    loss.backward()
    assert loss_sum == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(sums[name], p.grad, atol=1e-5, rtol=1e-4), name
    clipped, _ = clipped_gradient_sum(model, x, mask, y, log_prior, clip=1e-3)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in clipped.values()))
    assert float(norm) <= 6 * 1e-3 + 1e-6  # each patient's gradient clipped to 1e-3


# --- bundle and serving ------------------------------------------------------------------


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_bundle_round_trips_and_serves_a_prediction(kind, tmp_path: Path):
    from server.serving.explain import explain
    from server.serving.predictor import Predictor, ServedModel

    data = make_data()
    cfg = small_config(kind)
    model = small_model(kind).eval()
    std = Standardizer.fit(data)
    directory = save_bundle(tmp_path / "model", model_config=cfg, schema=data.schema,
                            standardizer=std, state_dict=model.state_dict(), lineage={})
    assert json.loads((directory / "bundle.json").read_text())["model_config"]["kind"] == kind
    bundle = load_bundle(directory)
    assert bundle.model_config == cfg
    assert type(bundle.build_model()) is type(model)
    expected = predict_proba(model, std.transform(data))
    assert np.allclose(bundle.predict_proba(data), expected, atol=1e-6)

    predictor = Predictor(bundle, ServedModel("m", "m", 1, None, "0" * 64))
    patient = {m: dict(zip(data.schema.features(m), map(float, data.features[m][0]),
                           strict=True)) for m in ("rna", "clinical")}
    [served] = predictor.predict([patient])
    assert served.modalities_missing == ["mirna"]
    one = MultiOmicsData(data.patient_ids[:1], {m: data.features[m][:1] for m in SIZES},
                         np.array([[True, False, True]]), data.labels[:1], data.schema)
    assert np.allclose(list(served.probabilities.values()), bundle.predict_proba(one)[0],
                       atol=1e-5)
    x, mask = predictor.encode([patient])
    exp = explain(predictor, x, mask, np.zeros_like(x), target=0, steps=4, top_k=3)
    assert [c.modality for c in exp.modalities] == ["rna", "clinical"]
    assert set(exp.learned_modality_weights) == set(SIZES)


# --- command line ------------------------------------------------------------------------


@pytest.mark.parametrize("command, target", [
    ("simulate", "simulations.runner.simulate"),
    ("train-central", "common.simulated_federation.load_federation"),
])
def test_model_option_sets_the_kind_and_rejects_unknown_ones(command, target, monkeypatch):
    from typer.testing import CliRunner

    from common.cli import build_app

    def stop(cfg, *args, **kwargs):
        raise ValueError(f"would train {cfg.model.kind}")

    monkeypatch.setattr(target, stop)
    runner = CliRunner()
    result = runner.invoke(build_app(), [command, "--model", "perceiver", "--no-report"])
    assert result.exit_code == 2 and "would train perceiver" in result.output, result.output
    result = runner.invoke(build_app(), [command, "--model", "resnet", "--no-report"])
    assert result.exit_code == 2 and "valid kinds: mmt" in result.output, result.output


# --- the linear ("wide") path of mmt ------------------------------------------------------


def linear_path_model(seed: int = 0) -> nn.Module:
    """An mmt with a linear path whose weights are no longer zero."""
    model = small_model("mmt", seed=seed, linear_path=True)
    with torch.no_grad():
        model.linear_path.linear.weight.copy_(torch.randn_like(model.linear_path.linear.weight))
    return model.eval()


def test_linear_path_starts_at_zero_and_leaves_the_other_weights_as_drawn():
    plain, wide = small_model("mmt").eval(), small_model("mmt", linear_path=True).eval()
    x, mask = random_batch()
    with torch.no_grad():
        assert torch.equal(plain(x, mask), wide(x, mask))
    assert set(wide.state_dict()) - set(plain.state_dict()) == {"linear_path.linear.weight"}


def test_linear_path_adds_logits_linear_in_the_present_modalities():
    model = linear_path_model()
    x, mask = random_batch()
    mask[:4, 1] = 0  # mirna missing for four patients
    weight = model.linear_path.linear.weight.detach().clone()
    with torch.no_grad():
        full = model(x, mask)
        model.linear_path = None
        without = model(x, mask)
    present = torch.repeat_interleave(mask, torch.tensor(list(SIZES.values())), dim=1)
    assert torch.allclose(full - without, (x * present) @ weight.T, atol=1e-5)


def test_linear_path_never_reads_a_missing_modality_and_trains_under_opacus():
    from opacus import PrivacyEngine

    from client.dp import grad_sample_mode

    model = linear_path_model()
    x, mask = random_batch()
    mask[:, 2] = 0
    changed = x.clone()
    changed[:, -SIZES["clinical"]:] = 1e3
    with torch.no_grad():
        assert torch.allclose(model(x, mask), model(changed, mask), atol=1e-5)
    model.train()
    y = torch.arange(len(x)) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, _ = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(TensorDataset(x, mask, y), batch_size=len(x)),
            noise_multiplier=0.0, max_grad_norm=1e6, grad_sample_mode=grad_sample_mode(model))
    before = model._module.linear_path.linear.weight.detach().clone()
    weighted_loss(model(x, mask), y, torch.ones(3)).backward()
    grad = model._module.linear_path.linear.weight.grad_sample
    assert grad.shape == (len(x), len(LABELS), sum(SIZES.values()))
    assert torch.count_nonzero(grad[:, :, -SIZES["clinical"]:]) == 0  # missing: no gradient
    optimizer.step()
    assert not torch.equal(before, model._module.linear_path.linear.weight)


def test_linear_path_bundle_round_trips(tmp_path: Path):
    data = make_data()
    cfg = small_config("mmt", linear_path=True)
    model = linear_path_model()
    std = Standardizer.fit(data)
    directory = save_bundle(tmp_path / "model", model_config=cfg, schema=data.schema,
                            standardizer=std, state_dict=model.state_dict(), lineage={})
    bundle = load_bundle(directory)
    assert bundle.model_config.linear_path is True
    assert np.allclose(bundle.predict_proba(data), predict_proba(model, std.transform(data)),
                       atol=1e-6)


@pytest.mark.parametrize("command, target", [
    ("simulate", "simulations.runner.simulate"),
    ("train-central", "common.simulated_federation.load_federation"),
    ("cv", "simulations.cv.run_cv"),
])
def test_architecture_options_reach_the_model_config(command, target, monkeypatch):
    from typer.testing import CliRunner

    from common.cli import build_app

    def stop(cfg, *args, **kwargs):
        raise ValueError(f"would train linear_path={cfg.model.linear_path} "
                         f"genome_tokens={cfg.model.genome_tokens}")

    monkeypatch.setattr(target, stop)
    runner = CliRunner()
    args = [command, "--dp", "none", "--no-report"] if command != "train-central" else [
        command, "--no-report"]
    result = runner.invoke(build_app(), [*args, "--linear-path", "--genome-tokens", "8"])
    assert "would train linear_path=True genome_tokens=8" in result.output, result.output
    result = runner.invoke(build_app(), args)
    assert "would train linear_path=False genome_tokens=0" in result.output, result.output
    result = runner.invoke(build_app(), [*args, "--genome-tokens", "-1"])
    assert result.exit_code == 2 and "--genome-tokens must be >= 0" in result.output
