"""Benchmark: wall time per round, deployment engine vs simulation engine, one script run.

Same sites (the ``iid`` partition of the data into ``--sites`` hospitals, built the same
way by both engines), same model, rounds, local epochs and seed:

* simulation: ``simulations.runner.simulate`` (Flower's simulation engine, Ray actors,
  one process for everything);
* deployment: ``cancer-alpha coordinator start`` (flower-superlink, TLS, node
  authentication) and one ``cancer-alpha site start --config`` per site
  (flower-supernode), all real processes on loopback; once with each ClientApp mode of
  ``--clientapp``: ``worker`` (the sites' long-lived worker, :mod:`client.worker`) and
  ``subprocess`` (Flower's fresh ``flwr-clientapp`` process per message).

Both ServerApps hold the global test split and evaluate it every round, so the server
does the same work; the per-round time is the ServerApp's own measurement (send,
wait for the replies, aggregate, evaluate) in both engines.

Then it measures where the deployment overhead goes:

* process start and imports: in ``subprocess`` mode every message runs in a fresh
  ``flwr-clientapp`` process, which starts Python, imports Flower, torch and the
  project, and loads the site's data; the site worker and the simulation engine's
  actors pay this once. Timed in fresh subprocesses, median of ``--repeats``;
* serialization: the model weights deflated into Flower objects and inflated back, as
  for every message over the Fleet API (twice per site and round);
* polling: in Flower 1.41 the SuperNode asks for work every 3 s when idle, its
  SuperExec looks for tasks every 1 s, the SuperNode checks for the reply every 0.5 s,
  and the round loop collects replies at most every 0.25 s; beside the site worker the
  SuperNode is paced (:mod:`client.worker_supernode`: 0.1 s after a message, reply
  every 50 ms) and the worker looks for tasks every 0.1 s. A round waits for the
  slowest site, so the expected largest of the sites' waits counts;
* phases: the site worker's own per-task timings (pull, ClientApp, push) from its log;
* the remainder: HTTPS round trips, object store, waiting for the slowest site.

    python -m simulations.benchmarks.deployment_vs_simulation --rounds 3 --sites 3

The goal line compares the mean deployed round with twice the simulated round plus the
network time (Flower's polling and the weights' serialization, both estimated below).

Prints a table and writes ``benchmark.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from client.worker import DEFAULT_POLL_INTERVAL as WORKER_POLL_INTERVAL
from client.worker import TASK_PHASES
from common import flower_pacing
from common.config import ModelConfig, RunConfig
from common.phase_clock import parse_phases

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
# Flower 1.41's polling intervals (seconds), from its source.
SUPERNODE_PULL_INTERVAL = 3.0  # SuperNode asks the SuperLink for work when idle
SUPEREXEC_POLL_INTERVAL = 1.0  # SuperExec looks for tasks to launch a ClientApp for
REPLY_POLL_INTERVAL = 0.5  # SuperNode waits for the ClientApp's reply
# The round loop's own exchange (server.rounds.exchange.exchange) polls for replies at most
# every 0.25 s (Flower's Grid.send_and_receive: 3 s in deployment, 0.1 s in simulation).
REPLY_COLLECT_INTERVAL = 0.25
MODES = {"worker": ("worker",), "subprocess": ("subprocess",),
         "both": ("subprocess", "worker")}


@dataclass(frozen=True)
class Polling:
    """The fixed waits (seconds) a deployment round can sit in, per ClientApp mode."""

    supernode: float  # SuperNode asks the coordinator for work
    task: float  # the task is picked up (SuperExec or site worker)
    reply: float  # the SuperNode looks for the ClientApp's reply


# ``subprocess``: Flower's own SuperNode. ``worker``: the paced SuperNode
# (client.worker_supernode), whose look for work right after a message is the shortest;
# counting only that keeps the goal strict (it grows to 3 s while the coordinator is quiet).
POLLING = {"subprocess": Polling(SUPERNODE_PULL_INTERVAL, SUPEREXEC_POLL_INTERVAL,
                                 REPLY_POLL_INTERVAL),
           "worker": Polling(flower_pacing.IDLE_FIRST_WAIT, WORKER_POLL_INTERVAL,
                             flower_pacing.REPLY_WAIT)}


def _round_seconds(metrics: dict) -> list[float]:
    return [float(r["seconds"]) for r in metrics["rounds"] if "seconds" in r]


# --- simulation engine ------------------------------------------------------------------
def run_simulation(cfg: RunConfig, out: Path) -> dict:
    from simulations.runner import simulate

    started = time.perf_counter()
    run_dir = simulate(replace(cfg, out=str(out)), compare=False, show_progress=False)
    wall = time.perf_counter() - started
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_seconds": wall, "setup_seconds": m["setup_seconds"],
            "round_seconds": _round_seconds(m), "f1_macro": m["f1_macro"]}


# --- deployment engine ------------------------------------------------------------------
def run_deployment(cfg: RunConfig, out: Path, data_dir: Path, data_root: Path,
                   clientapp: str = "worker") -> dict:
    """A coordinator and ``cfg.sites`` sites as real processes; the same run config.
    ``clientapp``: how the sites run their tasks (``client.launcher.CLIENTAPP_ENV``)."""
    from client.launcher import CLIENTAPP_ENV
    from simulations.consortium import DemoPartition, LoopbackConsortium, make_pki

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"deploy-{clientapp}-", dir=out))
    sites = [f"site-{i}" for i in range(cfg.sites)]
    pki = make_pki(work / "pki", sites)
    flat = cfg.to_flower()
    # Everything the simulation uses that the app's own defaults could differ in.
    overrides = {k: flat[k] for k in ("data", "seed", "partition", "sites", "round-patience",
                                      "dp")}
    overrides.update({k: v for k, v in flat.items() if k.startswith(("model.", "train."))})
    # Flower refuses a run config key the app does not declare in pyproject.toml.
    declared = _declared_run_config()
    overrides = {k: v for k, v in overrides.items() if k in declared}
    run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    consortium = LoopbackConsortium(work, pki, env={"CANCER_ALPHA_DATA": str(data_root),
                                                    CLIENTAPP_ENV: clientapp})

    started = time.perf_counter()
    try:
        coordinator = consortium.coordinator(
            "bench", "--rounds", str(cfg.rounds), "--local-epochs", str(cfg.local_epochs),
            "--min-sites", str(cfg.sites), "--run-config", run_config)
        consortium.wait_registered(coordinator, sites, timeout=float("inf"))
        site_procs = [
            consortium.site(site, consortium.site_toml(
                site, data_dir, demo=DemoPartition(i, cfg.sites, cfg.partition)),
                "--quiet", "--skip-checks")
            for i, site in enumerate(sites)]
        code = consortium.wait_run(coordinator, site_procs)
        wall = time.perf_counter() - started
        if code != 0:
            raise RuntimeError("the deployment run failed:\n" + consortium.log(coordinator))
    finally:
        consortium.stop_all(grace=10.0)
    run_dir = consortium.run_dir("bench")
    m = json.loads((run_dir / "metrics.json").read_text())
    record = json.loads((run_dir / "coordinator.json").read_text())
    finished = record["events"][-1]
    return {"wall_seconds": wall, "setup_seconds": m["setup_seconds"],
            "round_seconds": _round_seconds(m), "f1_macro": m.get("f1_macro"),
            "flower_compute": finished.get("compute"), "flower_traffic": finished.get("traffic"),
            "messages": cfg.sites * (len(m["rounds"]) + 2), "work_dir": str(work)}


def _declared_run_config() -> set[str]:
    """The run config keys of the app's pyproject.toml, dotted like Flower's."""
    import tomllib

    def keys(table: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in table.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return keys(doc["tool"]["flwr"]["app"]["config"])


# --- where the overhead goes -----------------------------------------------------------------
_EVENTS = (("Receiving: train", "received"), ("Received successfully", "downloaded"),
           ("Start `flwr-clientapp` process", "launched"),
           ("ClientApp task started in the site worker", "launched"),
           ("Sending: train", "reply_ready"), ("Sent successfully", "sent"))


def site_timelines(work_dir: Path) -> list[list[dict[str, float]]]:
    """Per site, per train message: when the SuperNode took it, launched its ClientApp,
    got the reply and finished sending it (from the timestamped site logs)."""
    import datetime as dt

    out = []
    for log in sorted(work_dir.glob("state/*/supernode.log")):
        messages: list[dict[str, float]] = []
        current: dict[str, float] | None = None
        for line in log.read_text(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            if TASK_PHASES in text and current is not None:  # the site worker's phases
                current.update({f"phase {k}": v for k, v in
                                parse_phases(text.partition(TASK_PHASES + ": ")[2]).items()})
                continue
            for needle, event in _EVENTS:
                if needle not in text:
                    continue
                t = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
                if event == "received":
                    current = {"received": t}
                elif current is not None and event not in current:
                    current[event] = t
                    if event == "sent":
                        messages.append(current)
                        current = None
        out.append(messages)
    return out


def round_path(dep: dict, timelines: list[list[dict[str, float]]]) -> dict[str, float]:
    """The measured critical path of a deployment round, averaged over rounds."""
    rounds = min(len(t) for t in timelines)
    # Each site's train messages in order; the last round's validation comes separately.
    per_round = [[t[k] for t in timelines] for k in range(rounds)]
    msgs = [m for r in per_round for m in r if {"launched", "reply_ready"} <= set(m)]
    spans = [max(m["sent"] for m in r) - min(m["received"] for m in r) for r in per_round]
    mean_round = statistics.mean(dep["round_seconds"][:rounds])
    return {
        "round": mean_round,
        "sites busy (first message taken -> last reply sent)": statistics.mean(spans),
        "  SuperNode downloads the weights (mean)": statistics.mean(
            m["downloaded"] - m["received"] for m in msgs if "downloaded" in m),
        "  task pick-up delay (SuperExec or site worker, mean)": statistics.mean(
            m["launched"] - m["received"] for m in msgs),
        "  ClientApp task, start -> reply (mean)": statistics.mean(
            m["reply_ready"] - m["launched"] for m in msgs),
        "  ClientApp task, start -> reply (slowest site)": statistics.mean(
            max(m["reply_ready"] - m["launched"] for m in r) for r in per_round),
        "  reply upload (mean)": statistics.mean(m["sent"] - m["reply_ready"] for m in msgs),
        "outside the sites (SuperNode pick-up polling, server collection, aggregation)":
            mean_round - statistics.mean(spans),
    } | worker_phases(msgs)


def worker_phases(msgs: list[dict[str, float]]) -> dict[str, float]:
    """The site worker's own phase timings per train task (mean), when it logged them."""
    names = [k for k in (msgs[0] if msgs else {}) if k.startswith("phase ")]
    return {f"  site worker: {name.removeprefix('phase ')} (mean)":
            statistics.mean(m.get(name, 0.0) for m in msgs) for name in names}



