"""The deployment engine with real processes on loopback: one coordinator
(``cancer-alpha coordinator start``: flower-superlink with TLS and node authentication)
and three hospitals (``cancer-alpha site start --config site.toml``: flower-supernode),
each site holding one partition of the bundled BRCA data (node config, read in place).

* a short federation completes over TLS with every site authenticated;
* unknown, revoked, key-less and plaintext nodes are refused;
* a site SIGKILLed mid-round: the round completes with the others (Flower marks the
  node offline after missed heartbeats), the site restarts and takes part again;
* the coordinator SIGKILLed after a completed round and restarted with ``--resume``
  continues after that round: no round lost or repeated.

Every process a test starts is stopped by PID, with its descendants, at the end. The
real-process tests are marked ``e2e``; the others (round-loop exchange with a site going
offline, checkpoint round trip, coordinator run-config handling) take milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from common.pki import Pki, init_pki, issue_site
from common.processes import (
    command_line,
    free_port,
    processes_mentioning,
    send_signal,
)
from simulations.consortium import DemoPartition, LoopbackConsortium, make_pki

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SITES = ("site-a", "site-b", "site-c")
# Small and short: the cost is dominated by one ClientApp process per message.
RUN_OPTIONS = ["--local-epochs", "1",
               "--run-config",
               "dp=none model.kind=\"mmt\" model.d-model=32 model.n-heads=2 train.batch-size=32"]
# Local DP: the sites keep privacy ledgers, which a coordinator crash must not upset.
DP_RUN_OPTIONS = [*RUN_OPTIONS[:-1], RUN_OPTIONS[-1].replace("dp=none", "dp=local")]
# The product's default: distributed DP (class centroids, 2 rounds, SecAgg+).
DEFAULT_RUN_OPTIONS = ["--run-config", "dp=\"distributed\" epsilon=8.0"]
TIMEOUT = 420.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "pki", SITES, revoked=["revoked-site"])


class Consortium(LoopbackConsortium):
    """The loopback consortium with the Prometheus endpoint on, whose sites hold one
    partition each of one shared dataset (read in place)."""

    def __init__(self, root: Path, pki: Pki, data: Path) -> None:
        self.metrics_port = free_port()
        # Two shared cores: one torch thread per process avoids oversubscription.
        super().__init__(root, pki, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                         coordinator_options=["--metrics-port", str(self.metrics_port), "-v"])
        self.data = data

    def site(self, site: str, *args: str, key: Path | None = None) -> subprocess.Popen:
        """Site ``site`` with partition k of the data (the k-th of SITES; others: 0)."""
        index = SITES.index(site) if site in SITES else 0
        toml = self.site_toml(site, self.data, key=key,
                              demo=DemoPartition(index, len(SITES)))
        return super().site(site, toml, *args)

    def start_sites(self) -> dict[str, subprocess.Popen]:
        return {s: self.site(s) for s in SITES}

    def wait_registered(self, coordinator: subprocess.Popen, sites=SITES,
                        timeout: float = 120.0) -> dict:
        return super().wait_registered(coordinator, sites, timeout)

    def wait(self, proc: subprocess.Popen, timeout: float = TIMEOUT) -> int:
        return super().wait(proc, timeout)


def _no_leftovers(root: Path) -> None:
    leftover = processes_mentioning(str(root))
    send_signal(leftover, signal.SIGKILL)
    assert not leftover, [command_line(p) for p in leftover]


@pytest.fixture
def consortium(tmp_path, pki, bundled_dir):
    with Consortium(tmp_path, pki, bundled_dir("brca")) as c:
        yield c
    _no_leftovers(tmp_path)


def _train_sites(record: dict) -> set[str]:
    return {s["site"] for s in record["sites"] if "n_train" in s}


@pytest.mark.e2e
def test_federation_over_tls_with_node_auth_completes(consortium, tmp_path):
    """The default run (distributed DP) between real SuperNodes over TLS."""
    coordinator = consortium.coordinator("e2e", "--rounds", "2", "--min-sites", "3",
                                         *DEFAULT_RUN_OPTIONS)
    registry = consortium.wait_registered(coordinator)
    with urllib.request.urlopen(
            f"http://127.0.0.1:{consortium.metrics_port}/metrics", timeout=10) as page:
        assert page.status == 200  # the coordinator's Prometheus endpoint is up
    sites = consortium.start_sites()
    assert consortium.wait_run(coordinator, list(sites.values()), TIMEOUT) == 0, \
        consortium.log(coordinator)
    # `coordinator start` prints the registered sites, then each round as it ends.
    printed = consortium.logs[coordinator.pid].read_text(errors="replace")
    assert f"sites registered: {len(SITES)} ({', '.join(SITES)})" in printed, printed[-3000:]
    assert "\nround 1/2: 3 sites" in printed and "\nround 2/2: val macro-F1" in printed

    # The run's ServerApp process wrote its metrics for the coordinator to serve.
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry_ = CollectorRegistry()
    MultiProcessCollector(registry_, path=str(consortium.state / "metrics"))
    assert registry_.get_sample_value("cancer_alpha_rounds_total",
                                      {"outcome": "completed"}) == 2
    assert registry_.get_sample_value("cancer_alpha_participating_sites") == len(SITES)

    m = consortium.metrics("e2e")
    assert m["rounds_run"] == 2
    assert {s["site"] for s in m["sites"]} == set(SITES)
    for record in m["rounds"]:
        assert {s["site"] for s in record["sites"] if "epsilon" in s} == set(SITES)
        assert record["rejected"] == []
    assert 0.0 <= m["rounds"][-1]["val"]["f1_macro"] <= 1.0
    assert (consortium.state / "runs" / "e2e" / "model" / "weights.pt").is_file()
    # Every release went through SecAgg+ as integers with Skellam noise, and each site's
    # own ledger accounts all four (class counts, centre, class sums, validation).
    assert m["distributed_dp"]["noise_plan"]["epsilon"] == 8.0
    for site in SITES:
        ledger = json.loads((tmp_path / "state" / site / "privacy-ledger.json").read_text())
        assert ledger["version"] == 3
        assert [e["mechanism"] for e in ledger["entries"]] == ["skellam"] * 4
        from client.privacy import PrivacyLedger

        spent = PrivacyLedger.open(tmp_path / "state" / site / "privacy-ledger.json")
        assert 7.9 < spent.epsilon(1e-5) <= 8.0
    assert "revoked-site" not in registry
    superlink_log = (consortium.state / "logs" / "superlink.log").read_text()
    assert f"Uvicorn running on https://127.0.0.1:{consortium.port}" in superlink_log
    record = json.loads((consortium.state / "runs" / "e2e" / "coordinator.json").read_text())
    assert record["events"][-1]["status"] == "finished:completed"


@pytest.mark.e2e
def test_unknown_revoked_keyless_and_plaintext_nodes_are_refused(consortium, tmp_path):
    coordinator = consortium.coordinator("refusals", "--rounds", "1", "--min-sites", "3",
                                         *RUN_OPTIONS)
    consortium.wait_registered(coordinator)
    outsider = init_pki(tmp_path / "outsider-pki")  # a key the consortium never saw
    issue_site(outsider, "stranger")
    stranger = consortium.site("stranger", key=outsider.site_private_key("stranger"))
    revoked = consortium.site("revoked-site")
    address = f"127.0.0.1:{consortium.port}"
    supernode = [str(Path(PY).parent / "flower-supernode"), "--superlink", address,
                 "--max-retries", "1", "--max-wait-time", "20"]
    keyless = consortium.spawn("keyless", [
        *supernode, "--root-certificates", str(consortium.pki.ca_cert),
        "--port", str(free_port())])
    plaintext = consortium.spawn("plaintext", [*supernode, "--insecure",
                                                "--port", str(free_port())])
    for proc in (stranger, revoked):
        assert consortium.wait(proc, 120) != 0
        log = consortium.log(proc)
        assert "Failed to activate SuperNode" in log, log
        assert "refused this site's key" in log, log  # our explanation for the site's IT
    # Flower's own SuperNode prints the refusal but may take a while to exit.
    _wait_for(lambda: "All SuperNodes must be registered" in consortium.log(keyless), 120,
              "the key-less node's refusal", coordinator, consortium)
    _wait_for(lambda: "could not establish a connection" in consortium.log(plaintext), 120,
              "the plaintext node's refusal", coordinator, consortium)
    # Nobody got in: the run is still waiting for its three registered sites.
    assert coordinator.poll() is None
    listing = subprocess.run(
        [str(Path(PY).parent / "flwr"), "supernode", "ls", "consortium", "--format", "json"],
        env={**consortium.env, "FLWR_HOME": str(consortium.state / "flwr-home")},
        capture_output=True, text=True, timeout=60)
    nodes = json.loads(listing.stdout[listing.stdout.index("{"):])["nodes"]
    assert len(nodes) == 3 and all(n["status"] == "registered" for n in nodes), nodes


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen,
              consortium: Consortium, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, consortium.log(proc)
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}:\n{consortium.log(proc)}")


KILLED_ROUNDS = 12


@pytest.mark.e2e
def test_site_killed_mid_round_run_completes_and_site_rejoins(consortium):
    # Twelve rounds: a deployed round takes about 3 s, a restarted site 10-20 s to be
    # back (its worker imports torch), and the run must last until it is.
    coordinator = consortium.coordinator("site-killed", "--rounds", str(KILLED_ROUNDS),
                                         "--min-sites", "2", *RUN_OPTIONS)
    registry = consortium.wait_registered(coordinator)
    sites = consortium.start_sites()
    victim = sites["site-c"]

    def training() -> bool:  # site-c has taken its round-1 training task
        return "configure_train" in consortium.log(coordinator, 400) and \
            "Receiving: train" in consortium.log(victim, 400)

    _wait_for(training, 240, "round 1 training at site-c", coordinator, consortium)
    consortium.kill(victim)

    def offline() -> bool:  # Flower notices after missed heartbeats (up to ~60 s)
        out = subprocess.run(
            [str(Path(PY).parent / "flwr"), "supernode", "ls", "consortium", "--format",
             "json"], env={**consortium.env, "FLWR_HOME": str(consortium.state / "flwr-home")},
            capture_output=True, text=True, timeout=60).stdout
        nodes = json.loads(out[out.index("{"):])["nodes"] if "{" in out else []
        return any(n["node-id"] == registry["site-c"]["node_id"] and n["status"] == "offline"
                   for n in nodes)

    # Each check runs the flwr CLI: poll gently, the federation needs the CPU.
    _wait_for(offline, 150, "site-c to be marked offline", coordinator, consortium,
              interval=3.0)
    consortium.site("site-c")  # the hospital restarts its site
    assert consortium.wait(coordinator) == 0, consortium.log(coordinator)

    m = consortium.metrics("site-killed")
    assert m["rounds_run"] == KILLED_ROUNDS and m["stopped_early"] is None
    first, *later = m["rounds"]
    assert _train_sites(first) == {"site-a", "site-b"}
    # Flower's error reply for the offline node, or the round loop giving it up itself.
    assert len(first["rejected"]) == 1, first["rejected"]
    assert first["rejected"][0]["reason"].startswith(("site error", "no reply"))
    # It is back: it validated (and possibly trained) the global model in a later round.
    assert "site-c" in {s["site"] for r in later for s in r["sites"]}, later


@pytest.mark.e2e
def test_coordinator_killed_and_resumed_continues_after_last_completed_round(consortium):
    coordinator = consortium.coordinator("resumed", "--rounds", "2", "--min-sites", "3",
                                         *DP_RUN_OPTIONS)
    consortium.wait_registered(coordinator)
    consortium.start_sites()
    state = consortium.state / "runs" / "resumed" / "checkpoint" / "state.json"

    def round_completed() -> dict | None:
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(state.read_text())
            return saved if saved["round"] >= 1 else None
        return None

    before = _wait_for(round_completed, 300, "the first checkpoint", coordinator, consortium)
    consortium.kill(coordinator)
    assert not (consortium.state / "runs" / "resumed" / "metrics.json").exists()

    restarted = consortium.coordinator("resumed", "--resume")
    assert consortium.wait(restarted) == 0, consortium.log(restarted)
    m = consortium.metrics("resumed")
    assert [r["round"] for r in m["rounds"]] == [1, 2]  # none lost, none repeated
    assert m["resumed_after_rounds"] == [1]
    # Kept, not recomputed (local DP validates only the final model, after round 2).
    assert all(m["rounds"][0][k] == v for k, v in before["rounds"][0].items() if k != "best")
    assert "val" not in m["rounds"][0] and m["rounds"][1]["val"]["f1_macro"] >= 0
    record = json.loads((consortium.state / "runs" / "resumed" / "coordinator.json")
                        .read_text())
    assert len(record["flower_runs"]) == 2 and record["events"][-1]["status"] == \
        "finished:completed"
    # The sites had released round 2 when the coordinator died: asked again, they sent the
    # same updates without charging twice, and their ledgers agree with the run.
    from client.privacy import PrivacyLedger

    ledgers = {p.parent.name: PrivacyLedger.open(p)
               for p in consortium.root.glob("**/privacy-ledger.json")}
    assert set(ledgers) == set(SITES)
    for site, ledger in ledgers.items():
        # set-up (class counts, feature centre), rounds 1 and 2, the final validation
        assert [e.round for e in ledger.entries] == [0, 0, 1, 2, 2], site
        assert m["per_site_epsilon"][site] == pytest.approx(ledger.epsilon(ledger.delta))
    # Names come from the sites' registered keys (beside the pooled noised validation).
    from server.rounds.distributed import NOISED_SUM

    assert {s["site"] for s in m["rounds"][-1]["sites"]} - {NOISED_SUM} == set(SITES)
    assert m["site_identity"]["declared_otherwise"] == []

    # A ledger deleted between two runs: the coordinator's record of earlier runs makes
    # the site refuse the next run, naming the restore command.
    book = json.loads((consortium.state / "site-spend.json").read_text())
    assert book == pytest.approx(m["per_site_epsilon"])
    ledgers["site-b"].path.unlink()
    again = consortium.coordinator("after-loss", "--rounds", "1", "--min-sites", "3",
                                   *DP_RUN_OPTIONS)
    assert consortium.wait(again) != 0
    refused = consortium.log(again, lines=300)
    assert "site-b" in refused and "ledger shows epsilon 0 spent" in refused, refused[-3000:]


# Three hospitals of the BRCA cohort, by the tissue-source-site code of the barcode
# (TCGA-<code>-...); each has patients of all five subtypes.
HOSPITAL_OF_SITE = {"site-a": "BH", "site-b": "A2", "site-c": "AR"}


def _hospital_directories(brca: Path, root: Path) -> dict[str, Path]:
    """Per site, a dataset directory with the rows of its hospital's patients from every
    BRCA file (values as they are) and a dataset.toml describing them."""
    import csv
    import re
    import tomllib

    shipped = tomllib.loads((REPO / "common" / "manifests" / "brca.toml").read_text())
    pattern = re.compile(shipped["dataset"]["site_pattern"])
    files = [shipped["labels"]["file"], *shipped["modalities"].values()]
    # The shipped manifest without its fingerprint: these files are not the bundled ones.
    manifest = "".join(
        f"[{table}]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                 for key, value in shipped[table].items()) + "\n"
        for table in ("dataset", "labels", "modalities"))
    out = {}
    for site, hospital in HOSPITAL_OF_SITE.items():
        directory = root / f"{site}-data"
        directory.mkdir(parents=True)
        (directory / "dataset.toml").write_text(manifest)
        for name in files:
            with open(brca / name, newline="") as src, \
                    open(directory / name, "w", newline="") as dst:
                rows = csv.reader(src)
                writer = csv.writer(dst, lineterminator="\n")
                writer.writerow(next(rows))
                writer.writerows(r for r in rows
                                 if (m := pattern.search(r[0])) and m.group(1) == hospital)
        out[site] = directory
    return out


@pytest.mark.e2e
def test_sites_train_on_their_own_data_directories(tmp_path, pki, bundled_dir):
    directories = _hospital_directories(bundled_dir("brca"), tmp_path / "hospitals")
    patients = {site: len((d / "target.csv").read_text().splitlines()) - 1
                for site, d in directories.items()}
    assert all(n >= 60 for n in patients.values()), patients
    with LoopbackConsortium(tmp_path, pki,
                            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) as c:
        coordinator = c.coordinator("own-data", "--rounds", "2", "--min-sites", "3",
                                    *RUN_OPTIONS)
        c.wait_registered(coordinator, SITES)
        # No [demo] table: each site reads the whole of its own data-dir.
        tomls = {site: c.site_toml(site, directory) for site, directory in directories.items()}
        assert not any("[demo]" in toml.read_text() for toml in tomls.values())
        sites = [c.site(site, toml) for site, toml in tomls.items()]
        assert c.wait_run(coordinator, sites, timeout=TIMEOUT) == 0, c.log(coordinator)
        m = c.metrics("own-data")
    _no_leftovers(tmp_path)

    assert m["rounds_run"] == 2
    # Every patient of a hospital is in its site's training or validation split.
    assert {s["site"]: s["n_train"] + s["n_val"] for s in m["sites"]} == patients
    for record in m["rounds"]:
        assert _train_sites(record) == set(SITES) and record["rejected"] == []
        assert 0.0 <= record["val"]["f1_macro"] <= 1.0


# --- fast tests of the pieces the real-process tests rely on ---------------------------------
class ScriptedGrid:
    """A Grid whose nodes answer (or not) and go offline on a script."""

    def __init__(self, answering: set[int], online: list[set[int]]) -> None:
        self.answering, self.online, self.sent = answering, online, {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"  # as Flower's grids do
            ids.append(f"m{i}")
            self.sent[f"m{i}"] = msg
        return ids

    def pull_messages(self, ids):
        from flwr.app import Message, RecordDict

        return [Message(content=RecordDict(), reply_to=self.sent[i]) for i in ids
                if self.sent[i].metadata.dst_node_id in self.answering]

    def get_node_ids(self):
        return sorted(self.online.pop(0) if len(self.online) > 1 else self.online[0])


def _messages(nodes):
    from flwr.app import Message, MessageType, RecordDict

    return [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in nodes]


class VirtualClock:
    """Stands in for the ``time`` module of :mod:`server.rounds.exchange`: sleeping
    advances the clock at once, so waits are checked by their length, not measured."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> VirtualClock:
    from server.rounds import exchange as module

    fake = VirtualClock()
    monkeypatch.setattr(module, "time", fake)
    return fake


