"""The consortium coordinator: a Flower SuperLink with TLS and node authentication, the
site registry, and one federated run submitted to it.

``cancer-alpha coordinator start`` runs :func:`run_coordinator`:

1. pre-flight: the server certificate is valid now, issued by the CA, matches its key;
2. ``flower-superlink`` with ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and
   ``--enable-supernode-auth`` (Flower 1.41: every SuperNode must be registered by its
   public key through the Control API; unknown keys are refused), a persistent
   ``--database`` (registrations and run state survive a restart) and no runtime
   dependency installation, run behind the operator guard
   (:mod:`~server.coordinator.guard`: the Control API needs the state directory's
   operator token, the runtime API answers this host only);
3. site registry sync (:func:`sync_sites`): makes the SuperLink's nodes equal the PKI's
   keys: registers every non-revoked ``pki/sites/*/site.pub`` with ``flwr supernode
   register``, unregisters revoked or rotated keys (a revoked SuperNode's next heartbeat
   is refused and it stops) and every node no key accounts for;
4. ``flwr run`` of the project's Flower app with the run config written to the run
   directory, then follows its log until it finishes.

State directory layout (0700): ``superlink.db`` (Flower's link state), ``flwr-home/``
(the Flower CLI's connection config, operator credentials and unpacked apps),
``operator.token``, ``sites.json`` (site -> node id and key fingerprint),
``logs/superlink.log``, ``runs/<name>/`` (run config, coordinator record, checkpoint,
outputs).

Resume: the ServerApp checkpoints after every completed round (``server.rounds``).
``--resume`` reuses the run's stored config with ``resume=true``, stops the killed
Flower run if the link state still shows it running, and submits a new Flower run that
continues after the last completed round.

Modules: :mod:`~server.coordinator.settings` (configuration, environment, Flower CLI
config), :mod:`~server.coordinator.flwr_cli` (the ``flwr`` CLI against this SuperLink),
:mod:`~server.coordinator.superlink` (the SuperLink process),
:mod:`~server.coordinator.guard` (run control for the operator only),
:mod:`~server.coordinator.registry` (site registration sync),
:mod:`~server.coordinator.runs` (run config, submission, following),
:mod:`~server.coordinator.records` (the run directory's coordinator record),
:mod:`~server.coordinator.service` (:func:`run_coordinator`: all of it in order).
"""

from server.coordinator.flwr_cli import flwr, run_details, run_status
from server.coordinator.registry import SyncReport, sync_sites
from server.coordinator.runs import (
    follow_run,
    prepare_run_config,
    stop_previous_run,
    submit_run,
)
from server.coordinator.service import run_coordinator
from server.coordinator.settings import (
    CONNECTION,
    DATABASE,
    PROJECT_ROOT,
    RECORD_FILE,
    REGISTRY_FILE,
    RUN_CONFIG_FILE,
    CoordinatorConfig,
    CoordinatorError,
    RunResult,
    coordinator_env,
    write_flower_home,
)
from server.coordinator.superlink import start_superlink, superlink_command

__all__ = [
    "CONNECTION", "DATABASE", "PROJECT_ROOT", "RECORD_FILE", "REGISTRY_FILE", "RUN_CONFIG_FILE",
    "CoordinatorConfig", "CoordinatorError", "RunResult", "SyncReport", "coordinator_env",
    "flwr", "follow_run", "prepare_run_config", "run_coordinator", "run_details", "run_status",
    "start_superlink", "stop_previous_run", "submit_run", "superlink_command", "sync_sites",
    "write_flower_home",
]
