"""The coordinator's federation: consortium setup, the round loop, checkpoints.

Modules, one job each: :mod:`~server.rounds.exchange` (messages out, replies in, lost
sites), :mod:`~server.rounds.consortium` (describe, merge, send the setup),
:mod:`~server.rounds.executor` (one round, plain or SecAgg+, through the strategy),
:mod:`~server.rounds.records` (the round record), :mod:`~server.rounds.tracking` (model
selection and early stop), :mod:`~server.rounds.checkpoint` (save, load, resume) and
:mod:`~server.rounds.loop` (:func:`run_federation`).
"""

from server.rounds.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.rounds.loop import run_federation
from server.rounds.outcome import FederationError, FederationOutcome

__all__ = ["Checkpoint", "FederationError", "FederationOutcome", "load_checkpoint",
           "run_federation", "save_checkpoint"]