def time_startup(data_dir: Path, cfg: RunConfig, repeats: int) -> dict[str, float]:
    """Median wall time of fresh processes doing what one ``flwr-clientapp`` does first."""
    node = {"data-dir": str(data_dir), "partition-id": 0, "num-partitions": cfg.sites,
            "partition": cfg.partition}
    steps = {
        "python": "pass",
        "+ flwr (clientapp runtime)": "import flwr.supernode.cli.flwr_clientapp",
        "+ torch": "import flwr.supernode.cli.flwr_clientapp, torch",
        "+ cancer-alpha ClientApp and site data": (
            "import flwr.supernode.cli.flwr_clientapp, torch, client.app\n"
            "from client.site import load_site\nfrom common.config import RunConfig\n"
            f"load_site({node!r}, RunConfig.from_dict({cfg.to_dict()!r}))"),
    }
    out = {}
    for name, code in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", code], cwd=REPO, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def time_serialization(cfg: RunConfig, data_dir: Path, repeats: int = 5) -> dict[str, float]:
    """Deflate a message's content (the weights) into Flower objects and inflate it back,
    as one hop over the Fleet API does (the message envelope itself is small)."""
    from flwr.app import ArrayRecord, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from common.dataset import load_dataset
    from common.model import ModelSpec, build_model

    schema = load_dataset(data_dir).schema
    state = build_model(ModelSpec.for_schema(cfg.model, schema)).state_dict()
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        content = RecordDict({"arrays": ArrayRecord(state)})
        contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
        back = inflate_object_from_contents(content.object_id, dict(contents))
        back["arrays"].to_torch_state_dict()
        times.append(time.perf_counter() - t0)
        size = sum(len(c) for c in contents.values())
    return {"seconds_per_hop": statistics.median(times), "bytes_per_hop": float(size)}


