"""Tests for common.model (the multi-modal transformer), common.training and its loss,
optimizer and model-selection modules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import ModelConfig, RunConfig, TrainConfig
from common.dataset.multiomics import MultiOmicsData
from common.losses import (
    ProximalTerm,
    WeightedCrossEntropy,
    class_weights,
    evaluation_loss,
    weighted_loss,
)
from common.model import ModelSpec, build_model, drop_modalities
from common.model_selection import BestTracker
from common.optimization import lr_at, make_optimizer
from common.schema import FeatureSchema
from common.training import (
    fit,
    make_loader,
    predict_proba,
    seed_everything,
    train_epochs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = {"rna": 7, "mirna": 3, "clin": 1}




def small_config(**overrides) -> ModelConfig:
    base = {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 1,
        "tokens_per_modality": 2,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "modality_dropout": 0.0,
    }
    return ModelConfig(**{**base, **overrides})


def small_model(sizes: dict[str, int] = SIZES, n_classes: int = 3, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return build_model(ModelSpec(small_config(**cfg), dict(sizes), n_classes))


def random_batch(sizes: dict[str, int] = SIZES, n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sum(sizes.values()), generator=g)
    mask = torch.ones(n, len(sizes))
    return x, mask


def synthetic_data(n: int, seed: int, *, signal: float = 2.0) -> MultiOmicsData:
    """Two modalities whose means shift with the class (3 classes); some rows masked."""
    rng = np.random.default_rng(seed)
    schema = FeatureSchema.build(
        {"a": [f"a{i}" for i in range(6)], "b": [f"b{i}" for i in range(4)]}, ["x", "y", "z"]
    )
    y = rng.integers(0, 3, n)
    centers_a = np.eye(3, 6) * signal
    centers_b = np.eye(3, 4)[:, ::-1] * signal
    a = (centers_a[y] + rng.normal(size=(n, 6))).astype(np.float32)
    b = (centers_b[y] + rng.normal(size=(n, 4))).astype(np.float32)
    mask = np.ones((n, 2), dtype=bool)
    mask[::5, 1] = False
    b[~mask[:, 1]] = 0.0
    return MultiOmicsData(
        np.array([f"p{seed}-{i}" for i in range(n)]), {"a": a, "b": b}, mask,
        np.asarray(y, dtype=np.int64), schema,
    )


def param_distance(model: nn.Module, start: dict[str, torch.Tensor]) -> float:
    return math.sqrt(
        sum(float(((p.detach() - start[k]) ** 2).sum()) for k, p in model.named_parameters())
    )


# --- shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [{"only": 5}, {"a": 10, "b": 1}, {"rna": 7, "mirna": 3, "clin": 1, "meth": 16}],
)
def test_output_shape_is_batch_by_classes(sizes):
    model = small_model(sizes, n_classes=4).eval()
    x, mask = random_batch(sizes, n=9)
    out = model(x, mask)
    assert out.shape == (9, 4)
    assert torch.isfinite(out).all()


def test_tokens_per_modality_is_capped_by_feature_count():
    model = small_model({"big": 20, "small": 2, "one": 1}, tokens_per_modality=4)
    assert model.tokens == [4, 2, 1]
    assert model.token_embedding.num_embeddings == 7
    assert [t.n_tokens for t in model.tokenizers] == [4, 2, 1]


def test_d_model_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        small_model(d_model=30, n_heads=4)


# --- modality mask ---------------------------------------------------------------------


def test_masked_modality_values_do_not_change_the_output():
    model = small_model().eval()
    x, mask = random_batch(n=10)
    mask[:, 1] = 0  # nobody has mirna
    mask[3, 0] = 0  # patient 3 lacks rna too
    lo, hi = SIZES["rna"], SIZES["rna"] + SIZES["mirna"]
    x2 = x.clone()
    x2[:, lo:hi] = torch.randn(10, hi - lo) * 50
    x2[3, :lo] = 123.0
    with torch.no_grad():
        assert torch.allclose(model(x, mask), model(x2, mask), atol=1e-6, rtol=0)


def test_present_modality_values_do_change_the_output():
    model = small_model().eval()
    x, mask = random_batch(n=10)
    lo, hi = SIZES["rna"], SIZES["rna"] + SIZES["mirna"]
    x2 = x.clone()
    x2[:, lo:hi] = torch.randn(10, hi - lo) * 5
    with torch.no_grad():
        diff = (model(x, mask) - model(x2, mask)).abs().amax(dim=1)
    assert (diff > 1e-4).all()


# --- modality weights ------------------------------------------------------------------


def test_modality_weights_sum_to_one_over_present_modalities():
    model = small_model()
    with torch.no_grad():
        model.modality_logit.weight.copy_(torch.tensor([[0.5], [-1.0], [2.0]]))
    present = torch.tensor(
        [[True, True, True], [True, False, True], [False, True, False], [False, False, True]]
    )
    w = model.modality_weights(present).detach()
    assert torch.allclose(w.sum(dim=1), torch.ones(4), atol=1e-6)
    assert (w[~present] == 0).all()
    assert (w[present] > 0).all()
    # Row 1 by hand: softmax of logits 0.5 and 2.0.
    e = np.exp([0.5, 2.0])
    assert w[1, 0].item() == pytest.approx(e[0] / e.sum(), rel=1e-5)
    assert w[1, 2].item() == pytest.approx(e[1] / e.sum(), rel=1e-5)


def test_learned_modality_weights_cover_every_modality():
    model = small_model()
    weights = model.learned_modality_weights()
    assert list(weights) == list(SIZES)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    # Logits start at zero: equal weights.
    for v in weights.values():
        assert v == pytest.approx(1 / len(SIZES), abs=1e-6)


# --- modality dropout ------------------------------------------------------------------


def test_modality_dropout_only_in_train_mode():
    # dropout 0 so modality dropout is the only source of randomness.
    model = small_model(dropout=0.0, attention_dropout=0.0, modality_dropout=0.9)
    reference = small_model(dropout=0.0, attention_dropout=0.0, modality_dropout=0.0)
    reference.load_state_dict(model.state_dict())
    x, mask = random_batch(n=32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        out1, out2 = model(x, mask), model(x, mask)
        assert torch.equal(out1, out2)
        assert torch.allclose(out1, reference(x, mask), atol=1e-6)
        model.train()
        reference.train()
        torch.manual_seed(1)
        t1 = model(x, mask)
        t2 = model(x, mask)
        assert not torch.allclose(t1, t2)
        assert torch.allclose(reference(x, mask), out1, atol=1e-6)


def test_drop_modalities_never_leaves_a_patient_empty():
    torch.manual_seed(0)
    present = torch.rand(2000, 4) > 0.4
    present[:, 0] |= ~present.any(dim=1)  # every patient has at least one modality
    out = drop_modalities(present, 0.999)
    assert out.any(dim=1).all()
    assert not (out & ~present).any()  # never invents a modality
    # With p close to 1 almost everyone is reduced to what the fallback restores.
    assert out.sum() < present.sum()


def test_drop_modalities_rate_and_identity():
    torch.manual_seed(0)
    present = torch.ones(4000, 3, dtype=torch.bool)
    assert torch.equal(drop_modalities(present, 0.0), present)
    out = drop_modalities(present, 0.3)
    kept = out.float().mean().item()
    assert 0.65 < kept < 0.78  # ~0.7, plus the restored all-dropped rows (0.3^3)


# --- architecture requirements ---------------------------------------------------------


def test_default_model_config_is_the_product_architecture():
    cfg = ModelConfig()
    assert cfg.d_model == 512
    assert cfg.n_heads == 8
    run_model = RunConfig.preset("none").model
    assert run_model.d_model == 512
    assert run_model.n_heads == 8


def test_no_bare_parameters_and_no_batchnorm():
    model = build_model(ModelSpec(ModelConfig(), dict(SIZES), 5))
    assert len(model._parameters) == 0
    allowed = (nn.Linear, nn.LayerNorm, nn.Embedding)
    for name, module in model.named_modules():
        assert not isinstance(module, nn.modules.batchnorm._BatchNorm), name
        if module._parameters:
            assert isinstance(module, allowed), f"{name} ({type(module).__name__}) holds params"


# --- Opacus ----------------------------------------------------------------------------


def test_opacus_module_validator_finds_no_problems():
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(small_model(), strict=False) == []


def _private(optimizer_cls, seed: int = 0):
    from opacus import PrivacyEngine

    model = small_model(seed=seed)
    x, mask = random_batch(n=32, seed=seed)
    mask[::3, 1] = 0
    y = torch.arange(32) % 3
    optimizer = optimizer_cls(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=DataLoader(TensorDataset(x, mask, y), batch_size=8),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )


def _first_nonempty_batch(loader):
    for batch in loader:
        if len(batch[2]) > 0:
            return batch
    raise AssertionError("every Poisson batch was empty")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_opacus_per_sample_gradients_have_batch_leading_dim():
    torch.manual_seed(0)
    model, _, loader = _private(torch.optim.SGD)
    x, mask, y = _first_nonempty_batch(loader)
    weighted_loss(model(x, mask), y, torch.ones(3)).backward()
    wrong = {
        name: tuple(p.grad_sample.shape)
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad_sample.shape[0] != len(y)
    }
    assert wrong == {}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_opacus_private_step_updates_every_parameter(optimizer_cls):
    torch.manual_seed(0)
    model, optimizer, loader = _private(optimizer_cls)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    x, mask, y = _first_nonempty_batch(loader)
    optimizer.zero_grad()
    weighted_loss(model(x, mask), y, torch.tensor([1.0, 2.0, 0.5])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert getattr(p, "grad_sample", None) is not None, name
            assert p.grad_sample.shape[1:] == p.shape, name
    optimizer.step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(before[k], p.detach())]
    assert unchanged == []


# --- training utilities ----------------------------------------------------------------


def test_class_weights_balanced_by_hand():
    counts = np.array([10, 0, 30, 60])
    w = class_weights(counts)
    n, present = 100, 3
    expected = [n / (present * 10), 0.0, n / (present * 30), n / (present * 60)]
    assert w.dtype == np.float32
    assert np.allclose(w, expected)
    assert np.allclose(class_weights(counts, "none"), 1.0)
    with pytest.raises(ValueError, match="bogus"):
        class_weights(counts, "bogus")


def test_weighted_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    weights = torch.tensor([0.5, 2.0, 1.5])
    lg = logits.double().numpy()
    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
    per_sample = -logp[np.arange(6), y.numpy()]
    expected = np.mean(weights.numpy()[y.numpy()] * per_sample)
    assert weighted_loss(logits, y, weights).item() == pytest.approx(expected, rel=1e-5)
    # Not CrossEntropyLoss(weight=...), which divides by the batch's total weight.
    normalised = nn.functional.cross_entropy(logits, y, weight=weights).item()
    assert normalised != pytest.approx(expected, rel=1e-3)


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.05)
    grid = np.linspace(0, 1, 201)
    lrs = np.array([lr_at(p, cfg) for p in grid])
    warm = grid < cfg.warmup_fraction
    assert lrs[0] < 0.1 * cfg.lr
    assert np.all(np.diff(lrs[warm]) > 0)
    assert lrs.max() == pytest.approx(cfg.lr, rel=1e-6)
    assert np.all(np.diff(lrs[~warm]) <= 1e-15)
    assert lrs[-1] == pytest.approx(cfg.min_lr_fraction * cfg.lr, rel=1e-6)
    assert lr_at(1.5, cfg) == pytest.approx(lrs[-1])
    assert lr_at(-1.0, cfg) == pytest.approx(lrs[0])


def test_proximal_term_is_zero_at_snapshot_and_quadratic_after():
    model = small_model()
    mu = 0.3
    prox = ProximalTerm.snapshot(model, mu)
    assert prox(model).item() == 0.0
    params = list(model.parameters())
    with torch.no_grad():
        params[0].add_(0.1)
        params[3].sub_(0.2)
    expected = mu / 2 * (0.01 * params[0].numel() + 0.04 * params[3].numel())
    assert prox(model).item() == pytest.approx(expected, rel=1e-4)
    # Snapshot is a copy: moving the model did not move the reference.
    assert not torch.equal(prox.global_params[0], params[0].detach())


def _train(mu: float, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    data = synthetic_data(60, seed=3)
    seed_everything(seed)
    model = small_model(sizes=data.schema.feature_counts(), seed=seed)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = TrainConfig(batch_size=16, lr=0.05, warmup_fraction=0.0, grad_clip=0.0)
    proximal = ProximalTerm.snapshot(model, mu) if mu > 0 else None
    train_epochs(
        model,
        make_loader(data, cfg.batch_size, shuffle=True, seed=seed),
        torch.optim.SGD(model.parameters(), lr=cfg.lr),
        cfg,
        epochs=4,
        class_weight=np.ones(3, dtype=np.float32),
        proximal=proximal,
    )
    return model, start


def test_fedprox_large_mu_stays_closer_to_the_global_weights():
    free, start_free = _train(mu=0.0)
    prox, start_prox = _train(mu=10.0)
    for k in start_free:
        assert torch.equal(start_free[k], start_prox[k])
    d_free = param_distance(free, start_free)
    d_prox = param_distance(prox, start_prox)
    assert d_free > 0
    assert d_prox < 0.5 * d_free


def test_train_epochs_is_deterministic_for_a_seed():
    a, _ = _train(mu=0.0, seed=7)
    b, _ = _train(mu=0.0, seed=7)
    c, _ = _train(mu=0.0, seed=8)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_train_epochs_reports_examples_and_steps():
    data = synthetic_data(37, seed=1)
    model = small_model(sizes=data.schema.feature_counts())
    cfg = TrainConfig(batch_size=8)
    steps = []
    stats = train_epochs(
        model, make_loader(data, 8, shuffle=True), make_optimizer(model, cfg), cfg,
        epochs=2, class_weight=np.ones(3, dtype=np.float32), on_step=steps.append,
    )
    assert stats.n_examples == 2 * 37
    assert stats.steps == 2 * 5
    assert steps == list(range(1, 11))
    assert np.isfinite(stats.loss) and stats.loss > 0


def _fit_config(**overrides) -> TrainConfig:
    base = {"batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.1, "max_epochs": 12,
            "patience": 12, "device": "cpu", "weight_decay": 0.0}
    return TrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("selection", ["loss", "f1_macro"])
def test_fit_learns_a_separable_problem_and_marks_one_best_epoch(selection):
    from common.metrics import classification_metrics

    train, val = synthetic_data(120, seed=1), synthetic_data(60, seed=2)
    model = small_model(sizes=train.schema.feature_counts())
    result = fit(model, train, val, _fit_config(selection=selection), seed=0)
    best = [r for r in result.history if r["best"]]
    assert len(best) == 1
    assert best[0]["epoch"] == result.best_epoch
    losses = [r["val"]["loss"] for r in result.history]
    f1s = [r["val"]["f1_macro"] for r in result.history]
    if selection == "loss":
        assert best[0]["val"]["loss"] == min(losses)
    else:  # highest macro-F1, ties broken by the lower loss
        assert best[0]["val"]["f1_macro"] == max(f1s)
        tied = [r["val"]["loss"] for r in result.history if r["val"]["f1_macro"] == max(f1s)]
        assert best[0]["val"]["loss"] == min(tied)
    proba = predict_proba(model, val)
    restored = classification_metrics(val.labels, proba, val.schema.label_names)
    assert restored["f1_macro"] == pytest.approx(best[0]["val"]["f1_macro"])
    assert restored["accuracy"] > 0.7  # chance is ~1/3


def test_best_tracker_criteria():
    with pytest.raises(ValueError, match="'accuracy'"):
        BestTracker("accuracy")
    f1 = BestTracker("f1_macro")
    assert f1.update(1, 0.5, 1.0)
    assert not f1.update(2, 0.5, 1.2)  # same F1, higher loss
    assert f1.update(3, 0.5, 0.9)  # same F1, lower loss
    assert not f1.update(4, 0.4, 0.1)
    assert f1.best_step == 3
    assert not f1.stale(5, patience=3) and f1.stale(6, patience=3)
    loss = BestTracker("loss")
    assert loss.update(1, 0.5, 1.0)
    assert loss.update(2, 0.1, 0.8)
    assert not loss.update(3, 0.9, 0.85)
    assert loss.best_step == 2


def test_best_tracker_state_resumes_the_same_selection():
    tracker = BestTracker("f1_macro")
    tracker.update(1, 0.6, 1.0)
    tracker.update(2, 0.7, 0.9)
    resumed = BestTracker("f1_macro")
    resumed.restore(tracker.state())
    assert resumed.best_step == 2
    assert not resumed.update(3, 0.7, 0.95)  # same F1, higher loss: not better than round 2
    assert resumed.update(4, 0.7, 0.8)


def test_fit_restores_the_best_epochs_weights():
    train = synthetic_data(120, seed=1)
    # Validation labels are a permutation of the signal: the better the model fits the
    # training data, the worse its validation loss, so the best epoch (by loss) is early.
    clean = synthetic_data(60, seed=2)
    val = MultiOmicsData(clean.patient_ids, clean.features, clean.mask,
                         (clean.labels + 1) % 3, clean.schema)
    model = small_model(sizes=train.schema.feature_counts())
    cw = class_weights(train.class_counts())
    cfg = _fit_config(patience=4, max_epochs=20, selection="loss")
    result = fit(model, train, val, cfg, seed=0, class_weight=cw)
    assert result.best_epoch < len(result.history)
    best_loss = result.history[result.best_epoch - 1]["val"]["loss"]
    last_loss = result.history[-1]["val"]["loss"]
    assert last_loss > best_loss + 1e-3
    restored = evaluation_loss(predict_proba(model, val), val.labels, cw)
    assert restored == pytest.approx(best_loss, rel=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.state_dict[k]), k


def test_make_optimizer_choices():
    from dataclasses import replace

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    sgd = make_optimizer(model, replace(TrainConfig(), optimizer="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.8
    assert sgd.param_groups[0]["weight_decay"] > 0 and sgd.param_groups[1]["weight_decay"] == 0
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.AdamW)
    with pytest.raises(ValueError, match="'adam'"):
        make_optimizer(model, replace(TrainConfig(), optimizer="adam"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ghost_clipping_step_equals_explicit_per_sample_clipping():
    """Ghost clipping (local DP on large models): the update of clipping by hand."""
    from opacus import PrivacyEngine

    x, mask = random_batch(n=16, seed=3)
    mask[::4, 0] = 0
    y = torch.arange(16) % 3
    weights, clip, lr = torch.tensor([1.0, 2.0, 0.5]), 0.05, 0.1
    reference = small_model(seed=1, dropout=0.0)
    reference.train()
    torch.manual_seed(7)
    per_sample = []
    for i in range(len(y)):  # no dropout: the forward is deterministic
        reference.zero_grad()
        weighted_loss(reference(x[i:i + 1], mask[i:i + 1]), y[i:i + 1], weights).backward()
        g = [p.grad.detach().clone() for p in reference.parameters()]
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        per_sample.append([t * min(1.0, clip / (float(norm) + 1e-6)) for t in g])
    expected = [p.detach() - lr * sum(s[k] for s in per_sample) / len(y)
                for k, p in enumerate(reference.parameters())]

    model = small_model(seed=1, dropout=0.0)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, criterion, _ = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
            data_loader=DataLoader(TensorDataset(x, mask, y), batch_size=len(y)),
            noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False,
            criterion=WeightedCrossEntropy(weights), grad_sample_mode="ghost")
    optimizer.zero_grad()
    criterion(private(x, mask), y).backward()
    optimizer.step()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-6)
