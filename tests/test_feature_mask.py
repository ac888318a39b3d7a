"""Per-feature presence masks: a feature a site does not measure is masked in every model
kind (common.model.split_mask, AbsentFeatures), carried by the data (MultiOmicsData,
harmonization, standardization, training tensors) and ignored by older weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from small_models import small_config
from torch.utils.data import DataLoader, TensorDataset

from common.consortium_features import site_input
from common.dataset.multiomics import MultiOmicsData
from common.losses import weighted_loss
from common.model import ModelSpec, accepts_feature_mask, build_model, split_mask
from common.preprocessing import Standardizer
from common.schema import FeatureSchema
from common.training import tensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ["mmt", "tabtransformer", "perceiver"]
SIZES = {"rna": 8, "mirna": 3, "clinical": 4}
LABELS = ["A", "B", "C"]


def small_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(small_config(kind), dict(SIZES), len(LABELS))).eval()


def learned_absence(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random absent-feature embeddings (a trained model's are non-zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".embedding.weight" in name and name.startswith("absent"):
                p.copy_(torch.randn_like(p))
    return model


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, modality mask, feature presence)``: rna features 1 and 5, clinical 0 absent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sum(SIZES.values()), generator=g)
    have = torch.ones(n, sum(SIZES.values()))
    have[:, [1, 5, 11]] = 0.0
    return x, torch.ones(n, len(SIZES)), have


def made_private(model: torch.nn.Module, grad_sample_mode: str, **kwargs) -> tuple:
    """Opacus' ``make_private`` of ``model`` without noise, over 16 patients of
    :func:`batch` with its feature masks, in batches of 8."""
    from opacus import PrivacyEngine

    x, mask, have = batch(n=16)
    data = TensorDataset(x * have, torch.cat([mask, have], 1), torch.arange(16) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
            data_loader=DataLoader(data, batch_size=8), noise_multiplier=0.0,
            max_grad_norm=1e6, grad_sample_mode=grad_sample_mode, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_absent_features_are_masked_not_read_as_values(kind: str) -> None:
    model = learned_absence(small_model(kind))
    assert accepts_feature_mask(model)
    x, mask, have = batch()
    with torch.no_grad():
        masked = model(x, torch.cat([mask, have], dim=1))
        # The value at an absent feature is never read ...
        x2 = x.clone()
        x2[:, [1, 5, 11]] = 100.0
        assert torch.allclose(masked, model(x2, torch.cat([mask, have], dim=1)), atol=1e-5)
        # ... and absent differs from a measured average value (0 after standardization).
        x0 = x.clone()
        x0[:, [1, 5, 11]] = 0.0
        assert not torch.allclose(masked, model(x0, mask), atol=1e-4)
        # An all-present feature mask is the plain modality mask.
        assert torch.allclose(model(x, torch.cat([mask, torch.ones_like(have)], dim=1)),
                              model(x, mask), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_absence_embeddings_leave_the_network_unchanged(kind: str) -> None:
    """Zero at first and drawn outside the random stream: a model that never sees an
    absent feature initializes and predicts exactly as one without them."""
    model = small_model(kind)
    x, mask, have = batch()
    have[:, 11] = 1.0  # the TabTransformer's clinical tokens are dropped, not embedded
    with torch.no_grad():
        x0 = x * have
        assert torch.equal(model(x0, torch.cat([mask, have], dim=1)), model(x0, mask))
    assert all(float(p.detach().abs().sum()) == 0.0 for n, p in model.named_parameters()
               if n.startswith("absent"))
    from common.model import AbsentFeatures

    torch.manual_seed(0)
    AbsentFeatures(50, 16)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_opacus_gives_per_sample_gradients_to_the_absent_embeddings(kind: str) -> None:
    model, optimizer, loader = made_private(small_model(kind).train(), "hooks")
    xb, mb, yb = next(b for b in loader if len(b[2]))
    optimizer.zero_grad()
    weighted_loss(model(xb, mb), yb, torch.ones(3)).backward()
    absent = {n: p for n, p in model.named_parameters() if "absent" in n}
    assert absent
    for name, p in absent.items():
        assert p.grad_sample.shape == (len(yb), *p.shape), name
    # Only the embeddings of the absent features learn (no noise here).
    if kind != "tabtransformer":
        rna = absent["_module.absent.0.embedding.weight"].grad_sample.abs().sum(dim=(0, 1))
        assert (rna[[1, 5]] > 0).all() and float(rna[[0, 2, 3, 4, 6, 7]].sum()) == 0.0


def test_weights_without_absence_embeddings_load_and_ignore_feature_masks() -> None:
    fresh = learned_absence(small_model("mmt"))
    old_state = {k: v for k, v in fresh.state_dict().items() if not k.startswith("absent")}
    old = small_model("mmt", seed=1)
    old.load_state_dict(old_state)  # strict: the hook fills the absent embeddings
    assert not accepts_feature_mask(old) and accepts_feature_mask(fresh)
    x, mask, have = batch()
    with torch.no_grad():
        assert torch.equal(old(x, torch.cat([mask, have], dim=1)), old(x, mask))
    old.load_state_dict(fresh.state_dict())
    assert accepts_feature_mask(old)


def test_split_mask_reads_the_modality_mask_first() -> None:
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    present, features = split_mask(mask, 2)
    assert present.tolist() == [[True, False]]
    assert features.tolist() == [[True, False, True]]
    assert split_mask(mask[:, :2], 2)[1] is None


# ------------------------------------------------------------------------------- data
def site_data(n: int = 10, lacking: tuple[int, ...] = ()) -> MultiOmicsData:
    """Raw data of a site; ``lacking``: rna features the site does not measure."""
    rng = np.random.default_rng(0)
    names = [f"g{i}" for i in range(6) if i not in lacking]
    schema = FeatureSchema.build({"rna": names, "mirna": ["m0", "m1"]}, ["A", "B"])
    features = {"rna": rng.normal(5, 2, (n, len(names))).astype(np.float32),
                "mirna": rng.normal(size=(n, 2)).astype(np.float32)}
    mask = np.ones((n, 2), dtype=bool)
    return MultiOmicsData(np.array([f"p{i}" for i in range(n)]), features, mask,
                          np.arange(n) % 2, schema)


def test_a_site_lacking_features_gets_a_feature_mask_that_reaches_the_tensors() -> None:
    full = site_data()
    schema = full.schema
    std = Standardizer.fit(full)
    lacking = site_input(site_data(lacking=(1, 4)), schema, std).data
    assert lacking.feature_mask is not None
    assert lacking.feature_mask["rna"][0].tolist() == [True, False, True, True, False, True]
    assert lacking.feature_mask["mirna"].all()
    assert np.all(lacking.features["rna"][:, [1, 4]] == 0.0)
    _, mask, _ = tensors(lacking)
    assert mask.shape == (10, 2 + 8)
    assert mask[:, 2:].sum(dim=1).tolist() == [6.0] * 10
    # The mask follows the patients and the schema's feature order.
    part = lacking.subset([3, 1])
    assert part.feature_mask["rna"].shape == (2, 6)
    reordered = FeatureSchema.build({"mirna": ["m0", "m1"], "rna": [f"g{i}" for i in
                                                                     (5, 4, 3, 2, 1, 0)]},
                                    ["A", "B"])
    assert lacking.align_to(reordered).feature_mask["rna"][0].tolist() == [
        True, False, True, True, False, True][::-1]
    # A site lacking nothing adds no feature mask: the model input is as before.
    whole = site_input(full, schema, std).data
    assert whole.feature_mask is None and tensors(whole)[1].shape == (10, 2)


def test_standardizing_keeps_absent_features_at_zero_and_masked() -> None:
    data = site_data()
    have = {"rna": np.ones((10, 6), dtype=bool), "mirna": np.ones((10, 2), dtype=bool)}
    have["rna"][:5, 2] = False
    data = MultiOmicsData(data.patient_ids, data.features, data.mask, data.labels,
                          data.schema, feature_mask=have)
    out = Standardizer.fit(site_data()).transform(data)
    assert np.all(out.features["rna"][:5, 2] == 0.0) and np.all(out.features["rna"][5:, 2] != 0)
    assert out.feature_mask is have
    assert out.model_mask().shape == (10, 2 + 8)
    with pytest.raises(ValueError, match="feature mask"):
        MultiOmicsData(data.patient_ids, data.features, data.mask, data.labels, data.schema,
                       feature_mask={"rna": have["rna"][:, :3], "mirna": have["mirna"]})


@pytest.mark.parametrize("kind", KINDS)
def test_per_patient_gradients_with_feature_masks_sum_to_the_batch_gradient(kind: str) -> None:
    from client.distributed_dp import clipped_gradient_sum

    model = learned_absence(small_model(kind))
    x, mask, have = batch(n=6)
    x, full = x * have, torch.cat([mask, have], dim=1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    sums, _ = clipped_gradient_sum(model, x, full, y, torch.zeros(3), clip=1e9, chunk=4)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x, full), y, reduction="sum").backward()
    for name, p in model.named_parameters():
        assert torch.allclose(sums[name], p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_ghost_clipping_trains_only_the_absent_features_embeddings(kind: str) -> None:
    """Opacus' ghost clipping (large models) through the absent embeddings, no noise."""
    model = small_model(kind).train()
    private, optimizer, criterion, loader = made_private(
        model, "ghost", criterion=torch.nn.CrossEntropyLoss())
    weight = next(p for n, p in model.named_parameters() if n.startswith("absent"))
    xb, mb, yb = next(b for b in loader if len(b[2]))
    optimizer.zero_grad()
    criterion(private(xb, mb), yb).backward()
    optimizer.step()
    assert weight.detach().abs().sum(dim=0).nonzero().flatten().tolist() == [1, 5]


def test_per_patient_standardization_leaves_absent_features_out_of_the_patients_scale():
    schema = FeatureSchema.build({"rna": ["a", "b", "c", "d"]}, ["x", "y"])
    values = np.array([[1.0, 2.0, 3.0, np.nan], [4.0, 0.0, 8.0, 6.0]], dtype=np.float32)
    have = np.array([[True, True, True, False], [True, True, True, True]])
    data = MultiOmicsData(np.array(["p1", "p2"]), {"rna": values}, np.ones((2, 1), bool),
                          np.array([0, 1]), schema, feature_mask={"rna": have})
    z = Standardizer.for_each_patient(schema).transform(data).features["rna"]
    first = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(z[0, :3], (first - first.mean()) / first.std(), rtol=1e-6)
    assert z[0, 3] == 0.0 and np.isfinite(z).all()
    full = values[1].astype(np.float64)
    np.testing.assert_allclose(z[1], (full - full.mean()) / full.std(), rtol=1e-6)
