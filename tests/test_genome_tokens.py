"""Genomic-coordinate tokens: features grouped along the genome, one token per group, with
a (chromosome, position) encoding; the model stays Opacus- and torch.func-trainable and
round-trips through bundles."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.annotation import locate
from common.bundle import load_bundle, save_bundle
from common.config import ModelConfig
from common.dataset.multiomics import MultiOmicsData
from common.genome_tokens import GenomeTokenizer, genome_groups
from common.losses import weighted_loss
from common.model import ModalityTokenizer, ModelSpec, build_model
from common.preprocessing import Standardizer
from common.schema import FeatureSchema
from common.training import predict_proba

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENES = ["TP53", "ESR1", "GAPDH", "ERBB2", "FOXA1", "BRCA1", "XIST", "made_up_gene"]
MODALITIES = {"rna": GENES, "methylation": ["cg00000029", "cg00000108", "cg00000109"],
              "mirna": ["hsa-mir-21", "hsa-let-7b", "hsa_mir_628"]}
LABELS = ["A", "B", "C"]


def schema() -> FeatureSchema:
    return FeatureSchema.build({m: list(f) for m, f in MODALITIES.items()}, LABELS)


def model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, n_heads=2, genome_tokens=3, dropout=dropout,
                      attention_dropout=0.0, modality_dropout=0.0)
    return build_model(ModelSpec.for_schema(cfg, schema()))


def test_groups_follow_the_genome_and_unlocated_features_come_last():
    groups, anchors = genome_groups(GENES, 3)
    located = [i for g in groups[:-1] for i in g]
    loci = [locate(GENES[i]) for i in located]
    assert loci == sorted(loci) and len(located) == 7
    assert groups[-1] == [GENES.index("made_up_gene")] and anchors[-1] is None
    assert [len(g) for g in groups[:-1]] == [3, 2, 2]
    assert all(a is not None and a in loci for a in anchors[:-1])
    assert genome_groups(MODALITIES["methylation"], 3) is None  # probes: nothing located


def test_a_modality_the_table_cannot_place_keeps_the_soft_groups():
    m = model()
    kinds = dict(zip(m.modalities, map(type, m.tokenizers), strict=True))
    assert kinds == {"rna": GenomeTokenizer, "methylation": ModalityTokenizer,
                     "mirna": GenomeTokenizer}
    assert m.tokens[0] == 4  # three genome groups and the unlocated gene
    position = m.tokenizers[0].position
    assert position[:3].abs().sum() > 0 and position[3].abs().sum() == 0


def test_one_opacus_step_and_per_patient_gradients():
    from opacus import PrivacyEngine

    from client.distributed_dp import clipped_gradient_sum
    from client.dp import grad_sample_mode

    n_features = sum(len(f) for f in MODALITIES.values())
    x = torch.randn(12, n_features, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(12, 3)
    mask[::4, 1] = 0
    y = torch.arange(12) % 3
    net = model()
    sums, _ = clipped_gradient_sum(net, x[:6], mask[:6], y[:6], torch.zeros(3), clip=1e9)
    net.zero_grad()
    nn.functional.cross_entropy(net(x[:6], mask[:6]), y[:6], reduction="sum").backward()
    for name, p in net.named_parameters():
        assert torch.allclose(sums[name], p.grad, atol=1e-5, rtol=1e-4), name

    net = model(dropout=0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, optimizer, loader = PrivacyEngine().make_private(
            module=net, optimizer=optimizer,
            data_loader=DataLoader(TensorDataset(x, mask, y), batch_size=6),
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=grad_sample_mode(net))
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    xb, mb, yb = next(b for b in loader if len(b[2]))
    optimizer.zero_grad()
    weighted_loss(net(xb, mb), yb, torch.ones(3)).backward()
    optimizer.step()
    assert [k for k, p in net.named_parameters() if torch.equal(before[k], p.detach())] == []


def test_bundle_rebuilds_the_same_genome_tokens(tmp_path: Path):
    rng = np.random.default_rng(0)
    features = {m: rng.normal(size=(10, len(f))).astype(np.float32)
                for m, f in MODALITIES.items()}
    data = MultiOmicsData(np.array([f"p{i}" for i in range(10)]), features,
                          np.ones((10, 3), dtype=bool), np.arange(10) % 3, schema())
    net = model().eval()
    std = Standardizer.fit(data)
    directory = save_bundle(tmp_path / "model", model_config=net.spec.config,
                            schema=data.schema, standardizer=std,
                            state_dict=net.state_dict(), lineage={})
    bundle = load_bundle(directory)
    assert bundle.build_model().tokens == net.tokens
    assert np.allclose(bundle.predict_proba(data), predict_proba(net, std.transform(data)),
                       atol=1e-6)
