"""Secure aggregation (Flower SecAgg+) end to end on the simulation engine, real BRCA data.

Three hospitals, two rounds; one hospital crashes in the middle of round 1 (after the key
exchange, before sending its masked update). The test records every message the
coordinator receives and, inside each site, the update before it is masked, then checks:
the run completes; the coordinator never receives an individual update, in any record;
and each round's aggregate equals the weighted mean of the updates of the sites that
finished the round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

from common.config import ModelConfig, RunConfig

pytestmark = pytest.mark.e2e

CRASHING_PARTITION, CRASH_ROUND = 0, 1


def _round_of(msg: Message) -> int:
    return int(msg.content.config_records["fitins.config"]["server-round"])


def _unmasked_recorder(directory: str):
    """Inside the site: saves the update the training handler returns, before masking."""

    def mod(msg: Message, ctx: Context, call_next):
        reply = call_next(msg, ctx)
        if "fitres.parameters" in reply.content.array_records:
            arrays = parameters_to_ndarrays(arrayrecord_to_parameters(
                reply.content["fitres.parameters"], keep_input=True))
            n = int(reply.content.metric_records["fitres.num_examples"]["num_examples"])
            name = f"{ctx.node_config['partition-id']}-{_round_of(msg)}.npz"
            np.savez(Path(directory) / name, *arrays, n=n)
        return reply

    return mod


def _crash_mid_round(msg: Message, ctx: Context, call_next):
    """One site dies after the key exchange of round 1, before its masked update."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if (msg.metadata.message_type == MessageType.TRAIN and configs is not None
            and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS
            and ctx.node_config["partition-id"] == CRASHING_PARTITION
            and _round_of(msg) == CRASH_ROUND):
        raise RuntimeError("site lost power")
    return call_next(msg, ctx)


class _RecordingGrid:
    """The coordinator's grid, keeping a copy of everything sent and received."""

    def __init__(self, grid, sent: list, received: list) -> None:
        self.grid, self.sent, self.received = grid, sent, received

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory, bundled_dir_module):
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from common.config import offline_flower_env
    from server.app import run_server
    from simulations.runner import _backend_config

    root = tmp_path_factory.mktemp("secagg")
    updates = root / "updates"
    updates.mkdir()
    cfg = RunConfig.preset(
        "none", data=str(bundled_dir_module("brca")), partition="site", sites=3, rounds=2,
        local_epochs=1, seed=0, secagg=True, out=str(root / "run"), round_patience=5,
        model=ModelConfig(d_model=32, n_heads=4, n_layers=1, tokens_per_modality=2),
    )
    sent: list[Message] = []
    received: list[Message] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(_RecordingGrid(grid, sent, received), cfg, "secagg-test")

    offline_flower_env()
    run_simulation(
        server_app=server,
        client_app=build_client_app(cfg.to_flower(), mods=[_crash_mid_round],
                                    train_mods=[_unmasked_recorder(str(updates))]),
        num_supernodes=3, backend_config=_backend_config(),
    )
    return cfg, Path(cfg.out), updates, sent, received


def _updates(directory: Path) -> dict[tuple[int, int], tuple[int, list[np.ndarray]]]:
    out = {}
    for f in directory.glob("*.npz"):
        site, rnd = (int(x) for x in f.stem.split("-"))
        with np.load(f) as z:
            out[(site, rnd)] = (int(z["n"]), [z[f"arr_{i}"] for i in range(len(z.files) - 1)])
    return out


def test_run_completes_although_a_site_dropped_out(secure_run):
    import json

    _, run_dir, updates, _, _ = secure_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert set(rounds) == {1, 2}
    assert not rounds[1].get("failed") and not rounds[2].get("failed")
    assert any("failed during the round" in r["reason"] for r in rounds[1]["rejected"])
    assert rounds[2]["rejected"] == []
    assert (run_dir / "model" / "bundle.json").exists()
    saved = _updates(updates)
    assert (CRASHING_PARTITION, CRASH_ROUND) not in saved  # it really did not train
    assert len([k for k in saved if k[1] == 1]) == 2 and len([k for k in saved if k[1] == 2]) == 3


def test_coordinator_never_receives_an_individual_update(secure_run):
    _, _, updates, _, received = secure_run
    saved = _updates(updates)
    individual = [a for _, arrays in saved.values() for a in arrays if a.size > 1]
    masked_seen = 0
    for reply in received:
        # Describe replies carry feature sums (aggregate statistics), not updates.
        if reply.has_error() or reply.metadata.message_type == MessageType.QUERY:
            continue
        for record in reply.content.array_records.values():
            assert len(record) == 0, "a reply carried weights in clear"
        for record in reply.content.config_records.values():
            masked_seen += int(Key.MASKED_PARAMETERS in record)
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, bytes):
                        continue
                    try:
                        arr = bytes_to_ndarray(item)
                    except Exception:  # key material, ciphertexts: not arrays
                        continue
                    for update in individual:
                        if arr.shape == update.shape:
                            assert not np.allclose(arr, update, atol=1e-3)
                            # Masked integers carry no trace of the update (checked on
                            # large tensors, where chance correlation is below ~0.03; a
                            # constant update, such as the absent-feature embeddings of
                            # sites lacking no feature, correlates with nothing).
                            if update.size < 1000 or update.std() == 0:
                                continue
                            assert abs(np.corrcoef(arr.ravel().astype(float),
                                                   update.ravel())[0, 1]) < 0.2
    assert masked_seen >= 5  # 2 + 3 masked updates really went through the protocol


def test_each_aggregate_is_the_weighted_mean_of_the_finished_sites(secure_run):
    _, _, updates, sent, _ = secure_run
    saved = _updates(updates)
    # The global weights a round starts from travel in its masked-vector request.
    starts = {}
    for msg in sent:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
            starts[_round_of(msg)] = parameters_to_ndarrays(arrayrecord_to_parameters(
                msg.content["fitins.parameters"], keep_input=True))
    assert set(starts) == {1, 2}
    finished = [v for (_, rnd), v in saved.items() if rnd == 1]
    total = sum(n for n, _ in finished)
    expected = [sum(n * arrays[i] for n, arrays in finished) / total
                for i in range(len(starts[1]))]
    got = [b.astype(np.float64) - a for a, b in zip(starts[1], starts[2], strict=True)]
    assert any(np.abs(e).max() > 1e-3 for e in expected)  # training moved the weights
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-4)


def test_secagg_with_two_sites_is_refused_before_training(bundled_dir):
    from simulations.runner import simulate

    cfg = RunConfig(data=str(bundled_dir("brca")), partition="iid", sites=2, secagg=True)
    with pytest.raises(ValueError, match="at least 3 sites; the iid partition has 2"):
        simulate(cfg, compare=False, show_progress=False)


def test_secagg_refuses_central_dp_and_server_momentum():
    from strategies import check_combination

    with pytest.raises(ValueError, match="central DP must clip"):
        check_combination(RunConfig(secagg=True, dp="central", strategy="fedavg"))
    with pytest.raises(ValueError, match="plain weighted mean"):
        check_combination(RunConfig(secagg=True, dp="local", strategy="fedavgm"))