def polling_seconds(polling: Polling, sites: int) -> float:
    """The expected wait in fixed poll intervals per round."""
    # A round waits for its slowest site: the expected largest of `sites` uniform waits
    # in [0, interval] is interval * sites / (sites + 1); the server's collection is one.
    slowest = sites / (sites + 1)
    return ((polling.supernode + polling.task + polling.reply) * slowest
            + REPLY_COLLECT_INTERVAL / 2)


def network_seconds(serial: dict[str, float], sites: int, polling: Polling) -> float:
    """Polling plus the weights' serialization per round: the time a round spends
    between processes whatever the ClientApp does."""
    cpus = os.cpu_count() or 1
    return (polling_seconds(polling, sites)
            + serial["seconds_per_hop"] * 2 * sites / min(sites, cpus))


def breakdown(sim: dict, dep: dict, startup: dict[str, float], serial: dict[str, float],
              sites: int, polling: Polling = POLLING["subprocess"]) -> dict:
    """Split the per-round overhead into measured or known parts.

    Every round sends one message per site; on the deployment engine each message runs
    in a fresh ClientApp process, whose mean lifetime Flower reports (compute time /
    messages). The simulation's own round time is the work both engines share.
    """
    sim_round = statistics.mean(sim["round_seconds"])
    per_round = statistics.mean(dep["round_seconds"]) - sim_round
    compute = dep.get("flower_compute") or {}
    lifetime = compute.get("clientapp-seconds", 0.0) / max(dep["messages"], 1)
    cpus = os.cpu_count() or 1
    serialization = serial["seconds_per_hop"] * 2 * sites / min(sites, cpus)
    parts = {
        "ClientApp process lifetime (Flower's accounting) minus the simulation round":
            lifetime - sim_round,
        f"polling (SuperNode {polling.supernode:g} s, task pick-up {polling.task:g} s, "
        f"reply {polling.reply:g} s: slowest of the sites; server "
        f"{REPLY_COLLECT_INTERVAL:g} s)": polling_seconds(polling, sites),
        "serialization of the weights (deflate + inflate, 2 hops)": serialization,
    }
    parts["remainder (slowest site's ClientApp beyond the mean, HTTPS object transfers)"] = \
        per_round - sum(parts.values())
    fresh = startup["+ cancer-alpha ClientApp and site data"]
    within = {
        "Python start + Flower import": startup["+ flwr (clientapp runtime)"],
        "torch import": startup["+ torch"] - startup["+ flwr (clientapp runtime)"],
        "project import + loading the site's data": fresh - startup["+ torch"],
        f"contention ({sites} processes on {cpus} cores) and task plumbing (FAB unpack, "
        "Runtime API calls, reply)": lifetime - fresh - sim_round,
    }
    return {"overhead_per_round": per_round, "parts": parts,
            "clientapp_lifetime": lifetime, "within_clientapp_lifetime": within}