def test_exchange_gives_up_a_node_that_went_offline_even_if_it_returns(task_identity, clock):
    from server.rounds.exchange import exchange

    # Node 3 never answers; it is offline for one poll, then back (a quick restart).
    grid = ScriptedGrid(answering={1, 2}, online=[{1, 2, 3}, {1, 2}, {1, 2, 3}])
    replies, lost = exchange(grid, _messages([1, 2, 3]), timeout=60)
    assert len(replies) == 2 and lost == [3]
    assert clock.sleeps <= 2 and clock.now < 1  # given up at the offline poll, not at 60 s


def test_exchange_stops_waiting_at_the_timeout(task_identity, clock):
    from server.rounds.exchange import exchange

    grid = ScriptedGrid(answering={1}, online=[{1, 2}])
    replies, lost = exchange(grid, _messages([1, 2]), timeout=0.5)
    assert len(replies) == 1 and lost == [2]
    assert 0.5 <= clock.now < 0.5 + 1.0  # stopped at the first poll past the deadline


def test_checkpoint_round_trip_and_config_guard(tmp_path):
    import torch

    from common.config import RunConfig
    from server.rounds import (
        Checkpoint,
        FederationError,
        load_checkpoint,
        save_checkpoint,
    )

    cfg = RunConfig.preset("none", rounds=3)
    weights = {"w": torch.arange(4.0)}
    ckpt = Checkpoint(round=2, global_state=weights, best_round=1, best_state=weights,
                      rounds=[{"round": 1}, {"round": 2}], sites=[{"site": "a"}],
                      schema={"modalities": {"rna": ["g1"]}, "label_names": ["x", "y"]},
                      standardizer={"mean/rna": [0.0], "std/rna": [1.0]},
                      class_weight=[1.0, 2.0], selection={"best": [0.5, -1.0], "best_step": 1},
                      strategy={"releases": 2}, central_dp=None, config=cfg.to_dict())
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, ckpt)
    back = load_checkpoint(tmp_path)
    assert back is not None and back.round == 2 and back.strategy == {"releases": 2}
    assert torch.equal(back.global_state["w"], weights["w"])
    assert json.loads((tmp_path / "state.json").read_text())["round"] == 2
    back.check_compatible(RunConfig.preset("none", rounds=5))  # more rounds: fine
    with pytest.raises(FederationError, match="strategy: checkpoint 'fedavg', now 'fedprox'"):
        back.check_compatible(RunConfig.preset("none", strategy="fedprox"))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FederationError, match="cannot be read"):
        load_checkpoint(tmp_path)


def test_coordinator_run_config_new_resume_and_errors(tmp_path):
    from server.cli import parse_run_config
    from server.coordinator import CoordinatorConfig, CoordinatorError, prepare_run_config

    assert parse_run_config('rounds=5 model.d-model=64 strategy="fedprox" dp=local') == {
        "rounds": 5, "model.d-model": 64, "strategy": "fedprox", "dp": "local"}

    def cfg(**kw) -> CoordinatorConfig:
        return CoordinatorConfig(pki_dir=tmp_path / "pki", state_dir=tmp_path / "state",
                                 run_name="r", **kw)

    with pytest.raises(CoordinatorError, match="nothing to resume"):
        prepare_run_config(cfg(resume=True))
    with pytest.raises(CoordinatorError, match=r"unknown run config key\(s\) 'roundz'"):
        prepare_run_config(cfg(run_config={"roundz": 3}))
    path, flat = prepare_run_config(cfg(run_config={"rounds": 3, "model.kind": "mmt",
                                                    "model.d-model": 32}))
    assert flat["data"] == "" and flat["rounds"] == 3  # the coordinator holds no data
    assert flat["out"] == str((tmp_path / "state" / "runs" / "r").resolve())
    from flwr.common.config import parse_config_args

    assert parse_config_args([str(path)]) == flat  # what `flwr run --run-config FILE` reads
    (tmp_path / "state" / "runs" / "r" / "checkpoint").mkdir()
    (tmp_path / "state" / "runs" / "r" / "checkpoint" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CoordinatorError, match="continue it with --resume"):
        prepare_run_config(cfg(run_config={"rounds": 3, "model.kind": "mmt"}))
    _, resumed = prepare_run_config(cfg(resume=True, run_config={"rounds": 9}))
    assert resumed["resume"] is True and resumed["rounds"] == 3  # the stored config
    assert resumed["model.d-model"] == 32