def main(argv: list[str] | None = None) -> None:
    from common.paths import bundled_data_root, resolve_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="brca")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="Startup timing repetitions.")
    p.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    p.add_argument("--clientapp", choices=sorted(MODES), default="both",
                   help="How the sites run their tasks: the long-lived site worker, "
                        "Flower's process per message, or both, one after the other.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    data_dir = resolve_data_dir(args.data)
    cfg = RunConfig.preset("none", data=args.data, partition="iid", sites=args.sites,
                           rounds=args.rounds, local_epochs=args.local_epochs,
                           min_sites=args.sites, seed=args.seed,
                           round_patience=args.rounds + 1,  # equal rounds in both engines
                           model=ModelConfig(d_model=args.d_model, n_heads=args.n_heads,
                                             n_layers=1, tokens_per_modality=2))
    args.out = args.out.resolve()  # site.toml paths are read relative to the file
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.sites} sites, {args.rounds} rounds, {args.local_epochs} local epoch(s), "
          f"d_model {args.d_model}; {os.cpu_count()} CPU(s)", flush=True)
    sim = run_simulation(cfg, args.out / "simulation")
    print(f"simulation: {sim['wall_seconds']:.1f} s", flush=True)
    deps = {}
    for mode in MODES[args.clientapp]:
        deps[mode] = run_deployment(cfg, args.out, data_dir, bundled_data_root(), mode)
        print(f"deployment ({mode}): {deps[mode]['wall_seconds']:.1f} s", flush=True)
    startup = time_startup(data_dir, cfg, args.repeats)
    serial = time_serialization(cfg, data_dir)
    report = {"config": cfg.to_dict(), "simulation": sim, "startup": startup,
              "serialization": serial, "cpus": os.cpu_count(), "deployments": {}}

    print("\n| engine | wall s | setup s | mean round s | rounds s |\n|---|---|---|---|---|")
    for name, r in (("simulation", sim), *((f"deployment, {m} (TLS + node auth)", d)
                                           for m, d in deps.items())):
        print(f"| {name} | {r['wall_seconds']:.1f} | {r['setup_seconds']:.1f} | "
              f"{statistics.mean(r['round_seconds']):.2f} | "
              f"{', '.join(f'{s:.1f}' for s in r['round_seconds'])} |")
    sim_round = statistics.mean(sim["round_seconds"])
    for mode, dep in deps.items():
        split = breakdown(sim, dep, startup, serial, args.sites, POLLING[mode])
        path = round_path(dep, site_timelines(Path(dep["work_dir"])))
        network = network_seconds(serial, args.sites, POLLING[mode])
        dep_round = statistics.mean(dep["round_seconds"])
        goal = 2 * sim_round + network
        report["deployments"][mode] = {"deployment": dep, "breakdown": split,
                                       "round_path": path, "network_seconds": network,
                                       "goal_seconds": goal, "goal_met": dep_round <= goal}
        print(f"\n## {mode}\n\ndeployed round {dep_round:.2f} s; goal 2 x {sim_round:.2f} s "
              f"(simulated) + {network:.2f} s (network: polling and serialization) = "
              f"{goal:.2f} s: {'met' if dep_round <= goal else 'NOT met'}")
        print(f"\noverhead per round: {split['overhead_per_round']:.2f} s")
        print("\nmeasured from the timestamped site logs (mean over rounds):\n\n"
              "| deployment round | seconds |\n|---|---|")
        for name, seconds in path.items():
            print(f"| {name} | {seconds:.2f} |")
        if mode == "subprocess":
            print("\n| where it goes (per round) | seconds |\n|---|---|")
            for name, seconds in split["parts"].items():
                print(f"| {name} | {seconds:.2f} |")
            print(f"\nClientApp process lifetime {split['clientapp_lifetime']:.2f} s per "
                  "message, of which:\n\n| part | seconds |\n|---|---|")
            for name, seconds in split["within_clientapp_lifetime"].items():
                print(f"| {name} | {seconds:.2f} |")
    print("\n| one fresh process at a time (median) | seconds |\n|---|---|")
    for name, seconds in startup.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"\nweights message: {serial['bytes_per_hop'] / 1e6:.2f} MB, "
          f"{serial['seconds_per_hop'] * 1000:.1f} ms per deflate+inflate hop")
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
